"""The nightly report of a published night, rendered on demand; prints the page's path.

    lakescore report --run-date 2026-11-27
    lakescore report --run-date 2026-11-27 --model transactions --table transactions --out /tmp/night.html

A nightly run writes the same page itself once it has published (report.enabled), to
`<lake.root>/reports/<source>/<model>/<run_date>.html`; this renders it again (after a failed
report, or with more nights: --set report.runs=60). What a page shows: pipelines/report.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, lake_session, setup


def report(
    run_date: str = typer.Option(..., "--run-date", help="The night, YYYY-MM-DD."),
    model: Optional[str] = typer.Option(None, help="The model's name (default: score.model)."),
    table: Optional[str] = typer.Option(None, help="The source as the run was given it, table or path (default: score.table)."),
    out: Optional[Path] = typer.Option(None, help="Write the page here instead of under <lake.root>/reports."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Render the HTML report of a published night (flags, scores, drift, reasons) and print its path."""
    from pipelines.report import ReportError, write_report  # matplotlib: only when a report is made

    settings = setup(config, set_, {"score.table": table, "score.model": model}, verbose)
    try:
        day = dt.date.fromisoformat(run_date)
    except ValueError:
        fail(f"--run-date {run_date!r} is not a date; give it as YYYY-MM-DD")
    spark = lake_session(settings, "lakescore-report")
    if not verbose:
        spark.sparkContext.setLogLevel("ERROR")
    try:
        path = write_report(spark, settings, run_date=day, out=out)
    except ReportError as exc:
        fail(str(exc))
    finally:
        spark.stop()
    typer.echo(str(path))
