"""The Thrift JDBC/ODBC endpoint of `lakescore serve-sql`: Spark's HiveThriftServer2 on the lake's catalog.

The server runs inside a Spark session built by build_spark_session (Hive support, Delta), so it
sees the same catalog and tables as the jobs; with the embedded Derby metastore it must, as Derby
admits one process. Clients (beeline, DBeaver, Superset through PyHive) connect with
`jdbc:hive2://HOST:PORT/lakescore` and each get a session of their own.

Read-only, as `lakescore sql` without --write: the statements run in the JVM, with no Python in
between, so the policy of lakescore/sql_policy.py is enforced there by a parser wrapper
(jvm/src/lakescore/sqlserver/ReadOnlyParser.java, built into SQL_SERVER_JAR by `make setup`),
installed with Delta's extension through the static `spark.sql.extensions` of this session only.
Every session is refused anything but a query, SHOW, DESCRIBE or USE, except the one that
started the server (lakescore's own code; clients never get it).

Authentication (`sql.auth`): "none" (loopback only, unless allowed) or "password", a shared
secret checked in constant time by SharedSecretAuthenticator.java; the secret is handed to the
JVM through py4j, never through Spark's conf (shown in the UI) or a command line.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from lakescore.config import Settings
from lakescore.spark import DELTA_EXTENSION, build_spark_session, delta_jars

log = logging.getLogger(__name__)

READ_ONLY_EXTENSION = "lakescore.sqlserver.ReadOnlySqlExtension"
AUTHENTICATOR = "lakescore.sqlserver.SharedSecretAuthenticator"
# Clients must each get a session of their own: the server's own session is not read-only.
SINGLE_SESSION = "spark.sql.hive.thriftServer.singleSession"
# Hosts the endpoint may listen on without authentication.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# HiveServer2's authentication setting, as a deployment sets it for LDAP or Kerberos (README).
AUTHENTICATION = "spark.hadoop.hive.server2.authentication"
# How long start_thrift_server waits for the port to accept connections.
LISTEN_TIMEOUT_S = 60.0


class SqlServerError(RuntimeError):
    """The endpoint cannot start; the message says why and what to change."""


def sql_server_jar(settings: Settings) -> Path:
    """Where `make setup` puts the read-only parser and the password check (see the Makefile)."""
    return settings.spark.jars_dir / "sql-server" / "lakescore-sql-server.jar"


def server_settings(settings: Settings) -> Settings:
    """`settings` with what the serve-sql session needs at JVM launch: the jar on the driver's
    class path, Delta's and the read-only extension, one session per client, and the Thrift
    server's own settings (as `spark.hadoop.hive.*`, which its HiveConf is built from).
    """
    check_authentication(settings)
    jar = sql_server_jar(settings)
    if not jar.is_file():
        raise SqlServerError(
            f"{jar} is missing; run `make setup` (it compiles jvm/src/ with javac; without javac, install a "
            "JDK 17: `sudo apt-get install openjdk-17-jdk-headless` on Debian/Ubuntu)"
        )
    conf = dict(settings.spark.conf)
    extensions = [e for e in conf.get("spark.sql.extensions", DELTA_EXTENSION).split(",") if e]
    conf["spark.sql.extensions"] = ",".join([*extensions, READ_ONLY_EXTENSION])
    # The Thrift server opens a client's session (and its `USE lakescore`) on its own threads, whose
    # class loader sees the JVM's class path only, not spark.jars: Delta's jars go there too.
    class_path = [conf.get("spark.driver.extraClassPath"), str(jar), *delta_jars(settings.spark.jars_dir)]
    conf["spark.driver.extraClassPath"] = ":".join(p for p in class_path if p)
    conf[SINGLE_SESSION] = "false"
    # With sql.auth = "none", an authentication the deployment set itself (LDAP, Kerberos:
    # spark.hadoop.hive.server2.authentication*) stays; everything else follows `[sql]`.
    for key, value in hive_server_conf(settings).items():
        if settings.sql.auth == "none" and key.startswith("hive.server2.authentication"):
            conf.setdefault(f"spark.hadoop.{key}", value)
        else:
            conf[f"spark.hadoop.{key}"] = value
    return dataclasses.replace(settings, spark=dataclasses.replace(settings.spark, conf=conf))


def check_authentication(settings: Settings) -> None:
    """Raise SqlServerError if the endpoint would let anyone who reaches a non-loopback port read the lake."""
    sql = settings.sql
    own = settings.spark.conf.get(AUTHENTICATION, "NONE").upper()
    if sql.auth == "none" and own == "NONE" and sql.host not in LOOPBACK_HOSTS and not sql.allow_unauthenticated_remote:
        raise SqlServerError(
            f"sql.host={sql.host!r} with sql.auth='none' lets anyone who reaches the port read the lake; "
            "set sql.auth='password' (with $LAKESCORE_SQL_PASSWORD or sql.password_file), keep "
            "sql.host=127.0.0.1, configure LDAP or Kerberos (README), or set "
            "sql.allow_unauthenticated_remote=true on a network you trust"
        )


def hive_server_conf(settings: Settings) -> dict[str, str]:
    """HiveServer2's settings for `settings.sql`. Hive's scratch and operation-log folders go under
    the lake root, not /tmp/hive, which other users' servers share."""
    sql = settings.sql
    work = settings.lake.root / "_thriftserver"
    conf = {
        "hive.server2.thrift.bind.host": sql.host,
        "hive.server2.thrift.port": str(sql.port),
        "hive.server2.transport.mode": "binary",
        "hive.server2.authentication": "CUSTOM" if sql.auth == "password" else "NONE",
        "hive.exec.scratchdir": str(work / "scratch"),
        "hive.exec.local.scratchdir": str(work / "local_scratch"),
        "hive.downloaded.resources.dir": str(work / "resources"),
        "hive.server2.logging.operation.log.location": str(work / "operation_logs"),
    }
    if sql.auth == "password":
        conf["hive.server2.custom.authentication.class"] = AUTHENTICATOR
    return conf


def check_port_free(host: str, port: int) -> None:
    """Raise SqlServerError naming the setting to change if `host:port` cannot be listened on."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SqlServerError(
                    f"port {port} on {host} is already in use (another serve-sql or HiveServer2?); stop it or "
                    f"choose another port with --set sql.port={port + 1} (or [sql] port in the settings file)"
                ) from None
            raise SqlServerError(
                f"cannot listen on {host}:{port} ({exc.strerror}); set sql.host to an address of this machine "
                "(127.0.0.1 for this machine only)"
            ) from None


def build_server_session(settings: Settings) -> SparkSession:
    """The Spark session the server runs in: the lake's, plus the read-only parser for clients.

    Raises SqlServerError if the launcher replaced spark.sql.extensions or asked for one shared
    session (clients would then not be read-only).
    """
    spark = build_spark_session(server_settings(settings), app_name="lakescore-serve-sql")
    jconf = spark.sparkContext.getConf()
    if READ_ONLY_EXTENSION not in jconf.get("spark.sql.extensions", "") or jconf.get(SINGLE_SESSION, "false") == "true":
        spark.stop()
        raise SqlServerError(
            f"spark.sql.extensions must include {READ_ONLY_EXTENSION} and {SINGLE_SESSION} must be false for "
            "serve-sql (a --conf or spark-defaults.conf overrode them); remove those overrides"
        )
    # The session lakescore's own code runs on (the catalog check, a job in this process).
    spark.sparkContext._jvm.lakescore.sqlserver.ReadOnlySqlExtension.trust(spark._jsparkSession)
    return spark


@dataclass(frozen=True)
class ThriftServer:
    """A running endpoint: the JVM's HiveThriftServer2 and where it listens."""

    server: object  # py4j proxy of org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
    host: str
    port: int

    @property
    def jdbc_url(self) -> str:
        return jdbc_url(self.host, self.port)

    def stop(self) -> None:
        self.server.stop()


def jdbc_url(host: str, port: int, database: str = "lakescore") -> str:
    return f"jdbc:hive2://{host}:{port}/{database}"


def start_thrift_server(spark: SparkSession, settings: Settings) -> ThriftServer:
    """Start HiveThriftServer2 in `spark` (a session of build_server_session) and return once
    `sql.host:sql.port` accepts connections (hive_server_conf, set at the session's launch)."""
    sql = settings.sql
    check_port_free(sql.host, sql.port)
    for key in ("hive.exec.local.scratchdir", "hive.server2.logging.operation.log.location"):
        Path(hive_server_conf(settings)[key]).mkdir(parents=True, exist_ok=True)
    jvm = spark.sparkContext._jvm
    if sql.auth == "password":
        jvm.lakescore.sqlserver.SharedSecretAuthenticator.configure(sql.user, sql.password)
        # Hive looks the provider class up in a HiveConf of its own, which reads system properties only.
        jvm.java.lang.System.setProperty("hive.server2.custom.authentication.class", AUTHENTICATOR)
    server = jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
        spark._jsparkSession.sqlContext()
    )
    try:
        wait_until_listening(sql.host, sql.port)
    except BaseException:
        server.stop()
        raise
    log.info("Thrift JDBC/ODBC server on %s (auth: %s)", jdbc_url(sql.host, sql.port), sql.auth)
    return ThriftServer(server=server, host=sql.host, port=sql.port)


def wait_until_listening(host: str, port: int, timeout_s: float = LISTEN_TIMEOUT_S) -> None:
    """Return once `host:port` accepts a TCP connection; raise SqlServerError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SqlServerError(
                    f"the Thrift server did not listen on {host}:{port} within {timeout_s:.0f} s; "
                    "rerun with --verbose to see Spark's log"
                ) from None
            time.sleep(0.2)
