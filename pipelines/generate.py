"""Synthetic card transactions with labelled anomalies, written into the lake and registered."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.synthetic import build_transactions


def run_generate(spark: SparkSession, settings: Settings) -> list:
    """Build, write and register the transactions of `settings.generate`; return per-day counts
    read back through the catalog with SQL."""
    g = settings.generate
    df = build_transactions(
        spark,
        days=g.days,
        rows_per_day=g.rows_per_day,
        accounts=g.accounts,
        anomaly_rate=g.anomaly_rate,
        seed=g.seed,
        start_date=g.start_date,
    )
    # One shuffle lays the rows out by day (files_per_day files each), sorted for locality.
    df = (
        df.repartition(g.days * g.files_per_day, S.EVENT_DATE, F.pmod(F.col(S.TRANSACTION_ID), F.lit(g.files_per_day)))
        .sortWithinPartitions(S.EVENT_DATE, S.ACCOUNT_ID, S.EVENT_TS)
    )
    path = lake.table_path(settings, g.table)
    last = g.start_date + dt.timedelta(days=g.days - 1)
    lake.write_date_partitions(df, path, g.format, S.EVENT_DATE, g.start_date, last)
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
