"""Generator throughput: synthetic transactions to Delta against a plain Spark write of the same size.

    python -m benchmarks.generate --rows 10000000

Baseline: `spark.range(N)` with the same number of columns of hash-derived values written to
Delta, partitioned by day: the floor for writing that many rows, without the per-account
behaviour, anomalies and the window functions (a shuffle by account) the generator adds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time

from pyspark.sql import functions as F

from benchmarks.library import run_generate
from lakescore import schemas as S
from lakescore.config import load_settings
from lakescore.spark import build_spark_session


def main(argv: list[str] | None = None) -> list[tuple[str, int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="lakescore-bench-generate-")
    rows_per_day = args.rows // args.days
    settings = load_settings(
        overrides={
            "lake.root": root,
            "generate.days": args.days,
            "generate.rows_per_day": rows_per_day,
            "generate.accounts": max(1000, rows_per_day // 4),
            # A shuffle partition per ~0.5 M rows keeps each task's window sort in memory.
            "spark.shuffle_partitions": max(4, args.rows // 500_000),
        }
    )
    spark = build_spark_session(settings, app_name="lakescore-bench-generate")
    spark.sparkContext.setLogLevel("ERROR")
    results = []
    try:
        started = time.perf_counter()
        summary = run_generate(spark, settings)
        elapsed = time.perf_counter() - started
        written = sum(r["rows"] for r in summary)
        results.append(("generator (transactions_v1, Delta)", written, elapsed))

        columns = len(S.TRANSACTIONS_SCHEMA.fields)
        started = time.perf_counter()
        baseline = spark.range(0, args.rows).select(
            *[F.xxhash64(F.lit(i), "id").alias(f"c{i}") for i in range(columns - 1)],
            F.date_add(F.lit(dt.date(2026, 1, 1)), (F.col("id") / rows_per_day).cast("int")).alias("day"),
        )
        baseline.write.format("delta").partitionBy("day").save(f"{root}/baseline")
        results.append((f"baseline: spark.range + {columns} hashed columns", args.rows, time.perf_counter() - started))
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nGenerator throughput ({args.rows:,} rows requested, Spark {settings.spark.master or 'local[*]'})")
    print(f"{'what':48} {'rows':>12} {'seconds':>9} {'rows/s':>12}")
    for name, rows, seconds in results:
        print(f"{name:48} {rows:>12,} {seconds:>9.1f} {rows / seconds:>12,.0f}")
    return results


if __name__ == "__main__":
    main()
