"""Serve the lake's tables to analysts over JDBC/ODBC (Spark's Thrift server), read-only.

    lakescore serve-sql                                   # jdbc:hive2://127.0.0.1:10000/lakescore
    LAKESCORE_SQL_PASSWORD=... lakescore serve-sql --set sql.auth=password --set sql.host=0.0.0.0

Then `beeline -u jdbc:hive2://127.0.0.1:10000/lakescore`, DBeaver, Superset or PyHive (README,
"A SQL endpoint for analysts"). Runs until SIGTERM or Ctrl-C. With the embedded Derby metastore
no other job can open the lake's catalog while it runs.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup
from lakescore.catalog import CatalogMismatch
from lakescore.sql_server import SqlServerError, ThriftServer
from pipelines.serve_sql import serve_sql as run_server


def serve_sql(
    port: Optional[int] = typer.Option(None, help="TCP port (sql.port, default 10000)."),
    host: Optional[str] = typer.Option(None, help="Address to listen on (sql.host, default 127.0.0.1)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Start a read-only JDBC/ODBC SQL endpoint (HiveThriftServer2) on the lake's catalog."""
    settings = setup(config, set_, {"sql.port": port, "sql.host": host}, verbose)
    stop = threading.Event()

    def end_start(*_) -> None:
        raise KeyboardInterrupt

    # While the server starts, SIGTERM ends the start as Ctrl-C does (the session is stopped on the way out).
    signal.signal(signal.SIGTERM, end_start)

    def ready(server: ThriftServer) -> None:
        # Once it serves, Ctrl-C and SIGTERM stop it cleanly. Installed here, after the session:
        # pyspark's SparkContext installs its own SIGINT handler when it starts.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        user = f" -n {settings.sql.user} -p \"$LAKESCORE_SQL_PASSWORD\"" if settings.sql.auth == "password" else ""
        typer.echo(f"serving {server.jdbc_url} (read-only, auth: {settings.sql.auth}); stop with Ctrl-C", err=True)
        typer.echo(f"beeline -u {server.jdbc_url}{user}", err=True)

    try:
        run_server(settings, stop, on_ready=ready)
        typer.echo("stopped", err=True)
    except (SqlServerError, CatalogMismatch) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("stopped before the server was ready", code=130)
