"""TEST HELPER: a real browser for the report tests, Debian's headless Chromium.

`find_chromium()` returns the `chromium` binary; when it is missing it installs the Debian package
with apt-get if this process runs as root (as .ci/run does on a clean machine), else it fails the
test with the command that installs it. `render(page, screenshot)` opens a page the way a person
would (file://), lets it load and run its script, writes a screenshot and returns the DOM as the
browser left it (`--dump-dom`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "chromium"  # Debian's package and binary name
APT_INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", CHROMIUM]
# What a page may take to load and run its scripts before the DOM is dumped.
VIRTUAL_TIME_BUDGET_MS = 5000
# A first headless start on a busy 2-core machine takes a few seconds; this bounds a hung one.
BROWSER_TIMEOUT_S = 90
WINDOW = (1200, 3000)


def find_chromium() -> str:
    """The path of `chromium`, installed with apt-get first when missing and this runs as root."""
    found = shutil.which(CHROMIUM)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(
            f"the report's browser tests need Debian's {CHROMIUM} package, which is not installed; install it "
            f"with `sudo {' '.join(APT_INSTALL)}` (.ci/run installs it on CI)"
        )
    subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
    subprocess.run(APT_INSTALL, check=True, capture_output=True, timeout=900,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which(CHROMIUM)
    if not found:
        pytest.fail(f"`{' '.join(APT_INSTALL)}` ran but no {CHROMIUM} binary is on PATH")
    return found


def _headless(chromium: str, profile: Path) -> list[str]:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        "--disable-extensions", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
    ]


def render(chromium: str, page: Path, screenshot: Path, profile: Path) -> str:
    """Open `page` in headless Chromium: save a screenshot of the window to `screenshot`, return
    the DOM after the page loaded (its scripts run)."""
    url = page.resolve().as_uri()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = subprocess.run(
        [*_headless(chromium, profile), f"--screenshot={screenshot}", url],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-3000:]
    dom = subprocess.run(
        [*_headless(chromium, profile), "--dump-dom", url], capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
    )
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-3000:]
    return dom.stdout
