"""`make jars` without Maven: jars/lock.toml, and fetching it into a folder with checksums.

The fetch tests serve a repository with Maven's layout from a temporary folder on 127.0.0.1 (and
once as file://), so they need no network; the last tests hold the lock to .jars/, jars/pom.xml
and pyproject.toml.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import tomllib
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

import pytest

from lakescore.config import SparkSettings
from lakescore.jars import LOCK, POM, JarFetchError, LockedJar, fetch, read_lock, sha256_of

ROOT = Path(__file__).resolve().parent.parent


def locked(coordinate: str, content: bytes) -> LockedJar:
    return LockedJar.parse(coordinate, hashlib.sha256(content).hexdigest())


def publish(repo: Path, jar: LockedJar, content: bytes) -> None:
    path = repo / jar.repo_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


class _Repository(http.server.SimpleHTTPRequestHandler):
    requested: list[str]

    def do_GET(self):
        self.requested.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def repo(tmp_path):
    """(folder, base URL, paths requested) of a Maven-layout repository served over HTTP."""
    folder = tmp_path / "repo"
    folder.mkdir()
    requested: list[str] = []
    handler = type("Handler", (_Repository,), {"requested": requested})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}/", requested
    server.shutdown()
    server.server_close()


DELTA = b"delta classes"
PG = b"postgres driver"


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_fetch_downloads_every_locked_jar_into_the_folder_with_its_locked_content(repo, tmp_path, scheme):
    folder, url, _ = repo
    jars = [locked("io.delta:delta-spark_4.2_2.13:4.4.0", DELTA), locked("org.postgresql:postgresql:42.7.14", PG)]
    for jar, content in zip(jars, [DELTA, PG]):
        publish(folder, jar, content)
    dest = tmp_path / "jars"

    report = fetch(dest, jars, repo=url if scheme == "http" else folder.as_uri(), retries=0)

    assert report.downloaded == ["delta-spark_4.2_2.13-4.4.0.jar", "postgresql-42.7.14.jar"]
    assert report.kept == [] and report.removed == []
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == {
        "delta-spark_4.2_2.13-4.4.0.jar": DELTA,
        "postgresql-42.7.14.jar": PG,
    }


def test_a_jar_whose_sha256_is_not_the_locked_one_is_deleted_and_the_error_names_both_hashes(repo, tmp_path):
    folder, url, _ = repo
    jar = locked("io.delta:delta-spark_4.2_2.13:4.4.0", DELTA)
    publish(folder, jar, b"something else")
    dest = tmp_path / "jars"

    with pytest.raises(JarFetchError) as error:
        fetch(dest, [jar], repo=url, retries=0)

    message = str(error.value)
    assert "delta-spark_4.2_2.13-4.4.0.jar" in message
    assert jar.sha256 in message and hashlib.sha256(b"something else").hexdigest() in message
    assert list(dest.iterdir()) == []  # neither the jar nor its temporary file


def test_jars_already_there_with_the_locked_hash_are_kept_without_a_request(repo, tmp_path):
    folder, url, requested = repo
    delta, pg = locked("io.delta:delta-spark_4.2_2.13:4.4.0", DELTA), locked("org.postgresql:postgresql:42.7.14", PG)
    publish(folder, delta, DELTA)
    publish(folder, pg, PG)
    dest = tmp_path / "jars"
    dest.mkdir()
    (dest / delta.file_name).write_bytes(DELTA)

    report = fetch(dest, [delta, pg], repo=url, retries=0)

    assert report.kept == [delta.file_name] and report.downloaded == [pg.file_name]
    assert requested == ["/" + pg.repo_path]


def test_a_jar_there_with_another_hash_is_downloaded_again(repo, tmp_path):
    folder, url, _ = repo
    jar = locked("io.delta:delta-spark_4.2_2.13:4.4.0", DELTA)
    publish(folder, jar, DELTA)
    dest = tmp_path / "jars"
    dest.mkdir()
    (dest / jar.file_name).write_bytes(b"truncated")

    report = fetch(dest, [jar], repo=url, retries=0)

    assert report.downloaded == [jar.file_name]
    assert (dest / jar.file_name).read_bytes() == DELTA


def test_jars_the_lock_does_not_name_are_removed_and_other_files_are_left(repo, tmp_path):
    folder, url, _ = repo
    jar = locked("io.delta:delta-spark_4.2_2.13:4.4.0", DELTA)
    publish(folder, jar, DELTA)
    dest = tmp_path / "jars"
    dest.mkdir()
    (dest / "delta-spark_4.2_2.13-4.3.0.jar").write_bytes(b"the version before")
    (dest / ".delta-spark_4.2_2.13-4.4.0.jar.x1y2.part").write_bytes(b"a killed download")
    (dest / ".resolved").touch()

    report = fetch(dest, [jar], repo=url, retries=0)

    assert report.removed == ["delta-spark_4.2_2.13-4.3.0.jar"]
    assert sorted(p.name for p in dest.iterdir()) == [".resolved", jar.file_name]


def test_a_jar_the_repository_lacks_fails_naming_its_coordinate_and_url(repo, tmp_path):
    _, url, _ = repo
    jar = locked("org.postgresql:postgresql:42.7.99", PG)

    with pytest.raises(JarFetchError, match=r"org\.postgresql:postgresql:42\.7\.99 not found at .*HTTP 404"):
        fetch(tmp_path / "jars", [jar], repo=url, retries=0)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on once this returns."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_repository_fails_naming_the_url_and_the_mirror_setting(tmp_path):
    # A port nothing listens on: connection refused at once, as on a machine without network.
    url = f"http://127.0.0.1:{free_port()}"
    jar = locked("io.delta:delta-spark_4.2_2.13:4.4.0", DELTA)

    with pytest.raises(JarFetchError) as error:
        fetch(tmp_path / "jars", [jar], repo=url, retries=1, timeout_s=5)

    message = str(error.value)
    assert f"{url}/io/delta/delta-spark_4.2_2.13/4.4.0/delta-spark_4.2_2.13-4.4.0.jar after 2 attempts" in message
    assert "LAKESCORE_MAVEN_REPO" in message and jar.sha256 in message


def test_the_jars_folder_holds_exactly_the_locked_jars():
    jars_dir = SparkSettings().jars_dir
    if not (jars_dir / ".resolved").exists():
        pytest.fail(f"{jars_dir} has not been filled: run `make jars`")
    present = {p.name: sha256_of(p) for p in jars_dir.glob("*.jar")}
    assert present == {jar.file_name: jar.sha256 for jar in read_lock()}, (
        "the jars folder is not the lock: run `make jars` (or, after a pom change, `make lock`)"
    )


def test_the_lock_pins_the_delta_and_postgresql_versions_the_pom_and_pyproject_name():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    properties = ET.parse(POM).getroot().find("m:properties", ns)
    delta_version = properties.find("m:delta.version", ns).text
    postgres_version = properties.find("m:postgresql.version", ns).text
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    delta_pin = next(re.fullmatch(r"delta-spark==(.+)", p).group(1) for p in pins if p.startswith("delta-spark=="))

    coordinates = {jar.coordinate for jar in read_lock(LOCK)}

    assert delta_version == delta_pin
    assert f"io.delta:delta-spark_4.2_2.13:{delta_version}" in coordinates
    assert f"io.delta:delta-storage:{delta_version}" in coordinates
    assert f"org.postgresql:postgresql:{postgres_version}" in coordinates
