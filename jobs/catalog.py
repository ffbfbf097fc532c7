"""Check and repair the catalog's entries for the lake's tables: `lakescore catalog check|repair`.

    lakescore catalog check                  # table, location, status, Delta version, rows
    lakescore catalog repair                 # dry run: what would be re-pointed to lake.root
    lakescore catalog repair --apply         # re-point the catalog and the registry's bundle paths

Every other job refuses to start while the catalog and `lake.root` disagree (a lake copied,
restored, or mounted at another path; see lakescore/catalog.py and the README's "Moving or
restoring a lake"); these two commands are how to see and fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, print_rows, setup
from lakescore.catalog import describe_catalog, repair_catalog
from lakescore.spark import build_spark_session

catalog_app = typer.Typer(help="Check and repair the catalog's entries for the lake's tables.", no_args_is_help=True)


@catalog_app.command("check")
def check(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Print each of the lake's tables: catalog location, status against lake.root, Delta version, rows."""
    settings = setup(config, set_, None, verbose)
    spark = build_spark_session(settings, app_name="lakescore-catalog-check")
    try:
        reports = describe_catalog(spark, settings)
    finally:
        spark.stop()
    typer.echo(f"lake root: {settings.lake.root}")
    if not reports:
        typer.echo(f"the catalog has no tables of this lake in database {settings.lake.database}")
        return
    print_rows([r.__dict__ for r in reports], ["table", "format", "location", "status", "delta_version", "rows"])
    if any(r.status != "ok" for r in reports):
        raise typer.Exit(1)


@catalog_app.command("repair")
def repair(
    apply: bool = typer.Option(False, "--apply", help="Make the changes (default: only print them)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Re-point the lake's catalog entries and the registry's bundle paths to lake.root (dry run by default)."""
    settings = setup(config, set_, None, verbose)
    spark = build_spark_session(settings, app_name="lakescore-catalog-repair")
    try:
        repairs = repair_catalog(spark, settings, apply=apply)
    finally:
        spark.stop()
    typer.echo(f"lake root: {settings.lake.root}")
    if not repairs:
        typer.echo("the catalog and the lake root agree: nothing to repair")
        return
    print_rows([r.__dict__ for r in repairs], ["what", "before", "after", "action"])
    blocked = [r for r in repairs if not r.possible]
    if not apply:
        typer.echo("dry run: nothing changed; run again with --apply to make these changes")
    else:
        typer.echo(f"applied {len(repairs) - len(blocked)} change(s)")
    if blocked:
        typer.secho(f"{len(blocked)} change(s) cannot be made until the missing files are restored", err=True)
        raise typer.Exit(1)
