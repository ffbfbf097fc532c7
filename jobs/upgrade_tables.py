"""Rewrite lakescore's own tables written by an older lakescore into today's layout, once.

    lakescore upgrade-tables            # prints what it would do, changes nothing
    lakescore upgrade-tables --apply    # each old table rewritten in one overwrite commit

What changes and why: pipelines/upgrade.py. The nightly run refuses to write to an old table and
names this command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, lake_session, setup
from pipelines.upgrade import upgrade_tables


def upgrade_tables_command(
    apply: bool = typer.Option(False, "--apply", help="Rewrite the tables (without it: only say what would change)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Bring lakescore.flagged and lakescore.run_metrics into the current layout (runs keyed by source, model and role)."""
    settings = setup(config, set_, None, verbose)
    spark = lake_session(settings, "lakescore-upgrade-tables")
    try:
        lines = upgrade_tables(spark, settings, apply=apply)
    finally:
        spark.stop()
    for line in lines or ["no lakescore tables to upgrade"]:
        typer.echo(line)
    if not apply and any(line.startswith("would ") for line in lines):
        typer.echo("run again with --apply to rewrite them")


def main() -> None:
    typer.run(upgrade_tables_command)


if __name__ == "__main__":
    main()
