"""Synthetic card transactions with labelled anomalies, written into the lake and registered."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.synthetic import arrow_schema as synthetic_schema
from lakescore.synthetic import build_transactions, write_transaction_files


def run_generate(spark: SparkSession, settings: Settings) -> list:
    """Build, write and register the transactions of `settings.generate`; return per-day counts
    read back through the catalog with SQL."""
    g = settings.generate
    path = lake.table_path(settings, g.table)
    last = g.start_date + dt.timedelta(days=g.days - 1)
    shape = dict(
        days=g.days,
        rows_per_day=g.rows_per_day,
        accounts=g.accounts,
        anomaly_rate=g.anomaly_rate,
        seed=g.seed,
        start_date=g.start_date,
        rows_per_task=g.rows_per_task,
        min_buckets=g.files_per_day,
    )
    if g.format == S.DELTA and g.writer == "arrow":
        # Each task writes its Parquet file itself; one Delta commit replaces the dates at once.
        files = write_transaction_files(spark, str(path), **shape)
        dates = [(g.start_date + dt.timedelta(days=i)).isoformat() for i in range(g.days)]
        lake.commit_written_files(path, [f.asDict() for f in files], synthetic_schema(), S.EVENT_DATE, dates, "generate")
    else:
        # Each task generates one day of one bucket of accounts, ordered by account and time, and
        # Spark writes it as one file: no shuffle, and no sort by the date it already shares.
        with lake.unsorted_partition_writes(spark):
            lake.write_date_partitions(
                build_transactions(spark, **shape), path, g.format, S.EVENT_DATE, g.start_date, last
            )
    lake.register_table(spark, settings, g.table, path, g.format)
    return spark.sql(
        f"""
        SELECT {S.EVENT_DATE}, COUNT(*) AS rows, SUM(CAST({S.IS_ANOMALY} AS INT)) AS anomalies,
               ROUND(AVG(CAST({S.IS_ANOMALY} AS INT)) * 100, 3) AS anomaly_pct
        FROM {settings.table(g.table)}
        WHERE {S.EVENT_DATE} BETWEEN DATE'{g.start_date}' AND DATE'{last}'
        GROUP BY {S.EVENT_DATE} ORDER BY {S.EVENT_DATE}
        """
    ).collect()
