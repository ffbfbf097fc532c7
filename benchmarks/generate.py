"""Generator throughput: synthetic transactions to Delta against a plain Spark write of the same size.

    python -m benchmarks.generate --rows 10000000

Baseline: `spark.range(N)` with the same columns (names, types, a few values for the string
columns, nulls where the generator has them) of hash-derived values, written to Delta partitioned
by day in the same number of tasks: the floor for writing that many rows with Spark, without the
per-account behaviour, anomalies and history the generator adds in its Python tasks. The ratio
of the two is the generator's cost above that floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time

from pyspark.sql import functions as F

from benchmarks.library import run_generate
from lakescore import lake
from lakescore import schemas as S
from lakescore.config import load_settings
from lakescore.spark import build_spark_session
from lakescore.synthetic import buckets_per_day


GENERATOR = "lakescore generate (transactions, Delta)"
BASELINE = "baseline: spark.range, the same columns"


def main(argv: list[str] | None = None) -> list[tuple[str, int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2, help="alternated runs of each; the median is reported")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="lakescore-bench-generate-")
    rows_per_day = args.rows // args.days
    accounts = max(1000, rows_per_day // 4)
    settings = load_settings(
        overrides={
            "lake.root": root,
            "generate.days": args.days,
            "generate.rows_per_day": rows_per_day,
            "generate.accounts": accounts,
        }
    )
    spark = build_spark_session(settings, app_name="lakescore-bench-generate")
    spark.sparkContext.setLogLevel("ERROR")
    tasks = args.days * buckets_per_day(rows_per_day, accounts, settings.generate.rows_per_task)
    timings: dict[str, list[float]] = {GENERATOR: [], BASELINE: []}
    written = 0
    try:
        # Warm-up: the first job of a session pays for the JVM's compiler and the Python workers.
        warm = settings.with_overrides({"generate.days": 1, "generate.rows_per_day": 100_000, "generate.table": "warm_up"})
        run_generate(spark, warm)
        # Alternated, so a change in the machine's load hits both.
        for _ in range(args.repeat):
            started = time.perf_counter()
            summary = run_generate(spark, settings)
            timings[GENERATOR].append(time.perf_counter() - started)
            written = sum(r["rows"] for r in summary)
            started = time.perf_counter()
            with lake.unsorted_partition_writes(spark):
                baseline_rows(spark, args.rows, rows_per_day, tasks).write.format("delta").mode("overwrite").partitionBy(
                    S.EVENT_DATE
                ).save(f"{root}/baseline")
            timings[BASELINE].append(time.perf_counter() - started)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)
    results = [
        (GENERATOR, written, statistics.median(timings[GENERATOR])),
        (BASELINE, args.rows, statistics.median(timings[BASELINE])),
    ]
    print(
        f"\nGenerator throughput ({args.rows:,} rows requested in {tasks} tasks, Spark {settings.spark.master or 'local[*]'}, "
        f"median of {args.repeat} alternated runs)"
    )
    print(f"{'what':48} {'rows':>12} {'seconds':>9} {'rows/s':>12}")
    for name, rows, seconds in results:
        print(f"{name:48} {rows:>12,} {seconds:>9.1f} {rows / seconds:>12,.0f}")
    (_, rows, seconds), (_, floor_rows, floor_seconds) = results
    print(f"generator / baseline rows/s: {(rows / seconds) / (floor_rows / floor_seconds):.2f}")
    return results


def baseline_rows(spark, rows: int, rows_per_day: int, tasks: int):
    """`rows` rows of TRANSACTIONS_SCHEMA's columns from hashes of `spark.range`, in `tasks` tasks."""
    def h(i: int):
        return F.xxhash64(F.lit(i), F.col("id"))

    columns = []
    for i, field in enumerate(S.TRANSACTIONS_SCHEMA.fields):
        kind = field.dataType.simpleString()
        if field.name == S.EVENT_DATE:
            value = F.date_add(F.lit(dt.date(2026, 1, 1)), (F.col("id") / rows_per_day).cast("int"))
        elif kind == "bigint":
            value = h(i)
        elif kind == "int":
            value = F.pmod(h(i), F.lit(24)).cast("int")
        elif kind == "double":
            value = F.round(F.pmod(h(i), F.lit(1_000_000)) / 100.0, 2)
        elif kind == "boolean":
            value = F.pmod(h(i), F.lit(2)) == 0
        elif kind == "timestamp":
            value = F.timestamp_seconds(F.lit(1_767_225_600) + F.pmod(h(i), F.lit(86_400)))
        else:  # the string columns: a dozen values
            value = F.element_at(F.array(*[F.lit(f"value{v}") for v in range(12)]), F.pmod(h(i), F.lit(12)).cast("int") + 1)
        if field.nullable and kind in ("double", "string"):
            value = F.when(F.pmod(h(100 + i), F.lit(10)) == 0, F.lit(None)).otherwise(value)
        columns.append(value.alias(field.name))
    return spark.range(0, rows, numPartitions=tasks).select(*columns)


if __name__ == "__main__":
    main()
