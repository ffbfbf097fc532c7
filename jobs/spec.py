"""Feature specs: draft one from a lake table.

    lakescore spec suggest --table lakescore.transactions --sample-rows 5000 --out transactions.toml

prints (or writes) a commented TOML spec: keys, label, date and event-time columns and features
guessed from the table's schema and a sample of its rows, each guess with its reason. Read it,
edit it, then train with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup
from lakescore.lake import SourceError
from lakescore.spark import build_spark_session
from lakescore.specs import SpecError
from pipelines.spec import suggest_for_table

spec_app = typer.Typer(help="Feature specs: describe a source table's keys, label and features in TOML.",
                       no_args_is_help=True)


@spec_app.command("suggest")
def suggest(
    table: str = typer.Option(..., "--table", "-t", help="Catalog table (t or db.t) or a Delta/Parquet path."),
    sample_rows: int = typer.Option(5000, "--sample-rows", help="Rows sampled across the table for the statistics."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the spec here instead of printing it."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Draft a feature spec from a table's schema and a sample of its rows, as commented TOML."""
    settings = setup(config, set_, None, verbose)
    spark = build_spark_session(settings, app_name="lakescore-spec-suggest")
    if not verbose:
        spark.sparkContext.setLogLevel("ERROR")
    try:
        text = suggest_for_table(spark, settings, table, sample_rows)
    except (SourceError, SpecError, ValueError) as exc:
        fail(str(exc))
    finally:
        spark.stop()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}; read every guess, edit it, then train with it")


if __name__ == "__main__":
    spec_app()
