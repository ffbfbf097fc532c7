"""TEST HELPER: a real PostgreSQL server on loopback, for the shared-metastore tests.

    with postgres_server() as server:              # tests/conftest.py: the `postgres_server` fixture
        url = server.create_database("metastore_a")
        overrides, env = catalog_overrides(server, "metastore_a")

The server comes from Debian's `postgresql` package (`.ci/run` installs it; so does
`ensure_postgresql` when the tests run as root and it is missing). It runs from a temporary data
directory, listens on 127.0.0.1 at a free port and on a Unix socket in that directory, and is
stopped and deleted at the end of the `with` block, pass or fail. Local (socket) connections are
trusted, which is how the helper creates roles and databases with psql; TCP connections, the ones
the metastore client makes, need the role's password (scram-sha-256).

PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the package
creates, and the data directory is created outside pytest's private temp folder (0700 for root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# The role the lakescore jobs log in as; its password is made per server.
ROLE = "lakescore"
SUPERUSER = "postgres"
PASSWORD_ENV = "LAKESCORE_CATALOG_PASSWORD"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, and they cannot be installed by this process."""


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin that has initdb and pg_ctl, else None."""
    def major(path: Path) -> int:
        return int(path.parent.name) if path.parent.name.isdigit() else 0

    for path in sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), key=major, reverse=True):
        if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return path
    return None


def ensure_postgresql() -> Path:
    """The server binaries' folder, installing Debian's `postgresql` package first if it is
    missing and this process is root (what `.ci/run` does before the tests)."""
    found = find_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            "the shared-metastore tests need a PostgreSQL server and none is installed "
            "(no /usr/lib/postgresql/*/bin/initdb); install Debian's package: "
            "sudo apt-get install -y --no-install-recommends postgresql"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise PostgresUnavailable(f"`{' '.join(command)}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    found = find_bin_dir()
    if found is None:
        raise PostgresUnavailable("apt-get installed `postgresql`, yet /usr/lib/postgresql/*/bin/initdb is still missing")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    """A running server: `host:port` for TCP clients, `socket_dir` for psql as the superuser."""

    bin_dir: Path
    base_dir: Path
    port: int
    host: str = "127.0.0.1"
    role: str = ROLE
    password: str = field(default="", repr=False)
    run_as: str | None = None  # the OS user the server runs as (root cannot run it)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def url(self, database: str) -> str:
        """The JDBC URL of `database` on this server (what `catalog.url` takes)."""
        return f"jdbc:postgresql://{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` as the superuser over the Unix socket; its output, unaligned, tuples only."""
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} on {database} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database owned by the lakescore role; its JDBC URL."""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{self.role}"')
        return self.url(name)

    def tables(self, database: str) -> set[str]:
        """The tables of `database`'s public schema (the metastore's schema, once initialised)."""
        out = self.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database)
        return set(out.split()) if out else set()


def catalog_overrides(server: PostgresServer, database: str) -> tuple[dict[str, str], dict[str, str]]:
    """What points a lakescore job at `database` on `server` as its metastore: the settings
    overrides (`--set catalog.url=...`, `catalog.user=...`) and the environment holding the password
    (never a flag: flags show in `ps`)."""
    return (
        {"catalog.url": server.url(database), "catalog.user": server.role},
        {PASSWORD_ENV: server.password},
    )


def _as_server_user(command: list[str], run_as: str | None) -> list[str]:
    return ["runuser", "-u", run_as, "--", *command] if run_as else command


@contextlib.contextmanager
def postgres_server(start_timeout_s: float = 60) -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL server (see the module docstring); stop and delete it after."""
    bin_dir = ensure_postgresql()
    run_as = SUPERUSER if os.geteuid() == 0 else None
    if run_as:
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, the server must run as the `{run_as}` user, which does not exist; "
                "Debian's `postgresql` package creates it (apt-get install --reinstall postgresql-common), "
                "or run the tests as another user"
            ) from None
    # Not under pytest's temp folder: as root that is private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="lakescore-pg-"))
    password = secrets.token_urlsafe(18)
    try:
        (base / "socket").mkdir()
        if run_as:
            shutil.chown(base, run_as)
            shutil.chown(base / "socket", run_as)
        init = subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", SUPERUSER, "-E", "UTF8",
                             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"], run_as),
            capture_output=True, text=True, timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        server = None
        for _ in range(3):  # a free port may be taken before the server binds it: try another
            port = free_port()
            options = (f"-p {port} -k {base / 'socket'} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            started = subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"),
                                 "-o", options, "-w", "-t", str(int(start_timeout_s)), "start"], run_as),
                capture_output=True, text=True, timeout=start_timeout_s + 30,
            )
            if started.returncode == 0:
                server = PostgresServer(bin_dir=bin_dir, base_dir=base, port=port, password=password, run_as=run_as)
                break
        if server is None:
            log = (base / "server.log").read_text(errors="replace")[-3000:] if (base / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()}\n{log}")
        try:
            server.psql(f"CREATE ROLE \"{ROLE}\" LOGIN PASSWORD '{password}'")
            yield server
        finally:
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-m", "fast", "-w", "stop"], run_as),
                capture_output=True, timeout=60,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
