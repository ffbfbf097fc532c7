"""List registered models and move the champion: `lakescore models`, `lakescore promote name@version`.

Promotion (and rollback: promoting an older version) is one Delta commit on model_registry;
the nightly job scores with the current champion unless given `--model name@version`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, lake_session, print_rows, setup
from lakescore.registry import RegistryError, list_models, promote

_SHOWN_METRICS = ("test_aucpr", "test_aucroc", "test_precision", "test_recall", "holdout_aucpr")


def models(
    name: Optional[str] = typer.Argument(None, help="Only this model name."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """List model versions with their stage and headline metrics."""
    settings = setup(config, set_, None, verbose)
    spark = lake_session(settings, "lakescore-models")
    try:
        rows = list_models(spark, settings, name)
    except (RegistryError, ValueError) as exc:
        fail(str(exc))
    finally:
        spark.stop()
    table = []
    for r in rows:
        metrics = r["metrics"] or {}
        entry = {"model": f"{r['name']}@{r['version']}", "stage": r["stage"], "kind": r["kind"]}
        for m in _SHOWN_METRICS:
            entry[m] = metrics.get(m)
        entry["created_at"] = r["created_at"]
        entry["note"] = r["note"]
        table.append(entry)
    if not table:
        typer.echo("no models registered yet; train one with `lakescore train`")
        return
    print_rows(table, list(table[0].keys()))


def promote_command(
    ref: str = typer.Argument(..., help="name@version to make champion (rollback: an older version)."),
    note: Optional[str] = typer.Option(None, help="Why (kept in the registry)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Make name@version the champion in one commit; the previous champion is archived."""
    settings = setup(config, set_, None, verbose)
    spark = lake_session(settings, "lakescore-promote")
    try:
        entry = promote(spark, settings, ref, note=note or "promoted by hand")
    except (RegistryError, ValueError) as exc:
        fail(str(exc))
    finally:
        spark.stop()
    typer.echo(f"{entry.label} is now the champion of {entry.name}")
