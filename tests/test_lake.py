"""The embedded lake: Delta round trips, time travel, the persistent catalog, clear errors."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakescore import lake
from lakescore.spark import ARROW_NO_BYTE_LIMIT, default_spark_conf
from localclusters import clean_env


def test_the_session_has_delta_and_the_catalog_under_the_lake_root(spark, settings):
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf.get("spark.sql.catalogImplementation") == "hive"
    # Spark qualifies the path with file: once the metastore has started.
    assert conf.get("spark.sql.warehouse.dir").removeprefix("file:") == str(settings.lake.warehouse_dir)
    assert str(settings.lake.metastore_dir) in conf.get("spark.hadoop.javax.jdo.option.ConnectionURL")
    assert conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "1000"
    assert conf.get("spark.sql.parquet.columnarReaderBatchSize") == "1000"
    assert conf.get("spark.python.worker.reuse") == "true"
    assert conf.get("spark.master") == "local[2]"
    # Local mode: the JVM this process launched has the 4g heap, not Spark's 1g.
    assert conf.get("spark.driver.memory") == "4g"
    assert spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory() > 3.5 * 2**30
    # ... in G1 regions of 16 MiB (G1 picks 2 MiB for a 4g heap; see build_spark_session).
    jvm = spark.sparkContext._jvm
    hotspot = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean")
    )
    assert hotspot.getVMOption("G1HeapRegionSize").getValue() == str(16 * 2**20)


def test_a_pandas_udf_over_a_parquet_scan_gets_rows_from_generated_code_not_the_columnar_input_path(spark, tmp_path):
    """Spark 4.2's columnar UDF input reads Parquet batches back row by row without generated code
    (about a fifth slower); lakescore turns it off, so a ColumnarToRow sits below the UDF."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    path = str(tmp_path / "p")
    rows = [(1, 1.5, "a"), (2, None, None), (3, float("nan"), "c")]
    spark.createDataFrame(rows, "id INT, x DOUBLE, s STRING").coalesce(1).write.parquet(path)

    @pandas_udf("double")
    def plus_one(x: pd.Series) -> pd.Series:
        return x + 1

    def plan_and_rows():
        df = spark.read.parquet(path).select("id", "x", "s", plus_one("x").alias("y"))  # no projection needed
        return df._jdf.queryExecution().executedPlan().toString(), sorted(df.collect(), key=lambda r: r.id)

    key = "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled"
    assert spark.conf.get(key) == "false"
    plan, result = plan_and_rows()
    assert "ColumnarToRow" in plan and "ArrowEvalPython" in plan
    assert [(r.id, r.y) for r in result] == [(1, 2.5), (2, None), (3, None)]  # pandas' NaN comes back as null
    spark.conf.set(key, "true")
    try:
        columnar_plan, columnar_result = plan_and_rows()
    finally:
        spark.conf.set(key, "false")
    assert "ColumnarToRow" not in columnar_plan  # what the setting avoids, on this Spark
    assert [(r.id, r.s) for r in columnar_result] == [(r.id, r.s) for r in result]


def test_batches_to_a_pandas_udf_are_bounded_by_rows_not_measured_in_bytes(spark):
    """lakescore turns off Spark's byte limit on Arrow batches to Python (measuring every batch
    after each row costs the JVM about 8%): batches hold maxRecordsPerBatch rows (1,000 in the
    tests), whatever their width. A byte limit, when one is set, still cuts them."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")
    def batch_size(x: pd.Series) -> pd.Series:
        return pd.Series([len(x)] * len(x))

    df = spark.range(2500, numPartitions=1).select(F.col("id").cast("double").alias("x"))

    def sizes():
        return sorted(r.n for r in df.select(batch_size("x").alias("n")).distinct().collect())

    key = "spark.sql.execution.arrow.maxBytesPerBatch"
    assert int(spark.conf.get(key).removesuffix("b")) == ARROW_NO_BYTE_LIMIT
    assert sizes() == [500, 1000]  # 1,000 + 1,000 + 500 rows
    spark.conf.set(key, "4k")  # 4 KiB: about 500 doubles with their Arrow buffers
    try:
        limited = sizes()
    finally:
        spark.conf.set(key, str(ARROW_NO_BYTE_LIMIT))
    assert max(limited) < 1000


WORKER_INTERPRETER = textwrap.dedent("""
    import sys
    import pandas as pd
    from pyspark.sql.functions import pandas_udf
    from lakescore.config import load_settings
    from lakescore.spark import build_spark_session

    overrides = {"lake.root": sys.argv[1], "spark.jars_dir": sys.argv[2], "spark.master": "local[1]"}
    spark = build_spark_session(load_settings(overrides=overrides, environ={}))

    @pandas_udf("string")
    def interpreter(ids: pd.Series) -> pd.Series:
        import sys
        return pd.Series([sys.executable] * len(ids))

    print("WORKER", spark.range(3).repartition(2).select(interpreter("id")).distinct().collect())
""")


@pytest.mark.slow
def test_a_session_launched_from_python_runs_its_python_workers_with_that_interpreter(settings, tmp_path):
    """As cron runs `.venv/bin/lakescore score`: no $PYSPARK_PYTHON, and the `python3` that PATH
    finds first is not this environment's (here: one that fails, as a system Python without numpy
    does). pyspark alone would start the workers with it."""
    wrong = tmp_path / "bin"
    wrong.mkdir()
    for name in ("python3", "python"):
        (wrong / name).write_text("#!/bin/sh\necho \"the python3 on PATH ran: $*\" >&2\nexit 3\n")
        (wrong / name).chmod(0o755)
    path = [str(wrong), str(Path(shutil.which("java")).parent), "/usr/bin", "/bin"]
    done = subprocess.run(
        [sys.executable, "-c", WORKER_INTERPRETER, str(tmp_path / "lake"), str(settings.spark.jars_dir)],
        env=clean_env(PATH=":".join(path)), capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"WORKER [Row(interpreter(id)='{sys.executable}')]"


def test_extra_settings_override_the_defaults(settings):
    custom = settings.with_overrides({"spark.conf": "spark.sql.shuffle.partitions=64,spark.foo=bar"})
    conf = default_spark_conf(custom)
    assert conf["spark.sql.shuffle.partitions"] == "64"
    assert conf["spark.foo"] == "bar"


def test_a_delta_round_trip_keeps_every_version_for_time_travel(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.createDataFrame([(1, "a", None), (2, "b", float("nan"))], "id INT, name STRING, x DOUBLE").write.format(
        "delta"
    ).save(path)
    spark.createDataFrame([(3, "c", 1.5)], "id INT, name STRING, x DOUBLE").write.format("delta").mode("append").save(path)
    spark.sql(f"DELETE FROM delta.`{path}` WHERE id = 1")

    assert lake.delta_version(spark, path) == 2
    v0 = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert sorted(r.id for r in v0.collect()) == [1, 2]
    assert [r.x for r in v0.where("id = 1").collect()] == [None]
    assert v0.where(F.isnan("x")).count() == 1
    assert sorted(r.id for r in spark.read.format("delta").option("versionAsOf", 1).load(path).collect()) == [1, 2, 3]
    assert sorted(r.id for r in spark.read.format("delta").load(path).collect()) == [2, 3]


def test_unsorted_partition_writes_skip_the_sort_and_still_write_mixed_partitions_right(spark, tmp_path):
    key = lake.CONCURRENT_WRITERS
    before = spark.conf.get(key)
    assert before == "0"  # Spark's default: partitioned writes sort
    # One task meets two dates, interleaved, a null among them: the writer falls back to sorting.
    rows = [(i, "2026-11-02" if i % 2 else "2026-11-01", None if i == 3 else float(i)) for i in range(10)]
    df = spark.createDataFrame(rows, "id INT, d STRING, x DOUBLE").withColumn("d", F.col("d").cast("date")).coalesce(1)
    path = str(tmp_path / "t")
    with lake.unsorted_partition_writes(spark):
        assert spark.conf.get(key) == "1"
        df.write.format("delta").partitionBy("d").save(path)
    assert spark.conf.get(key) == before
    back = spark.read.format("delta").load(path)
    by_date = {str(r.d): sorted(r.ids) for r in back.groupBy("d").agg(F.collect_list("id").alias("ids")).collect()}
    assert by_date == {"2026-11-01": [0, 2, 4, 6, 8], "2026-11-02": [1, 3, 5, 7, 9]}
    assert [r.x for r in back.where("id = 3").collect()] == [None]
    # A launcher's own setting is kept, inside and after.
    spark.conf.set(key, "3")
    try:
        with lake.unsorted_partition_writes(spark):
            assert spark.conf.get(key) == "3"
        assert spark.conf.get(key) == "3"
    finally:
        spark.conf.set(key, before)
    # An error inside restores the setting too.
    with pytest.raises(RuntimeError, match="boom"):
        with lake.unsorted_partition_writes(spark):
            raise RuntimeError("boom")
    assert spark.conf.get(key) == before


def test_an_unknown_table_is_reported_with_the_tables_that_exist(spark, settings, transactions):
    with pytest.raises(lake.SourceError, match=r"lakescore.transactionz does not exist \(tables in lakescore: .*transactions"):
        lake.resolve_source(spark, settings, "transactionz")
    with pytest.raises(lake.SourceError, match="does not exist"):
        lake.resolve_source(spark, settings, "/no/such/path")


def test_a_catalog_name_resolves_to_its_delta_path_and_version(spark, settings, transactions):
    source = lake.resolve_source(spark, settings, "transactions")
    assert source.format == "delta"
    assert source.path == str(lake.table_path(settings, "transactions"))
    assert source.version == lake.delta_version(spark, source.path)
    assert lake.resolve_source(spark, settings, source.path).format == "delta"


def test_nanosecond_timestamps_written_by_pandas_read_as_timestamps_truncated_to_microseconds(spark, settings, tmp_path):
    import datetime as dt

    import pandas as pd

    path = tmp_path / "readings"
    path.mkdir()
    pd.DataFrame(
        {
            "reading_id": ["a", "b", None],
            "ts": pd.to_datetime(["2026-01-01 10:00:00.123456789", None, "1969-12-31 23:59:59.5"], format="ISO8601"),
            "ts_utc": pd.to_datetime(["2026-01-01 10:00:00", "2026-01-02 00:00:00.000001999", None], format="ISO8601").tz_localize("UTC"),
            "count": pd.array([1, None, 3], dtype="Int64"),  # a real bigint stays a bigint
        }
    ).to_parquet(path / "part-0.parquet")  # pandas' default: TIMESTAMP(NANOS)

    df = lake.read_source(spark, lake.resolve_source(spark, settings, str(path)))

    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("reading_id", "string"),
        ("ts", "timestamp_ntz"),
        ("ts_utc", "timestamp"),
        ("count", "bigint"),
    ]
    rows = [r.asDict() for r in df.collect()]
    assert [r["ts"] for r in rows] == [
        dt.datetime(2026, 1, 1, 10, 0, 0, 123456),
        None,
        dt.datetime(1969, 12, 31, 23, 59, 59, 500000),
    ]
    utc = [r["ts_utc"] for r in df.selectExpr("CAST(ts_utc AS STRING) AS ts_utc").collect()]
    assert utc == ["2026-01-01 10:00:00", "2026-01-02 00:00:00.000001", None]
    assert [r["count"] for r in rows] == [1, None, 3]
