"""One SQL statement against the lake's catalog."""

from __future__ import annotations

from pyspark.sql import SparkSession

from lakescore.config import Settings
from lakescore.lake import ensure_database


def run_sql(spark: SparkSession, settings: Settings, query: str, limit: int = 1000) -> tuple[list[str], list]:
    """Run `query` with the lake's database as the current one; return (columns, rows)."""
    ensure_database(spark, settings)
    spark.catalog.setCurrentDatabase(settings.lake.database)
    df = spark.sql(query)
    return df.columns, df.limit(limit).collect()
