"""Generate synthetic card transactions with labelled anomalies into the lake.

    spark-submit --jars "$(ls .jars/*.jar | paste -sd,)" jobs/generate_transactions.py --days 7

or `lakescore generate --days 7`. Writes a Delta table (or Parquet with --format parquet)
partitioned by `event_date`, registered as `lakescore.transactions`. Re-running replaces exactly
the dates it generates, in one commit; other dates stay.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, lake_session, print_rows, setup
from lakescore import lake
from lakescore import schemas as S
from pipelines.generate import run_generate


def generate(
    days: Optional[int] = typer.Option(None, help="Number of days (default: generate.days)."),
    rows_per_day: Optional[int] = typer.Option(None, help="Base rows per day (default: generate.rows_per_day)."),
    accounts: Optional[int] = typer.Option(None, help="Distinct accounts."),
    anomaly_rate: Optional[float] = typer.Option(None, help="Fraction of anomalous rows (default 0.005)."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same rows."),
    start_date: Optional[str] = typer.Option(None, help="First event_date, YYYY-MM-DD."),
    table: Optional[str] = typer.Option(None, help="Catalog table name (default: transactions)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="delta (default) or parquet."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Generate synthetic transactions (Spark-native, deterministic) into a date-partitioned table.

    \f
    Each parameter is one command-line option (typer reads them from this signature), hence more than seven.
    """
    settings = setup(
        config,
        set_,
        {
            "generate.days": days,
            "generate.rows_per_day": rows_per_day,
            "generate.accounts": accounts,
            "generate.anomaly_rate": anomaly_rate,
            "generate.seed": seed,
            "generate.start_date": start_date,
            "generate.table": table,
            "generate.format": fmt,
        },
        verbose,
    )
    spark = lake_session(settings, "lakescore-generate")
    try:
        started = time.perf_counter()
        summary = run_generate(spark, settings)
        elapsed = time.perf_counter() - started
        total = sum(r["rows"] for r in summary)
        g = settings.generate
        typer.echo(
            f"{settings.table(g.table)} ({g.format}) at {lake.table_path(settings, g.table)}: "
            f"{total:,} rows in {elapsed:.1f}s ({total / elapsed:,.0f} rows/s)"
        )
        print_rows(summary, [S.EVENT_DATE, "rows", "anomalies", "anomaly_pct"])
    finally:
        spark.stop()


def main() -> None:
    typer.run(generate)


if __name__ == "__main__":
    main()
