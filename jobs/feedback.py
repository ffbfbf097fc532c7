"""Record analyst verdicts on flagged records into the `feedback` Delta table.

    lakescore feedback --table transactions --key 1234567 --verdict confirmed_anomaly --analyst ana
    lakescore feedback --table transactions --file verdicts.csv      # columns: record_key, verdict[, analyst, comment]
    lakescore feedback --from-table reviews.verdicts_2026_11         # a table with those columns (+ source_table)

or in SQL (the latest verdict per record wins either way):

    INSERT INTO lakescore.feedback
    VALUES ('lakescore.transactions', '1234567', 'false_positive', 'ana', 'customer confirmed', current_timestamp());

A batch is checked first (keys present, verdicts known) and written in one MERGE commit, or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pyspark.sql import SparkSession

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.feedback import FeedbackError, normalise_verdicts, record_feedback
from lakescore.spark import build_spark_session


def run_feedback(
    spark: SparkSession,
    settings: Settings,
    *,
    table: str | None = None,
    key: str | None = None,
    verdict: str | None = None,
    analyst: str | None = None,
    comment: str | None = None,
    file: Path | None = None,
    from_table: str | None = None,
) -> int:
    """Read verdicts from exactly one of (key+verdict, file, from_table), check and upsert them."""
    given = [x for x in (key, file, from_table) if x is not None]
    if len(given) != 1:
        raise FeedbackError("give exactly one of --key (with --verdict), --file or --from-table")
    if key is not None:
        if verdict is None:
            raise FeedbackError(f"--key {key} needs --verdict ({' or '.join(S.VERDICTS)})")
        df = spark.createDataFrame(
            [(str(key), verdict, analyst, comment)], "record_key STRING, verdict STRING, analyst STRING, comment STRING"
        )
    elif file is not None:
        if not Path(file).exists():
            raise FeedbackError(f"verdict file {file} does not exist")
        reader = spark.read
        df = (
            reader.parquet(str(file))
            if str(file).endswith(".parquet")
            else reader.option("header", True).csv(str(file))
        )
    else:
        df = spark.table(from_table)
    return record_feedback(spark, settings, normalise_verdicts(df, settings, table))


def feedback(
    table: Optional[str] = typer.Option(None, help="Source table the verdicts are about (default: score.table)."),
    key: Optional[str] = typer.Option(None, help="Key of one record (transaction_id / record_id)."),
    verdict: Optional[str] = typer.Option(None, help="confirmed_anomaly or false_positive."),
    analyst: Optional[str] = typer.Option(None, help="Who decided."),
    comment: Optional[str] = typer.Option(None, help="Why."),
    file: Optional[Path] = typer.Option(None, help="CSV (with header) or Parquet file of verdicts."),
    from_table: Optional[str] = typer.Option(None, help="A catalog table of verdicts."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Record analyst verdicts (confirmed_anomaly / false_positive) for retraining."""
    settings = setup(config, set_, None, verbose)
    spark = build_spark_session(settings, app_name="lakescore-feedback")
    try:
        count = run_feedback(
            spark,
            settings,
            table=table or settings.score.table,
            key=key,
            verdict=verdict,
            analyst=analyst,
            comment=comment,
            file=file,
            from_table=from_table,
        )
    except FeedbackError as exc:
        fail(str(exc))
    finally:
        spark.stop()
    typer.echo(f"recorded {count} verdict(s) in {settings.table(S.FEEDBACK)}")
