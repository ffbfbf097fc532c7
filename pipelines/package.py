"""The zip spark-submit ships to a cluster whose machines do not have lakescore installed.

The zip carries the project's own code only; `training` stays out (it runs on Ray, never in a Spark
executor). It is reproducible: same sources, same bytes (fixed timestamps, sorted entries), so its
sha256 identifies the code a run used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What Spark's driver and executors import; `training` runs on Ray and is left out.
SHIPPED_PACKAGES = ("lakescore", "udfs", "pipelines", "jobs")
# Package data the code reads with importlib.resources (the builtin feature specs, the report's
# template); pyproject.toml's package-data lists the same for wheels.
PACKAGE_DATA = ("lakescore/specs/*.toml", "lakescore/templates/*.j2")
# 1980-01-01, the earliest time a zip entry can hold: no build time leaks into the bytes.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class PackageError(RuntimeError):
    """The sources cannot be packaged; the message says what is missing."""


@dataclass(frozen=True)
class PyFilesZip:
    path: Path
    sha256: str
    files: tuple[str, ...]  # archive names of the sources, e.g. "lakescore/bundle.py"
    data: tuple[str, ...] = ()  # archive names of the package data, e.g. "lakescore/specs/transactions_v1.toml"


def project_version() -> str:
    """The installed distribution's version (pyproject.toml), or "dev" when it is not installed."""
    try:
        return importlib.metadata.version("lakescore")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def build_pyfiles_zip(
    dest_dir: Path,
    *,
    root: Path = PROJECT_ROOT,
    packages: Sequence[str] = SHIPPED_PACKAGES,
    name: str | None = None,
) -> PyFilesZip:
    """Write the `.py` files of `packages` under `root` into one zip for spark-submit --py-files.

    Args:
        dest_dir: folder for the zip (created if missing).
        root: folder holding the packages (the project checkout).
        packages: top-level package folders to include; each must have an __init__.py.
        name: file name; default `lakescore-<version>.zip`.

    Returns:
        The zip's path, sha256 and the archive names it holds.

    Only `.py` sources and PACKAGE_DATA go in (no __pycache__): each Python worker compiles what it imports.
    """
    sources: list[tuple[str, Path]] = []
    data: list[tuple[str, Path]] = []
    for package in packages:
        folder = Path(root) / package
        if not (folder / "__init__.py").is_file():
            raise PackageError(
                f"{folder} is not a Python package (no __init__.py); run `lakescore package` from a "
                f"lakescore checkout, or drop {package!r} from the packages to ship"
            )
        for source in sorted(folder.rglob("*.py")):
            if "__pycache__" in source.parts:
                continue
            sources.append((source.relative_to(root).as_posix(), source))
        for pattern in PACKAGE_DATA:
            if pattern.startswith(f"{package}/"):
                data += [(p.relative_to(root).as_posix(), p) for p in sorted(Path(root).glob(pattern))]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / (name or f"lakescore-{project_version()}.zip")
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, source in sources + data:
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
    tmp.replace(path)  # a half-written zip never carries the final name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return PyFilesZip(path=path, sha256=digest, files=tuple(a for a, _ in sources), data=tuple(a for a, _ in data))


def spark_submit_flags(zip_path: Path, jars: Sequence[str]) -> list[str]:
    """The spark-submit flags that ship lakescore's code and the Delta jars from this machine."""
    flags = ["--py-files", str(zip_path)]
    if jars:
        flags += ["--jars", ",".join(jars)]
    return flags
