"""`lakescore serve-sql`: the Thrift JDBC/ODBC endpoint, queried by beeline and PyHive.

One server for the whole module (and suite): tests/sql_server_host.py, a process with its own lake
root (the suite's `spark` fixture holds the Derby metastore of the suite's lake), the server
started with the shared-secret password check. With Derby, lakescore's own work (a nightly run,
a `lakescore sql` query) runs in that process, beside the server; the settings it gets come from
server_overrides() alone, the one place to point it at a shared metastore instead.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyspark
import pytest

from lakescore.config import ConfigError, load_settings
from lakescore.sql_server import AUTHENTICATION, SqlServerError, check_authentication, check_port_free
from sql_server_host import EVENT, FIRST_NIGHT, NIGHT, SERVED_MODEL

REPO = Path(__file__).resolve().parent.parent
HOST = Path(__file__).resolve().with_name("sql_server_host.py")
BEELINE = Path(pyspark.__file__).resolve().parent / "bin" / "beeline"
USER = "analyst"
PASSWORD = "serve-sql-tests-only-secret"
# How long the server's process may take to generate, train, score a night and start serving.
START_TIMEOUT_S = 300
CLIENT_TIMEOUT_S = 120


def server_overrides(lake_root: Path, port: int) -> dict[str, str]:
    """The server process's settings: its own small lake, local[2], the password check on `port`
    (the password itself comes from $LAKESCORE_SQL_PASSWORD)."""
    return {
        "lake.root": str(lake_root),
        "spark.master": "local[2]",
        "spark.shuffle_partitions": "2",
        "spark.arrow_batch_size": "1000",
        "score.hash_key": "serve-sql-tests-only-hash-key",
        "generate.days": "3",
        "generate.rows_per_day": "1500",
        "generate.accounts": "300",
        "generate.anomaly_rate": "0.02",
        "generate.start_date": "2026-11-01",
        "spark.conf": "spark.ui.enabled=false",
        "sql.port": str(port),
        "sql.auth": "password",
        "sql.user": USER,
    }


class HostedServer:
    """The server's process: commands in, events out (tests/sql_server_host.py)."""

    def __init__(self, process: subprocess.Popen, log: Path):
        self.process = process
        self.log = log
        self.events: queue.Queue = queue.Queue()
        self.pending: list[dict] = []
        self.ready: dict = {}
        self.requests = itertools.count()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith(EVENT):
                self.events.put(json.loads(line[len(EVENT):]))
        self.events.put({"event": "exited"})

    def send(self, **command) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def wait_for(self, event: str, timeout: float = CLIENT_TIMEOUT_S, **match) -> dict:
        """The next event named `event` (with `match`'s values); fail with the server's log on an exit or timeout."""
        for seen in list(self.pending):
            if seen["event"] == event and all(seen.get(k) == v for k, v in match.items()):
                self.pending.remove(seen)
                return seen
        while True:
            try:
                seen = self.events.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no {event} event from the SQL server's process within {timeout} s; its log:\n{self._tail()}")
            if seen["event"] in ("exited", "nightly_failed") or (seen["event"] == "sql_failed" and seen.get("id") == match.get("id")):
                pytest.fail(f"the SQL server's process reported {seen}; its log:\n{self._tail()}")
            if seen["event"] == event and all(seen.get(k) == v for k, v in match.items()):
                return seen
            self.pending.append(seen)

    def lakescore_sql(self, query: str) -> list[list]:
        """`lakescore sql`'s library call, run in the server's process."""
        request = str(next(self.requests))
        self.send(op="sql", id=request, query=query)
        return self.wait_for("sql", id=request)["rows"]

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    @property
    def url(self) -> str:
        return self.ready["url"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sql_server(tmp_path_factory):
    """One Thrift server for the suite, on a lake of its own (3 days, a model registered, one night scored)."""
    root = tmp_path_factory.mktemp("served_lake")
    log = root.parent / "sql_server_host.log"
    process = subprocess.Popen(
        [sys.executable, str(HOST), json.dumps(server_overrides(root, _free_port()))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=REPO,
        env={**os.environ, "LAKESCORE_SQL_PASSWORD": PASSWORD},  # as a deployment passes it: never on a command line
    )
    server = HostedServer(process, log)
    try:
        server.ready = server.wait_for("ready", timeout=START_TIMEOUT_S)
        yield server
    finally:
        if process.poll() is None:
            server.send(op="stop")
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def beeline(server: HostedServer, statements: list[str], tmp_path: Path, password: str = PASSWORD) -> subprocess.CompletedProcess:
    """Run `statements` with pyspark's beeline (one JVM, in order, past errors); CSV out."""
    secret = tmp_path / "password"
    secret.write_text(password)
    return subprocess.run(
        [str(BEELINE), "-u", server.url, "-n", USER, "-w", str(secret), "--silent=true", "--outputformat=csv2",
         "--force=true", "-e", "".join(s + ";\n" for s in statements)],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
    )


def pyhive(server: HostedServer, password: str = PASSWORD):
    from pyhive import hive

    port = int(server.url.split(":")[-1].split("/")[0])
    return hive.connect(host="127.0.0.1", port=port, username=USER, password=password, auth="CUSTOM", database="lakescore")


def pyhive_rows(server: HostedServer, query: str) -> list[list]:
    with pyhive(server) as connection:
        cursor = connection.cursor()
        cursor.execute(query)
        return [list(r) for r in cursor.fetchall()]


def readme_queries() -> list[str]:
    """The statements of README's "Querying in SQL" block, comments removed."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Querying in SQL", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    statements = [re.sub(r"--[^\n]*", "", s).strip() for s in block.split(";")]
    return [" ".join(s.split()) for s in statements if s]


def assert_same_rows(expected: list[list], got: list[list], query: str) -> None:
    """Rows from lakescore sql against rows from a client (values as text, floats approximately)."""
    assert len(got) == len(expected), query
    for want, have in zip(expected, got):
        for w, h in zip(want, have, strict=True):
            if isinstance(w, float):
                assert float(h) == pytest.approx(w, rel=1e-9), query
            else:
                assert str(h) == str(w), query


def parse_beeline_csv(stdout: str, headers: list[list[str]]) -> list[list[list[str]]]:
    """Split beeline's csv2 output of several queries into each one's rows, by their header lines."""
    lines = list(csv.reader(line for line in stdout.splitlines() if line.strip()))
    results, i = [], 0
    for header in headers:
        assert lines[i] == header, f"expected the header {header}, beeline printed {lines[i]}"
        i += 1
        rows = []
        while i < len(lines) and (len(results) + 1 == len(headers) or lines[i] != headers[len(results) + 1]):
            rows.append(lines[i])
            i += 1
        results.append(rows)
    return results


@pytest.mark.slow
def test_the_readme_queries_return_through_beeline_and_pyhive_what_lakescore_sql_returns(sql_server, committed_night, tmp_path):
    queries = readme_queries()
    assert len(queries) == 4 and "LATERAL VIEW explode(reasons)" in queries[1]
    expected = [sql_server.lakescore_sql(q) for q in queries]
    # Both nights are there, each counted as its run counted it; their reasons and drift too.
    per_night = {str(r[0]): r[4] for r in expected[0]}
    assert per_night == {str(FIRST_NIGHT): sql_server.ready["first_night_flagged"], str(NIGHT): committed_night["rows_flagged"]}
    assert expected[1] and expected[3]
    for query, want in zip(queries, expected):
        assert_same_rows(want, pyhive_rows(sql_server, query), query)

    # beeline: the per-night counts and the reasons (text columns and counts).
    headers = [["run_date", "source_table", "model_name", "scoring_role", "flagged"], ["feature", "times"]]
    result = beeline(sql_server, queries[:2], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for want, got, query in zip(expected[:2], parse_beeline_csv(result.stdout, headers), queries):
        assert_same_rows(want, got, query)


REFUSED = [
    ("DROP TABLE lakescore.transactions", "read-only: this statement (DropTable)"),
    ("INSERT INTO lakescore.transactions SELECT * FROM lakescore.transactions LIMIT 1", "read-only"),
    ("DELETE FROM lakescore.transactions", "read-only: this statement (DeleteFromTable)"),
    ("SET spark.sql.runSQLOnFiles=true", "read-only"),
    ("ADD JAR /tmp/evil.jar", "ADD JAR loads code into the JVM"),
    ("CREATE FUNCTION evil AS 'com.example.Evil' USING JAR '/tmp/evil.jar'", "CREATE FUNCTION loads code"),
    ("SELECT reflect('java.lang.System', 'exit', 1)", "reflect() calls Java methods by name"),
    ("SELECT * FROM lakescore.flagged WHERE score > (SELECT java_method('java.lang.Math', 'random'))", "java_method()"),
    ("SELECT * FROM parquet.`/etc/lakescore/secret.parquet`", "reads a path, not a catalog table"),
    ("SELECT * FROM read_files('/etc/passwd')", "table-valued function read_files"),
]


@pytest.mark.slow
def test_statements_that_change_the_lake_or_reach_past_the_catalog_are_refused_with_the_reason(sql_server, tmp_path):
    before = pyhive_rows(sql_server, "SELECT COUNT(*) FROM lakescore.transactions")
    with pyhive(sql_server) as connection:
        cursor = connection.cursor()
        for statement, reason in REFUSED:
            with pytest.raises(Exception) as refused:
                cursor.execute(statement)
            assert reason in str(refused.value), statement
    assert pyhive_rows(sql_server, "SELECT COUNT(*) FROM lakescore.transactions") == before
    # beeline shows the reason too.
    result = beeline(sql_server, ["DROP TABLE lakescore.transactions"], tmp_path)
    assert result.returncode != 0 and "lakescore serve-sql is read-only: this statement (DropTable)" in result.stderr


@pytest.mark.slow
def test_a_wrong_password_is_refused_and_the_right_one_lets_in(sql_server):
    with pytest.raises(Exception, match="Error validating the login|authentication|Bad status"):
        pyhive(sql_server, password=PASSWORD + "x")
    assert pyhive_rows(sql_server, "SELECT current_user() IS NOT NULL AS ok, current_database() AS db") == [[True, "lakescore"]]


@pytest.fixture(scope="module")
def committed_night(sql_server, tmp_path_factory) -> dict:
    """A nightly run of NIGHT in the server's process, held after writing its rows into flagged_all
    and before the commit that publishes them, while beeline, PyHive and `lakescore sql` count the
    night; then released, publishing while the three count again; then counted once more."""
    count = f"SELECT COUNT(*) AS n FROM lakescore.flagged WHERE run_date = DATE'{NIGHT}' AND model_name = '{SERVED_MODEL}'"
    tmp_path = tmp_path_factory.mktemp("beeline")

    def by_beeline() -> int:
        result = beeline(sql_server, [count], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        _, value = result.stdout.split()
        return int(value)

    def counts(with_beeline: bool = True) -> dict[str, int]:
        clients = {
            "pyhive": lambda: pyhive_rows(sql_server, count)[0][0],
            "lakescore sql": lambda: sql_server.lakescore_sql(count)[0][0],
        }
        if with_beeline:
            clients["beeline"] = by_beeline
        with ThreadPoolExecutor(len(clients)) as pool:
            futures = {client: pool.submit(query) for client, query in clients.items()}
            return {client: future.result() for client, future in futures.items()}

    sql_server.send(op="nightly", day=str(NIGHT), hold=True)
    written = sql_server.wait_for("held", timeout=START_TIMEOUT_S)["written"]
    observed = {"written": written, "held": counts()}
    sql_server.send(op="release")
    observed["during"] = counts()
    observed["rows_flagged"] = sql_server.wait_for("nightly_done", timeout=START_TIMEOUT_S)["rows_flagged"]
    observed["after"] = counts(with_beeline=False)
    return observed


@pytest.mark.slow
def test_a_night_committed_while_beeline_pyhive_and_lakescore_sql_query_is_seen_whole_or_not_at_all(committed_night):
    night = committed_night["rows_flagged"]
    assert night > 0 and committed_night["written"] == night
    # Held before its commit: the rows are in flagged_all, and no client sees any of them.
    assert committed_night["held"] == {"pyhive": 0, "lakescore sql": 0, "beeline": 0}
    # Publishing while they count: each sees none or all of the night.
    assert set(committed_night["during"].values()) <= {0, night}, committed_night["during"]
    assert committed_night["after"] == {"pyhive": night, "lakescore sql": night}


def test_the_endpoint_refuses_no_authentication_off_loopback_unless_allowed_or_ldap_is_set():
    remote = load_settings(overrides={"sql.host": "0.0.0.0"}, environ={})
    with pytest.raises(SqlServerError, match="sql.auth='password'"):
        check_authentication(remote)
    check_authentication(load_settings(overrides={"sql.host": "0.0.0.0", "sql.allow_unauthenticated_remote": "true"}, environ={}))
    check_authentication(
        load_settings(overrides={"sql.host": "0.0.0.0", "spark.conf": f"{AUTHENTICATION}=LDAP"}, environ={})
    )
    check_authentication(load_settings(overrides={"sql.host": "127.0.0.1"}, environ={}))


def test_a_password_comes_from_the_environment_or_a_file_and_is_never_shown(tmp_path):
    with pytest.raises(ConfigError, match="LAKESCORE_SQL_PASSWORD"):
        load_settings(overrides={"sql.auth": "password"}, environ={})
    settings = load_settings(overrides={"sql.auth": "password"}, environ={"LAKESCORE_SQL_PASSWORD": "pw-from-env"})
    assert settings.sql.password == "pw-from-env" and "pw-from-env" not in repr(settings)
    (tmp_path / "secret").write_text("pw-from-file\n")
    settings = load_settings(overrides={"sql.auth": "password", "sql.password_file": str(tmp_path / "secret")}, environ={})
    assert settings.sql.password == "pw-from-file" and "pw-from-file" not in repr(settings)
    with pytest.raises(ConfigError, match="sql.password cannot be given on the command line.*LAKESCORE_SQL_PASSWORD"):
        load_settings(overrides={"sql.auth": "password", "sql.password": "pw-on-a-flag"}, environ={})


def test_a_port_in_use_is_refused_naming_the_setting_to_change():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SqlServerError, match=rf"port {port} on 127.0.0.1 is already in use.*--set sql.port={port + 1}"):
            check_port_free("127.0.0.1", port)
