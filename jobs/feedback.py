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

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, lake_session, setup
from lakescore import schemas as S
from lakescore.feedback import FeedbackError
from pipelines.feedback import VerdictSource, run_feedback


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
    """Record analyst verdicts (confirmed_anomaly / false_positive) for retraining.

    \f
    Each parameter is one command-line option (typer reads them from this signature), hence more than seven.
    """
    settings = setup(config, set_, None, verbose)
    spark = lake_session(settings, "lakescore-feedback")
    try:
        verdicts = VerdictSource(key, verdict, analyst, comment, file, from_table)
        result = run_feedback(spark, settings, verdicts, table or settings.score.table)
    except FeedbackError as exc:
        fail(str(exc))
    finally:
        spark.stop()
    typer.echo(f"recorded {result.recorded} verdict(s) in {settings.table(S.FEEDBACK)}")
    if result.unknown:
        more = ", ..." if result.unknown > len(result.unknown_examples) else ""
        typer.echo(
            f"{result.unknown} of them name no flagged row of that table (a missed anomaly, or check the key): "
            f"{', '.join(result.unknown_examples)}{more}"
        )
