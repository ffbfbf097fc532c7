"""One SQL statement against the lake's catalog, read-only unless asked otherwise."""

from __future__ import annotations

from pyspark.sql import SparkSession

from lakescore.config import Settings
from lakescore.lake import ensure_database
from lakescore.sql_policy import check_statement


def run_sql(
    spark: SparkSession, settings: Settings, query: str, limit: int = 1000, *, write: bool = False
) -> tuple[list[str], list]:
    """Run one statement with the lake's database as the current one; return (columns, rows).

    The statement is checked first (lakescore.sql_policy): a query, SHOW or DESCRIBE by default;
    with `write`, statements that change tables too. Raises StatementRefused before anything runs.
    """
    check_statement(spark, query, write=write)
    ensure_database(spark, settings)
    spark.catalog.setCurrentDatabase(settings.lake.database)
    df = spark.sql(query)
    return df.columns, df.limit(limit).collect()
