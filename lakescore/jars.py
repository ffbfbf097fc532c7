"""The JVM jars lakescore adds to Spark, fetched once into a project-local folder.

    python -m lakescore.jars DEST            # what `make jars` runs: needs Python and the network
    python -m lakescore.jars --lock          # maintainer: rewrite jars/lock.toml from jars/pom.xml

jars/lock.toml lists every jar (Delta for Spark 4.2 and its run-time dependencies, the PostgreSQL
JDBC driver for a shared metastore) by Maven coordinate with its SHA-256. Fetching downloads each
missing jar from Maven Central (or the mirror in $LAKESCORE_MAVEN_REPO), checks its SHA-256, and
renames it into place only then, so DEST never holds a partial or unverified jar. Jars already
present with the right hash are kept; any other *.jar in DEST is removed, so the folder is exactly
the lock. Idempotent; needs no Maven.

Writing the lock (`--lock`, after changing jars/pom.xml) is the one step that runs Maven: it
resolves the pom, drops every jar whose artifact pyspark already ships (two versions of one
library on the class path is how clashes start) and hashes the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "jars" / "lock.toml"
POM = ROOT / "jars" / "pom.xml"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
# A mirror or repository manager with Maven Central's layout (Artifactory, Nexus, a file:// copy).
REPO_ENV = "LAKESCORE_MAVEN_REPO"
# Seconds without a byte from the server before one attempt gives up.
TIMEOUT_S = 30
# Attempts after the first on a network error (not on 404 or a wrong checksum).
RETRIES = 2
_CHUNK = 1 << 20
_VERSIONED = re.compile(r"^(?P<artifact>.+?)-\d[\w.\-]*\.jar$")


class JarFetchError(RuntimeError):
    """A jar could not be downloaded, or what arrived is not the jar the lock names."""


@dataclass(frozen=True)
class LockedJar:
    """One line of the lock: a Maven coordinate and the SHA-256 of its jar."""

    group: str
    artifact: str
    version: str
    sha256: str

    @classmethod
    def parse(cls, coordinate: str, sha256: str) -> "LockedJar":
        parts = coordinate.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{coordinate!r} is not group:artifact:version")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"{coordinate}: sha256 {sha256!r} is not 64 lower-case hex digits")
        return cls(*parts, sha256)

    @property
    def coordinate(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def repo_path(self) -> str:
        """The jar's path in a repository with Maven's layout."""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.file_name}"


@dataclass(frozen=True)
class FetchReport:
    """What `fetch` did to the folder, by file name."""

    downloaded: list[str]
    kept: list[str]
    removed: list[str]


def read_lock(path: Path = LOCK) -> list[LockedJar]:
    """The jars `path` locks, in its order; ValueError naming the entry on a malformed one."""
    with open(path, "rb") as f:
        entries = tomllib.load(f).get("jar", [])
    jars = [LockedJar.parse(e["coordinate"], e["sha256"]) for e in entries]
    names = [j.file_name for j in jars]
    if len(set(names)) != len(names):
        raise ValueError(f"{path} names one jar file twice: {sorted(n for n in names if names.count(n) > 1)}")
    return jars


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_repo() -> str:
    return os.environ.get(REPO_ENV) or MAVEN_CENTRAL


def fetch(
    dest: Path,
    jars: list[LockedJar],
    *,
    repo: str | None = None,
    timeout_s: float = TIMEOUT_S,
    retries: int = RETRIES,
) -> FetchReport:
    """Make `dest` hold exactly `jars`, each verified against its SHA-256.

    Args:
        dest: the folder (created if missing); every *.jar in it that the lock does not name,
            or names with another hash, is removed or replaced.
        jars: from `read_lock`.
        repo: base URL of a repository with Maven's layout (https://, http:// or file://);
            default $LAKESCORE_MAVEN_REPO, else Maven Central.
        timeout_s: per attempt, seconds without data before giving up.
        retries: further attempts on a network error, one second apart, then two, ...

    Returns what was downloaded, kept and removed. Raises JarFetchError naming the URL, or the jar
    with the expected and actual SHA-256, and the fix.
    """
    repo = (repo or default_repo()).rstrip("/")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for partial in dest.glob(".*.jar.*.part"):  # left by a download that was killed
        partial.unlink()
    wanted = {j.file_name: j for j in jars}
    removed = []
    for present in sorted(dest.glob("*.jar")):
        if present.name not in wanted:
            present.unlink()
            removed.append(present.name)
    downloaded, kept = [], []
    for jar in jars:
        target = dest / jar.file_name
        if target.is_file() and sha256_of(target) == jar.sha256:
            kept.append(jar.file_name)
            continue
        _download(f"{repo}/{jar.repo_path}", jar, target, timeout_s=timeout_s, retries=retries)
        downloaded.append(jar.file_name)
    return FetchReport(downloaded=downloaded, kept=kept, removed=removed)


def _download(url: str, jar: LockedJar, target: Path, *, timeout_s: float, retries: int) -> None:
    """Stream `url` into a temporary file beside `target`; rename it there once its hash is right."""
    for attempt in range(retries + 1):
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if actual != jar.sha256:
                raise JarFetchError(
                    f"{jar.file_name} ({jar.coordinate}) from {url} has SHA-256 {actual}, but jars/lock.toml "
                    f"expects {jar.sha256}; the file was deleted. If {REPO_ENV} names a mirror, it serves "
                    "another file under that name: fix or unset it. If the lock was edited by hand, "
                    "regenerate it with `python -m lakescore.jars --lock`."
                )
            tmp.chmod(0o644)  # mkstemp makes it private; the jars are shared (images, HDFS)
            os.replace(tmp, target)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise JarFetchError(
                    f"{jar.coordinate} not found at {url} (HTTP 404): the repository does not hold it. "
                    f"Check the coordinate in jars/lock.toml, or point {REPO_ENV} at a repository that has it."
                ) from None
            error = exc
        except (urllib.error.URLError, OSError) as exc:
            error = exc
        finally:
            tmp.unlink(missing_ok=True)
        if attempt < retries:
            time.sleep(attempt + 1)
    raise JarFetchError(
        f"could not download {url} after {retries + 1} attempts ({error}). This machine may be offline or "
        f"behind a proxy: set https_proxy, or set {REPO_ENV} to a reachable mirror with Maven Central's "
        f"layout (a file:// folder works), or copy {jar.file_name} into {target.parent} by hand "
        f"(SHA-256 {jar.sha256}), then run `make jars` again."
    )


def artifact_of(jar_name: str) -> str:
    """`parquet-column-1.16.0.jar` -> `parquet-column`."""
    match = _VERSIONED.match(jar_name)
    return match.group("artifact") if match else jar_name.removesuffix(".jar")


def resolve_with_maven(pom: Path = POM) -> list[LockedJar]:
    """Maintainer's step: resolve `pom` with Maven, less what pyspark ships; hash each jar.

    Returns the jars sorted by coordinate. Needs `mvn` on PATH and, unless ~/.m2 holds them,
    Maven Central.
    """
    import pyspark

    if shutil.which("mvn") is None:
        raise JarFetchError(
            "writing the lock resolves jars/pom.xml with Maven, and `mvn` is not on PATH: install Maven "
            "(e.g. apt-get install maven), or edit jars/lock.toml by hand (coordinate and the SHA-256 of "
            "the jar on Maven Central). Fetching the jars (`make jars`) does not need Maven."
        )
    shipped = {artifact_of(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    resolved = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # The repository layout keeps each jar's group in its path: <group dirs>/<artifact>/<version>/.
        subprocess.run(
            ["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={out}",
             "-DincludeScope=runtime", "-Dmdep.useRepositoryLayout=true"],
            check=True,
        )
        for path in sorted(out.rglob("*.jar")):
            version_dir = path.parent
            artifact, version = version_dir.parent.name, version_dir.name
            group = ".".join(version_dir.parent.parent.relative_to(out).parts)
            # RoaringBitmap's "shims" belongs to the RoaringBitmap version Spark replaces.
            if artifact in shipped or artifact == "shims":
                continue
            resolved.append(LockedJar(group, artifact, version, sha256_of(path)))
    return sorted(resolved, key=lambda jar: jar.coordinate)


LOCK_HEADER = """\
# The JVM jars `make jars` fetches into .jars/ (python -m lakescore.jars), each checked against its
# SHA-256. Generated from jars/pom.xml by `python -m lakescore.jars --lock` (needs Maven): after a
# change to the pom, regenerate this file rather than editing it. It is jars/pom.xml's resolution
# less the jars pyspark already ships.
"""


def write_lock(jars: list[LockedJar], path: Path = LOCK) -> None:
    lines = [LOCK_HEADER]
    for jar in jars:
        lines += ["[[jar]]", f'coordinate = "{jar.coordinate}"', f'sha256 = "{jar.sha256}"', ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lakescore.jars", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, default=ROOT / ".jars", help="folder for the jars (default .jars)")
    parser.add_argument("--repo", help=f"repository base URL (default ${REPO_ENV}, else {MAVEN_CENTRAL})")
    parser.add_argument("--lock", action="store_true", help="rewrite jars/lock.toml from jars/pom.xml with Maven")
    args = parser.parse_args(argv)
    try:
        if args.lock:
            jars = resolve_with_maven()
            write_lock(jars)
            print(f"{len(jars)} jars locked in {LOCK}: " + ", ".join(j.file_name for j in jars))
            return
        report = fetch(args.dest, read_lock(), repo=args.repo)
    except (JarFetchError, subprocess.CalledProcessError) as exc:
        sys.exit(f"error: {exc}")
    print(
        f"{len(report.downloaded) + len(report.kept)} jars in {args.dest} "
        f"({len(report.downloaded)} downloaded, {len(report.kept)} already there"
        + (f", removed {', '.join(report.removed)}" if report.removed else "")
        + ")"
    )


if __name__ == "__main__":
    main()
