"""The catalog and the lake root must agree: checking and re-pointing the lake's catalog entries.

lakescore reads and writes its own tables by path, `<lake.root>/tables/<database>/<table>`
(lake.table_path), and registers each in the catalog for SQL. A lake copied or restored to
another folder brings its embedded metastore along, whose entries still name the OLD absolute
locations; so does a shared metastore when nodes mount the lake at another path. SQL through the
catalog would then read and write one lake while the jobs' writes by path go to the other.

So every job checks first (`check_catalog`): each of the lake's tables in the catalog must point
at its place under `lake.root`, and each model the registry lists must have its bundle under
`<lake.root>/models`. A mismatch stops the job before it reads or writes anything, naming the
table, both locations and the fix: `lakescore catalog repair` (dry run) and `--apply`, which
re-points the catalog entries and the registry's bundle paths to the current root.

The lake's tables are lakescore's own (flagged_all, run_metrics, model_registry, feedback) and any
table of the lake's database stored in lakescore's layout (`.../tables/<database>/<name>`, as
`lakescore generate` and `load-benchmarks` write them). Other tables a team registers in that
database (a source at its own location) are theirs, and left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import Settings

log = logging.getLogger(__name__)

# S.FLAGGED: the table a lake written before publishing kept its flagged rows in (now a view).
OWN_TABLES = (S.FLAGGED_ALL, S.FLAGGED, S.RUN_METRICS, S.MODEL_REGISTRY, S.FEEDBACK)

OK = "ok"
MISPLACED = "misplaced"  # the catalog names another location than this lake's
MISSING = "missing"  # the catalog entry's table is not at its place under this lake's root


class CatalogMismatch(RuntimeError):
    """The catalog and the lake root disagree; the message names the table, both places and the fix."""


@dataclass(frozen=True)
class CatalogEntry:
    """One of the lake's tables as the catalog records it, and where this lake keeps it."""

    table: str  # qualified: database.name
    format: str  # delta, parquet, ...
    location: str  # as the catalog records it (no file: prefix)
    expected: Path  # lake.table_path under the current root
    external: bool

    @property
    def status(self) -> str:
        if Path(self.location) != self.expected:
            return MISPLACED
        return OK if self.expected.exists() else MISSING


@dataclass(frozen=True)
class MovedBundle:
    """A registry row whose bundle path lies outside this lake's models folder."""

    model: str  # name@version
    path: str  # as the registry records it
    expected: Path  # the same bundle under this lake's models folder


def lake_entries(spark: SparkSession, settings: Settings) -> list[CatalogEntry]:
    """The catalog entries of the lake's tables (see the module docstring), views excluded."""
    database = settings.lake.database
    if not spark.catalog.databaseExists(database):
        return []
    entries = []
    for table in spark.catalog.listTables(database):
        if table.tableType == "VIEW" or table.isTemporary:
            continue
        qualified = f"{database}.{table.name}"
        rows = {r["col_name"]: r["data_type"] for r in spark.sql(f"DESCRIBE TABLE EXTENDED {qualified}").collect()}
        location = (rows.get("Location") or "").removeprefix("file:")
        expected = lake.table_path(settings, table.name)
        in_layout = Path(location).parts[-3:] == ("tables", database, table.name)
        if table.name in OWN_TABLES or in_layout:
            entries.append(
                CatalogEntry(
                    table=qualified,
                    format=(rows.get("Provider") or "").lower(),
                    location=location,
                    expected=expected,
                    external=table.tableType == "EXTERNAL",
                )
            )
    return entries


def moved_bundles(spark: SparkSession, settings: Settings) -> list[MovedBundle]:
    """Registry rows whose bundle is not under this lake's models folder (read by path, so it is
    this lake's registry whatever the catalog says)."""
    path = lake.table_path(settings, S.MODEL_REGISTRY)
    if not (path / "_delta_log").is_dir():
        return []
    models = settings.lake.models_dir
    rows = spark.read.format("delta").load(str(path)).select("name", "version", "path").collect()
    return [
        MovedBundle(f"{r['name']}@{r['version']}", r["path"], models / r["name"] / f"v{r['version']}")
        for r in rows
        if Path(r["path"]) != models / r["name"] / f"v{r['version']}"
    ]


def check_catalog(spark: SparkSession, settings: Settings) -> None:
    """Raise CatalogMismatch if any of the lake's catalog entries or registered bundles lies
    outside `lake.root`; call it before a job reads or writes anything."""
    misplaced = [e for e in lake_entries(spark, settings) if e.status == MISPLACED]
    bundles = moved_bundles(spark, settings)
    if not misplaced and not bundles:
        return
    root = settings.lake.root
    problems = [f"catalog table {e.table} is at {e.location}, but this lake keeps it at {e.expected}" for e in misplaced]
    problems += [f"registry model {b.model} has its bundle at {b.path}, not at {b.expected}" for b in bundles]
    raise CatalogMismatch(
        f"the catalog and the lake root {root} disagree: {'; '.join(problems)}. The lake was moved or "
        "restored, or this machine mounts it at another path: reading or writing now would split the "
        "job across two lakes. Run `lakescore catalog repair` to see the changes and "
        "`lakescore catalog repair --apply` to re-point them to this root (or set lake.root / "
        "LAKESCORE_LAKE_ROOT to the lake the catalog names). Nothing was read or written."
    )


@dataclass(frozen=True)
class Repair:
    """One change `repair_catalog` makes."""

    what: str  # the table or model
    before: str
    after: str
    action: str  # re-register, update bundle path, or why it cannot be repaired
    possible: bool


def plan_repair(spark: SparkSession, settings: Settings) -> list[Repair]:
    """What `repair_catalog(apply=True)` would change (nothing is changed)."""
    repairs = []
    for e in lake_entries(spark, settings):
        if e.status != MISPLACED:
            continue
        if not e.external:
            repairs.append(Repair(e.table, e.location, str(e.expected), "managed by the catalog: copy it by hand", False))
        elif not e.expected.exists():
            repairs.append(Repair(e.table, e.location, str(e.expected), f"nothing at {e.expected}: restore the table there first", False))
        else:
            repairs.append(Repair(e.table, e.location, str(e.expected), f"re-register at this root ({e.format})", True))
    for b in moved_bundles(spark, settings):
        if (b.expected / "manifest.json").is_file():
            repairs.append(Repair(b.model, b.path, str(b.expected), "update the registry's bundle path", True))
        else:
            repairs.append(Repair(b.model, b.path, str(b.expected), f"no bundle at {b.expected}: restore it there first", False))
    return repairs


def repair_catalog(spark: SparkSession, settings: Settings, *, apply: bool = False) -> list[Repair]:
    """Re-point the lake's catalog entries and the registry's bundle paths to `lake.root`.

    A dry run unless `apply`. Only repairs that are possible run: each catalog entry is dropped
    and registered again at its place under this root (the entries are external: dropping one
    removes no file), then the registry's bundle paths are updated in ONE Delta commit. Returns
    the repairs planned (applied, with `apply`).
    """
    repairs = plan_repair(spark, settings)
    if not apply:
        return repairs
    formats = {e.table: e.format for e in lake_entries(spark, settings)}
    for r in repairs:
        if r.possible and r.what in formats:
            log.info("re-registering %s at %s (was %s)", r.what, r.after, r.before)
            spark.sql(f"DROP TABLE {r.what}")
            lake.register_table(spark, settings, r.what.split(".", 1)[1], Path(r.after), formats[r.what])
    moved = {r.before: r.after for r in repairs if r.possible and r.what not in formats}
    if moved:
        from delta.tables import DeltaTable

        path = F.col("path")
        new_path = F.coalesce(*[F.when(path == F.lit(old), F.lit(new)) for old, new in moved.items()], path)
        DeltaTable.forPath(spark, str(lake.table_path(settings, S.MODEL_REGISTRY))).update(
            condition=path.isin(list(moved)), set={"path": new_path, "updated_at": F.current_timestamp()}
        )
    return repairs


@dataclass(frozen=True)
class TableReport:
    """A line of `lakescore catalog check`."""

    table: str
    format: str
    location: str
    status: str
    delta_version: int | None
    rows: int | None


def describe_catalog(spark: SparkSession, settings: Settings) -> list[TableReport]:
    """Each of the lake's tables: where the catalog says it is, whether that agrees with the root,
    its Delta version and row count (read at its place under this root; None where it is not)."""
    reports = []
    for e in lake_entries(spark, settings):
        version = rows = None
        if e.expected.exists():
            if e.format == "delta":
                version = lake.delta_version(spark, str(e.expected))
                rows = spark.read.format("delta").load(str(e.expected)).count()
            else:
                rows = spark.read.format(e.format or "parquet").load(str(e.expected)).count()
        reports.append(TableReport(e.table, e.format, e.location, e.status, version, rows))
    return reports
