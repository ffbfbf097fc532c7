"""`lakescore serve-sql`'s sequence: check the port, build the session, check the catalog, serve until stopped."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from py4j.protocol import Py4JError

from lakescore.catalog import check_catalog
from lakescore.config import Settings
from lakescore.lake import ensure_database
from lakescore.sql_server import ThriftServer, build_server_session, check_port_free, start_thrift_server

log = logging.getLogger(__name__)


def serve_sql(settings: Settings, stop: threading.Event, on_ready: Callable[[ThriftServer], None] | None = None) -> None:
    """Serve the lake's catalog over JDBC/ODBC until `stop` is set, then stop the server and the session.

    The port is checked before the JVM starts (a clear error in a second, not after Spark's start).
    Raises SqlServerError (port taken, jar missing) or CatalogMismatch (a moved lake) before serving.
    """
    check_port_free(settings.sql.host, settings.sql.port)
    spark = build_server_session(settings)
    try:
        check_catalog(spark, settings)
        ensure_database(spark, settings)  # `jdbc:hive2://.../lakescore` needs it, even on an empty lake
        server = start_thrift_server(spark, settings)
        try:
            if on_ready is not None:
                on_ready(server)
            stop.wait()
        finally:
            _unless_jvm_gone(server.stop)
    finally:
        _unless_jvm_gone(spark.stop)


def _unless_jvm_gone(stop: Callable[[], None]) -> None:
    """Run `stop`, unless the JVM has already exited: a SIGTERM sent to the whole process group
    (systemd, `timeout`, `kill -- -PGID`) reaches Spark's JVM too, which then stops itself."""
    try:
        stop()
    except (Py4JError, ConnectionError):
        log.info("Spark's JVM had already stopped")
