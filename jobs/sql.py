"""Run one SQL statement against the lake's catalog and print the result.

    lakescore sql "SELECT run_date, COUNT(*) FROM lakescore.flagged GROUP BY run_date"
    lakescore sql --write "DELETE FROM lakescore.feedback WHERE analyst = 'test'"

Read-only by default: one query, SHOW or DESCRIBE. `--write` allows statements that change
tables; ADD JAR, CREATE FUNCTION, reflect()/java_method() and reads by path are always refused
(see lakescore/sql_policy.py).

With the embedded Derby metastore this needs no server; on a cluster, use spark-sql or the
Thrift server against the shared metastore instead (see README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pyspark.errors import AnalysisException, ParseException

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, lake_session, print_rows, setup
from lakescore.sql_policy import StatementRefused
from pipelines.sql import run_sql


def sql(
    query: str = typer.Argument(..., help="One SQL statement; tables resolve in the lake's database."),
    limit: int = typer.Option(1000, help="Print at most this many rows."),
    write: bool = typer.Option(False, "--write", help="Allow a statement that changes tables (DROP, DELETE, INSERT, ...)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Query the lake's tables with Spark SQL (flagged, run_metrics, model_registry, feedback, ...)."""
    settings = setup(config, set_, None, verbose)
    spark = lake_session(settings, "lakescore-sql")
    if not verbose:
        spark.sparkContext.setLogLevel("ERROR")
    try:
        columns, rows = run_sql(spark, settings, query, limit, write=write)
    except StatementRefused as exc:
        fail(str(exc))
    except (AnalysisException, ParseException) as exc:
        fail(f"the query failed: {str(exc).strip().splitlines()[0]}")
    finally:
        spark.stop()
    print_rows(rows, columns)
