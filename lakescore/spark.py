"""The Spark session factory.

`build_spark_session(settings)` is called in a job's `main()` or a test fixture, never at import.
Its settings are *defaults*: anything already set by `spark-submit --conf`, `spark-defaults.conf`
or `PYSPARK_SUBMIT_ARGS` wins, so the same code runs on the embedded default and on a cluster.

Embedded default:
- `local[*]`, Delta's SQL extension and catalog, the Delta jars from the project-local folder
  (resolved once by `make jars`; no network at run time);
- Hive support with an embedded Derby metastore and the warehouse at absolute paths under the
  lake root, so table names survive across sessions and processes. Derby admits ONE process at
  a time: two jobs on the same lake root must run one after the other (or set catalog.url to
  share a metastore on PostgreSQL, lakescore/metastore.py; or use a metastore service, see
  cluster_configs/);
- Python worker reuse and an explicit Arrow batch size (and Parquet reader batch) for the scoring UDF;
- in local mode, a 4g driver heap (the driver is the executor; Spark's default is 1g) in G1
  regions of 16 MiB;
- the driver JVM logging with lakescore/log4j2.properties: warnings only, without the ones every
  session prints (`spark.log_level`, set to INFO by a job's --verbose, brings Spark's INFO back).
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from lakescore import metastore
from lakescore.config import Settings

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
# The heap of a local-mode session this process launches (see build_spark_session).
LOCAL_DRIVER_MEMORY = "4g"
# G1's region size in that session's JVM (see build_spark_session).
LOCAL_G1_REGION_SIZE = "16m"
# The driver JVM's log4j2 configuration (see default_spark_conf).
LOG4J2_PROPERTIES = Path(__file__).resolve().with_name("log4j2.properties")


class MissingJarsError(RuntimeError):
    pass


def delta_jars(jars_dir: Path) -> list[str]:
    """The jar files `make jars` resolved into `jars_dir`, sorted; raise if there are none."""
    jars = sorted(str(p) for p in Path(jars_dir).glob("*.jar"))
    if not any(Path(j).name.startswith("delta-spark_") for j in jars):
        raise MissingJarsError(
            f"no delta-spark jar in {jars_dir}; run `make jars` once (it copies the Delta jars from "
            "Maven Central into that folder), or pass the jars yourself with spark-submit --jars / "
            "--packages, or set spark.jars_dir"
        )
    return jars


# spark.sql.execution.arrow.maxBytesPerBatch's largest value, at which Spark does not measure batches.
ARROW_NO_BYTE_LIMIT = 2**31 - 1


def default_spark_conf(settings: Settings, *, create_metastore_schema: bool = False) -> dict[str, str]:
    """The settings lakescore wants unless the launcher already set them.

    `create_metastore_schema`: with catalog.url set, the settings of `lakescore metastore init`
    (lakescore.metastore.metastore_conf).
    """
    lake = settings.lake
    spark = settings.spark
    conf = {
        "spark.app.name": spark.app_name,
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(lake.warehouse_dir),
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={lake.metastore_dir / 'metastore_db'};create=true"
        ),
        # The embedded metastore creates its schema on first use instead of needing schematool.
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        # Read at JVM launch only: derby.log lands under the lake root instead of the working
        # directory; the JVM logs with lakescore's log4j2 file (WARN, without the noise every
        # session prints; spark.log_level sets Spark's level).
        "spark.driver.extraJavaOptions": (
            f"-Dderby.system.home={lake.metastore_dir} -Dlog4j2.configurationFile={LOG4J2_PROPERTIES} "
            f"-Dlakescore.spark.logLevel={spark.log_level.lower()}"
        ),
        "spark.python.worker.reuse": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(spark.arrow_batch_size),
        # The Parquet reader's batch (default 4,096 rows) is what a Python UDF gets as one Arrow
        # batch when it is smaller than maxRecordsPerBatch: the same size for both, so the
        # scoring UDF's per-batch work is spread over the configured number of rows.
        "spark.sql.parquet.columnarReaderBatchSize": str(spark.arrow_batch_size),
        # Spark 4.2 lets a pandas/Arrow UDF take its input straight from the operator below when
        # that yields column batches (on by default). Only Arrow-backed batches pass through
        # as they are; Parquet's and Delta's are read back row by row without generated code,
        # slower than the row conversion Spark generates code for (see docs/measurements.md,
        # "Spark session and JVM").
        "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled": "false",
        # Batches to Python are bounded by maxRecordsPerBatch alone. With a byte limit (64 MiB
        # by default, far above a scoring batch), Spark sums the size of every Arrow vector after
        # each row it writes, to see whether the batch is full: a noticeable share of a UDF
        # task's CPU time (see docs/measurements.md, "Spark session and JVM"). Int.MaxValue is
        # the value at which Spark skips it.
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_NO_BYTE_LIMIT),
        # Timestamps lakescore writes (the generated source's event times, flagged's scored_at)
        # are Parquet INT64 microseconds, not Spark's default INT96, which Parquet deprecates:
        # Spark reads an INT96 value back through a ByteBuffer per row, slower than INT64
        # (see docs/measurements.md, "Spark session and JVM").
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        # Delta rebuilds a table's snapshot with this many tasks (default 50, which dominates
        # small tables on one machine); it follows shuffle_partitions unless set with --conf.
        "spark.databricks.delta.snapshotPartitions": str(spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # Parquet written by pandas or pyarrow holds nanosecond timestamps, which Spark refuses to
        # read unless it reads them as bigint nanoseconds (lake.read_source turns them back into
        # timestamps).
        "spark.sql.legacy.parquet.nanosAsLong": "true",
        # Tables stay readable by delta-rs and Ray Data, which cannot honour deletion vectors.
        "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if settings.catalog.url:  # a shared metastore on PostgreSQL instead of the embedded Derby
        conf.update(metastore.metastore_conf(settings.catalog, spark.jars_dir, create_schema=create_metastore_schema))
    conf.update(spark.conf)
    return conf


def _launcher_conf() -> SparkConf:
    """What the launcher already decided.

    Under spark-submit the JVM is running and its SparkConf holds --conf and spark-defaults.conf.
    Otherwise this process is about to launch the JVM, passing our settings as --conf *before*
    $PYSPARK_SUBMIT_ARGS (so those still win); the jars must be known at launch to reach the
    driver's class path, which is why nothing here may start the JVM early.
    """
    if SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ:
        SparkContext._ensure_initialized()
        return SparkConf()
    conf = SparkConf(loadDefaults=False)
    args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    flags = {"--master": "spark.master", "--jars": "spark.jars", "--packages": "spark.jars.packages"}
    for flag, value in zip(args, args[1:]):
        if flag == "--conf" and "=" in value:
            key, _, val = value.partition("=")
            conf.set(key, val)
        elif flag in flags:
            conf.set(flags[flag], value)
    return conf


def _python_workers_from_conf(conf: SparkConf) -> None:
    """Make the SparkContext about to start run its Python workers with `spark.pyspark.python`.

    pyspark's SparkContext takes the workers' interpreter from $PYSPARK_PYTHON alone, else runs
    `python3` from PATH; the conf is spark-submit's, which copies it into that variable when it
    launches the driver. A process that launches the JVM itself (the `lakescore` CLI called by
    its full path from cron, `python jobs/score_nightly.py`, a notebook) would otherwise score
    with whatever `python3` PATH finds: "No module named 'numpy'", or another environment's torch.
    An exported $PYSPARK_PYTHON is kept.
    """
    if SparkContext._active_spark_context is None and conf.contains("spark.pyspark.python"):
        os.environ.setdefault("PYSPARK_PYTHON", conf.get("spark.pyspark.python"))


def build_spark_session(
    settings: Settings, app_name: str | None = None, *, create_metastore_schema: bool = False
) -> SparkSession:
    """Build (or return the running) SparkSession with lakescore's defaults under the launcher's.

    Args:
        settings: loaded settings; `settings.spark.conf` adds or overrides defaults.
        app_name: shown in the Spark UI; defaults to settings.spark.app_name.
        create_metastore_schema: `lakescore metastore init` only (lakescore/metastore.py).

    Raises MetastoreError, before the session exists, when catalog.url names a shared metastore
    that is unreachable, refuses the login, or has no schema yet.

    Operational caveat: with the embedded Derby metastore only one process may hold a session on
    a lake root at a time; with a shared one (catalog.url) any number may.
    """
    if settings.catalog.url:
        metastore.check_reachable(settings.catalog)  # in a second, before a JVM starts
    launched = _launcher_conf()
    defaults = default_spark_conf(settings, create_metastore_schema=create_metastore_schema)
    if app_name:
        defaults["spark.app.name"] = app_name
    if settings.spark.master:
        launched.setMaster(settings.spark.master)
    elif not launched.contains("spark.master"):
        launched.setMaster("local[*]")
    master = launched.get("spark.master")
    if not launched.contains("spark.jars") and not launched.contains("spark.jars.packages"):
        defaults["spark.jars"] = ",".join(delta_jars(settings.spark.jars_dir))
    if master.startswith("local"):
        # Python workers on this machine must use this interpreter (the project's venv), else
        # pandas UDFs fail with "No module named pandas". On a cluster, set spark.pyspark.python.
        defaults["spark.pyspark.python"] = sys.executable
        # In local mode the driver is the executor, and Spark's 1g heap kept G1 collecting
        # through the scoring stage (see docs/measurements.md, "Spark session and JVM"). Read at
        # JVM launch only: under spark-submit, pass --driver-memory.
        defaults["spark.driver.memory"] = LOCAL_DRIVER_MEMORY
        # G1 cuts a 4g heap into 2 MiB regions and treats any object of 1 MiB or more as
        # humongous: it goes straight to the old generation, and each such allocation may start a
        # concurrent marking cycle. The scoring stage allocates such objects; with 16 MiB regions
        # they are ordinary ones (see docs/measurements.md, "Spark session and JVM"). Read at JVM
        # launch only.
        defaults["spark.driver.extraJavaOptions"] += f" -XX:G1HeapRegionSize={LOCAL_G1_REGION_SIZE}"
    for key, value in defaults.items():
        if not launched.contains(key):
            launched.set(key, value)
    _python_workers_from_conf(launched)
    settings.lake.metastore_dir.mkdir(parents=True, exist_ok=True)
    if settings.catalog.url:
        # The JVM starts here, without the password on its command line; the metastore client
        # reads it from the context's Hadoop configuration when the session first uses the catalog.
        metastore.start_context(launched, settings.catalog, schema_required=not create_metastore_schema)
    session = SparkSession.builder.config(conf=launched).enableHiveSupport().getOrCreate()
    keep_py4j_connections_open_in_forked_children()
    log.info("Spark %s on %s, lake root %s", session.version, master, settings.lake.root)
    return session


@functools.cache
def keep_py4j_connections_open_in_forked_children() -> None:
    """Stop a forked child process from shutting down this process's connections to the JVM.

    py4j (pinned-thread mode, PySpark's default) gives each Python thread its own socket to the
    JVM, and closes it with `socket.shutdown` when the thread's state is freed. A fork that runs
    Python code in the child (`subprocess.Popen(preexec_fn=...)`, as `ray.init` does for each Ray
    process it starts) frees, in the child, the state of every thread but the forking one: the
    child then shuts down those threads' sockets, which it shares with this process. The JVM ends
    the connection, and the thread's next call (py4j's garbage-collection thread, within a second)
    fails with "Connection reset by peer", which py4j logs as a traceback before it reconnects.

    Registered once per process: just before each fork, the connections idle in py4j's pool get
    one more reference, which the child keeps until it execs, so it never closes them; the parent
    drops it after the fork.
    """
    held: list[object] = []

    def hold() -> None:
        gateway = SparkContext._gateway
        if gateway is not None:
            held.extend(gateway._gateway_client.deque)

    os.register_at_fork(before=hold, after_in_parent=held.clear)
