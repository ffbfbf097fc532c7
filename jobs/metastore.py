"""Create the schema of a shared Hive metastore on PostgreSQL: `lakescore metastore init`.

    export LAKESCORE_CATALOG_PASSWORD=...        # or catalog.password_file; never a flag
    lakescore metastore init --set catalog.url=jdbc:postgresql://db.internal:5432/metastore --set catalog.user=hive

Run it once, before the first job uses catalog.url (jobs never create the schema themselves, so
that two of them cannot race to make it); again, it finds the schema and changes nothing. The
database must exist and belong to catalog.user. What it does: lakescore/metastore.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup
from lakescore.metastore import MetastoreError, init_metastore

metastore_app = typer.Typer(help="Set up a shared Hive metastore on PostgreSQL (catalog.url).", no_args_is_help=True)


@metastore_app.command("init")
def init(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Create the Hive 2.3 metastore schema in catalog.url's database (idempotent)."""
    settings = setup(config, set_, None, verbose)
    try:
        report = init_metastore(settings)
    except MetastoreError as exc:
        fail(str(exc))
    state = "created" if report.created else "already there, unchanged"
    typer.echo(f"metastore schema {report.version} in {report.url}: {state} ({report.tables} tables)")
