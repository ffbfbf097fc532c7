"""A shared Hive metastore on PostgreSQL: Spark's settings for it, checks with clear errors, and
the one-time schema creation behind `lakescore metastore init`.

The embedded default keeps the catalog in Derby under the lake root, one process at a time. With
`catalog.url = "jdbc:postgresql://HOST:PORT/DB"` every lakescore process (the nightly job, a
training run, an analyst's `lakescore sql`) opens the Hive 2.3 metastore client that Spark bundles
(`spark.sql.hive.metastore.jars=builtin`) on that database, at the same time.

- The JDBC driver (`postgresql-*.jar` in spark.jars_dir, from jars/lock.toml) goes on the driver's
  class path: the client's connection pool asks java.sql.DriverManager, which only sees drivers
  of the JVM's own class path, not those added with spark.jars ("No suitable driver found").
- The password never travels on a command line: a session launches its JVM through spark-submit
  with every Spark setting as a `--conf` flag, visible to every user in `ps`. It is set on the
  running SparkContext's Hadoop configuration instead, which the metastore client reads when the
  session first touches the catalog.
- Before that, `check_reachable` (a TCP connect, no JVM) and `check_schema` (one JDBC connection
  from the JVM) turn an unreachable server, a refused login and a missing schema into errors
  that say what to fix; the Hive client's own are pages of nested stack traces.
- Jobs never create the schema (`datanucleus.schema.autoCreateAll=false`, verification on): two
  clients racing to create it can leave it half made. `init_metastore` creates it once, with
  DataNucleus's schema creation over every class of Hive's model, and records version 2.3.0;
  Hive's schematool is not needed (and its SQL scripts are not in Spark's jars).
"""

from __future__ import annotations

import logging
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lakescore.config import CatalogSettings, ConfigError

log = logging.getLogger(__name__)

# The schema version of the Hive 2.3 client Spark bundles (what its VERSION table must hold).
HIVE_SCHEMA_VERSION = "2.3.0"
DRIVER_CLASS = "org.postgresql.Driver"
DRIVER_JAR_GLOB = "postgresql-*.jar"
PASSWORD_KEY = "javax.jdo.option.ConnectionPassword"
DEFAULT_PORT = 5432
# Seconds a check waits for the server before calling it unreachable.
CONNECT_TIMEOUT_S = 10
# The JDO metadata in Spark's hive-metastore jar: every persistent class of Hive's model.
MODEL_METADATA = "package.jdo"

# PostgreSQL's SQLSTATEs that the checks turn into their own messages.
_BAD_LOGIN = ("28P01", "28000")
_NO_DATABASE = "3D000"
_NO_TABLE = "42P01"


class MetastoreError(RuntimeError):
    """The shared metastore cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class SchemaReport:
    """What `init_metastore` found or made: the schema version and its number of tables."""

    url: str
    version: str
    tables: int
    created: bool


def address(catalog: CatalogSettings) -> tuple[str, int]:
    """(host, port) of catalog.url; ConfigError if it names no host."""
    parts = urlsplit(catalog.url.removeprefix("jdbc:"))
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"catalog.url={catalog.url!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigError(f"catalog.url={catalog.url!r} names no host; use jdbc:postgresql://HOST:PORT/DATABASE")
    return parts.hostname, port


def driver_jar(jars_dir: Path) -> Path:
    """The PostgreSQL JDBC driver `make jars` put in `jars_dir`; MetastoreError if it is missing."""
    found = sorted(Path(jars_dir).glob(DRIVER_JAR_GLOB))
    if not found:
        raise MetastoreError(
            f"catalog.url names a PostgreSQL metastore, but there is no PostgreSQL JDBC driver ({DRIVER_JAR_GLOB}) "
            f"in {jars_dir}; run `make jars` (jars/lock.toml lists it), or set spark.jars_dir to the folder holding it"
        )
    return found[-1]


def metastore_conf(catalog: CatalogSettings, jars_dir: Path, *, create_schema: bool = False) -> dict[str, str]:
    """Spark settings that put the Hive metastore client on catalog.url (the password excepted).

    `create_schema`: the settings of `init_metastore` only (DataNucleus creates every table of
    Hive's model and the client records its schema version); jobs run with creation off and
    the version checked.
    """
    conf = {
        "spark.hadoop.javax.jdo.option.ConnectionURL": catalog.url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": DRIVER_CLASS,
        "spark.hadoop.javax.jdo.option.ConnectionUserName": catalog.user,
        # Read at JVM launch: the driver must be on the JVM's class path (module docstring).
        "spark.driver.extraClassPath": str(driver_jar(jars_dir)),
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",
        "spark.hadoop.hive.metastore.schema.verification": "true",
    }
    if create_schema:
        conf |= {
            "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
            "spark.hadoop.hive.metastore.schema.verification": "false",
            # With verification off, this makes the client write VERSION (2.3.0) into a new schema.
            "spark.hadoop.hive.metastore.schema.verification.record.version": "true",
            # DataNucleus creates a class's table when the class is first used; starting every
            # class of the model up front creates the whole schema now, not just what one
            # session touches (a later DROP TABLE needs the privilege tables, CREATE FUNCTION FUNCS).
            "spark.hadoop.datanucleus.autoStartMechanism": "Classes",
            "spark.hadoop.datanucleus.autoStartClassNames": ",".join(model_classes()),
        }
    return conf


def model_classes() -> list[str]:
    """Every persistent class of the Hive metastore's model, from the JDO metadata in Spark's
    hive-metastore jar (so the list follows the bundled Hive version)."""
    import xml.etree.ElementTree as ET

    import pyspark

    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hive-metastore-*.jar"))
    if not jars:
        raise MetastoreError("pyspark's jars folder has no hive-metastore jar; reinstall pyspark (`make setup`)")
    with zipfile.ZipFile(jars[-1]) as jar:
        root = ET.fromstring(jar.read(MODEL_METADATA))
    return [
        f"{package.get('name')}.{cls.get('name')}"
        for package in root.iter("package")
        for cls in package.iter("class")
    ]


def check_reachable(catalog: CatalogSettings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise MetastoreError unless catalog.url's host accepts a TCP connection (no JVM needed)."""
    host, port = address(catalog)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    raise MetastoreError(
        f"cannot reach the metastore database at {host}:{port} (catalog.url={catalog.url}): {reason}. "
        "Start the PostgreSQL server or fix catalog.url"
    )


def check_schema(jvm: Any, catalog: CatalogSettings, *, schema_required: bool = True) -> str | None:
    """Log in to catalog.url from the JVM and read the metastore's schema version.

    Args:
        jvm: py4j's view of a running JVM with the PostgreSQL driver (`spark_context._jvm`).
        catalog: the url, user and password.
        schema_required: raise if there is no schema yet (False: `init_metastore`, which makes it).

    Returns the version, or None when there is no schema and none is required. Raises
    MetastoreError, naming the fix, on a refused login, a missing database or schema, or a
    schema of another Hive version.
    """
    with _connection(jvm, catalog) as connection:
        version = _schema_version(connection, catalog)
    if version is None and schema_required:
        raise MetastoreError(
            f"the metastore database {catalog.url} has no Hive metastore schema yet; create it once with "
            "`lakescore metastore init` (same catalog settings), then run this again"
        )
    if version is not None and version != HIVE_SCHEMA_VERSION:
        raise MetastoreError(
            f"the metastore schema in {catalog.url} is version {version}, but Spark's bundled Hive client needs "
            f"{HIVE_SCHEMA_VERSION}; point catalog.url at a {HIVE_SCHEMA_VERSION} schema (or an empty database and run "
            "`lakescore metastore init`), or reach that metastore through its service (spark.hadoop.hive.metastore.uris)"
        )
    return version


def count_tables(jvm: Any, catalog: CatalogSettings) -> int:
    """Tables in the metastore database's current schema."""
    with _connection(jvm, catalog) as connection:
        result = connection.createStatement().executeQuery(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        result.next()
        return result.getInt(1)


class _connection:
    """A JDBC connection to catalog.url opened through py4j, closed on exit."""

    def __init__(self, jvm: Any, catalog: CatalogSettings):
        self.jvm, self.catalog = jvm, catalog

    def __enter__(self) -> Any:
        from py4j.protocol import Py4JJavaError

        props = self.jvm.java.util.Properties()
        props.setProperty("user", self.catalog.user)
        props.setProperty("password", self.catalog.password)
        props.setProperty("connectTimeout", str(CONNECT_TIMEOUT_S))
        props.setProperty("ApplicationName", "lakescore metastore check")
        try:
            # The driver's own connect(), not DriverManager's lookup, which refuses drivers of
            # another class loader than the caller's (py4j's, here).
            self.connection = self.jvm.org.postgresql.Driver().connect(self.catalog.url, props)
        except Py4JJavaError as exc:
            raise _login_error(exc, self.catalog) from None
        return self.connection

    def __exit__(self, *exc_info: object) -> None:
        self.connection.close()


def _sql_state(exc: Any) -> str:
    java = exc.java_exception
    try:
        return java.getSQLState() or ""
    except Exception:  # not an SQLException
        return ""


def _login_error(exc: Any, catalog: CatalogSettings) -> MetastoreError:
    state = _sql_state(exc)
    message = str(exc.java_exception.getMessage())
    if state in _BAD_LOGIN:
        return MetastoreError(
            f"the metastore database {catalog.url} refused the login of user {catalog.user!r} ({message}); "
            "set the right password in LAKESCORE_CATALOG_PASSWORD or catalog.password_file, or fix catalog.user"
        )
    if state == _NO_DATABASE:
        return MetastoreError(
            f"the PostgreSQL server of catalog.url has no such database ({message}); create it "
            f"(CREATE DATABASE ... OWNER {catalog.user}) and run `lakescore metastore init`, or fix catalog.url"
        )
    return MetastoreError(f"cannot connect to the metastore database {catalog.url}: {message} (SQLSTATE {state or 'none'})")


def _schema_version(connection: Any, catalog: CatalogSettings) -> str | None:
    """VERSION's schema version; None if the table is missing or empty."""
    from py4j.protocol import Py4JJavaError

    try:
        result = connection.createStatement().executeQuery('SELECT "SCHEMA_VERSION" FROM "VERSION"')
    except Py4JJavaError as exc:
        if _sql_state(exc) == _NO_TABLE:
            return None
        raise MetastoreError(
            f"cannot read the metastore schema's version in {catalog.url}: {exc.java_exception.getMessage()}"
        ) from None
    versions = []
    while result.next():
        versions.append(str(result.getString(1)))
    if len(versions) > 1:
        raise MetastoreError(f"the metastore schema in {catalog.url} records {len(versions)} versions {versions}; it must hold one")
    return versions[0] if versions else None


def init_metastore(settings: Any) -> SchemaReport:
    """Create the Hive metastore schema in catalog.url's database, or find it already there.

    Idempotent: an existing 2.3.0 schema is left as it is (DataNucleus only creates missing
    tables). Run it once before the first job, not while jobs start (module docstring).

    Returns the version read back from the VERSION table and the number of tables. Raises
    MetastoreError on an unreachable server, a refused login or a schema of another version.
    """
    from lakescore.spark import build_spark_session

    catalog = settings.catalog
    if not catalog.url:
        raise MetastoreError(
            "catalog.url is empty: the embedded Derby metastore needs no init (it creates itself under the lake "
            "root); set catalog.url=jdbc:postgresql://HOST:PORT/DATABASE to initialise a shared metastore"
        )
    spark = build_spark_session(settings, app_name="lakescore-metastore-init", create_metastore_schema=True)
    try:
        jvm = spark.sparkContext._jvm
        before = check_schema(jvm, catalog, schema_required=False)
        # The catalog's first use starts the metastore client, and with it DataNucleus's schema creation.
        spark.catalog.listDatabases()
        version = check_schema(jvm, catalog)
        tables = count_tables(jvm, catalog)
    finally:
        spark.stop()
    log.info("metastore schema %s in %s: %d tables", version, catalog.url, tables)
    return SchemaReport(url=catalog.url, version=version, tables=tables, created=before is None)


def start_context(conf: Any, catalog: CatalogSettings, *, schema_required: bool = True) -> Any:
    """Start (or take the running) SparkContext with `conf`, check catalog.url from its JVM
    (`check_schema`), then hand the metastore client the password: on the context's Hadoop
    configuration, which the session about to be built copies and the client reads on its first
    use of the catalog. A context started here is stopped again if the check fails.
    """
    from pyspark import SparkContext

    started_here = SparkContext._active_spark_context is None
    spark_context = SparkContext.getOrCreate(conf)
    try:
        check_schema(spark_context._jvm, catalog, schema_required=schema_required)
    except MetastoreError:
        if started_here:
            spark_context.stop()
        raise
    spark_context._jsc.hadoopConfiguration().set(PASSWORD_KEY, catalog.password)
    return spark_context
