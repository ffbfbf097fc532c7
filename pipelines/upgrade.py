"""Tables written by an older lakescore, detected and rewritten into today's layout.

Before runs were keyed by slice, `flagged` was partitioned by run_date only and had one column
per copied source column (widening with every new source), and `run_metrics` had neither
`source_table` nor `scoring_role`. Mixing such a table with slices would silently break the
guarantee that a run replaces only its own slice, so the nightly run refuses to write to one
(`check_table_layouts`), and `lakescore upgrade-tables` rewrites it (`upgrade_tables`):

    flagged       the copied columns go into `record` (their text, see udfs.flagged.record_text;
                  a null value is left out, since the old table cannot say which columns were a
                  source's), `record_key` from the record key column (or every key column),
                  `scoring_role` = primary; one typed view per source from the columns it filled
    run_metrics   `source_table` from each run's `source` scope row, `scoring_role` = primary,
                  and `run_complete` for a run from before that row existed (its metrics are
                  all there: an older lakescore wrote them in one commit)

and `flagged` is registered as `flagged_all` under the view `flagged` of published runs
(lakescore.lake.register_flagged).

each in ONE overwrite commit (overwriteSchema): readers see the old table or the new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import Settings

log = logging.getLogger(__name__)

_EXPECTED = {S.FLAGGED: S.FLAGGED_SCHEMA, S.RUN_METRICS: S.RUN_METRICS_SCHEMA}
UPGRADE_COMMAND = "lakescore upgrade-tables"


class TableLayoutError(ValueError):
    """A lakescore table is in an older layout; the message names the upgrade command."""


@dataclass(frozen=True)
class TableLayout:
    """What a lakescore table at `path` looks like now."""

    table: str  # S.FLAGGED or S.RUN_METRICS
    path: Path
    columns: tuple[str, ...]
    partition_columns: tuple[str, ...]

    @property
    def current(self) -> bool:
        return self.partition_columns == S.SLICE_COLUMNS and set(_EXPECTED[self.table].names) <= set(self.columns)


def read_layouts(spark: SparkSession, settings: Settings) -> list[TableLayout]:
    """The layouts of `flagged` and `run_metrics` where they exist (no Spark job: the Delta log only)."""
    from delta.tables import DeltaTable

    layouts = []
    for table in _EXPECTED:
        path = lake.table_path(settings, table)
        if not (path / "_delta_log").is_dir():
            continue
        detail = DeltaTable.forPath(spark, str(path)).detail().collect()[0]
        columns = tuple(spark.read.format("delta").load(str(path)).columns)
        layouts.append(TableLayout(table, path, columns, tuple(detail["partitionColumns"])))
    return layouts


def check_table_layouts(spark: SparkSession, settings: Settings) -> None:
    """Raise TableLayoutError if `flagged` or `run_metrics` was written by an older lakescore."""
    old = [layout for layout in read_layouts(spark, settings) if not layout.current]
    if old:
        names = ", ".join(f"{settings.table(o.table)} ({o.path})" for o in old)
        raise TableLayoutError(
            f"{names} {'is' if len(old) == 1 else 'are'} in the layout of an older lakescore (one run per date, "
            f"not one slice per source, model and role); nothing was written. Run `{UPGRADE_COMMAND}` to see "
            f"what it changes, then `{UPGRADE_COMMAND} --apply` to rewrite them once, and score again"
        )


def upgrade_tables(spark: SparkSession, settings: Settings, *, apply: bool = False) -> list[str]:
    """Rewrite every old-layout lakescore table into today's layout (each in one overwrite
    commit) when `apply`; return what was done, or with `apply` False what would be done."""
    done, views = [], {}
    layouts = read_layouts(spark, settings)
    for layout in layouts:
        name = settings.table(layout.table)
        if layout.current:
            done.append(f"{name}: already in the current layout, left as it is")
            continue
        old = spark.read.format("delta").load(str(layout.path))
        if layout.table == S.FLAGGED:
            new, source_views = upgraded_flagged(old), _source_views(old, settings)
            views.update(source_views)
            what = (
                f"{name}: rewrite {old.count()} rows into record_key + record (columns "
                f"{', '.join(_copied_columns(old)) or 'none'}), scoring_role=primary, partitioned by "
                f"{', '.join(S.SLICE_COLUMNS)} (was {', '.join(layout.partition_columns) or 'unpartitioned'}), "
                f"registered as {settings.table(S.FLAGGED_ALL)} under the view {name} of published runs; "
                f"typed views: {', '.join(sorted(source_views)) or 'none'}"
            )
        else:
            new = upgraded_run_metrics(old)
            what = (
                f"{name}: rewrite {old.count()} rows with source_table (from each run's source row) and "
                f"scoring_role=primary, partitioned by {', '.join(S.SLICE_COLUMNS)}"
            )
        if apply:
            _overwrite(new, layout.path)
            log.info("upgraded %s", name)
        done.append(what if apply else f"would {what}")
    if apply:
        present = {layout.table for layout in layouts}
        if {S.FLAGGED, S.RUN_METRICS} <= present:
            lake.register_flagged(spark, settings)  # the typed views read the view `flagged`
            for sql in views.values():
                spark.sql(sql)
        elif S.RUN_METRICS in present:
            lake.register_table(spark, settings, S.RUN_METRICS, lake.table_path(settings, S.RUN_METRICS), "delta")
    return done


def _copied_columns(old: DataFrame) -> list[str]:
    common = set(S.FLAGGED_SCHEMA.names) | {S.IS_FLAGGED}
    return [c for c in old.columns if c not in common]


def upgraded_flagged(old: DataFrame) -> DataFrame:
    """An old wide `flagged` as today's `S.FLAGGED_SCHEMA` rows (see the module docstring)."""
    from lakescore.feedback_keys import RECORD_KEY_COLUMNS
    from udfs.flagged import KEY_CANDIDATES, record_text

    copied = _copied_columns(old)
    types = {f.name: f.dataType for f in old.schema.fields}
    text = {c: record_text(F.col(c), types[c]) for c in copied}
    # Sources sit side by side in an old table: each row's key is the first record key column it
    # filled, else its key columns as a JSON object (as udfs.flagged.flagged_records writes them).
    singles = [text[c] for c in RECORD_KEY_COLUMNS if c in copied]
    keys = [c for c in KEY_CANDIDATES if c in copied]
    composite = F.to_json(F.struct(*[text[c].alias(c) for c in keys])) if keys else None
    candidates = singles + ([composite] if composite is not None else [])
    record_key = F.coalesce(*candidates) if candidates else F.lit(None).cast("string")
    record = F.map_filter(
        F.create_map(*[x for c in copied for x in (F.lit(c), text[c])]) if copied else F.create_map(),
        lambda _, v: v.isNotNull(),
    )
    derived = {S.RECORD_KEY: record_key, S.RECORD: record, S.SCORING_ROLE: F.lit(S.PRIMARY)}
    return old.select(
        *[derived[f.name].cast(f.dataType).alias(f.name) if f.name in derived else F.col(f.name) for f in S.FLAGGED_SCHEMA]
    )


def _source_views(old: DataFrame, settings: Settings) -> dict[str, str]:
    """{view: its CREATE VIEW sql} for each source in an old `flagged`, over the copied columns
    that source filled (at least one non-null value)."""
    from udfs.flagged import KEY_CANDIDATES, OutputColumns, flagged_view_sql, source_view_name

    copied = _copied_columns(old)
    if not copied:
        return {}
    filled = old.groupBy(S.SOURCE_TABLE).agg(*[F.max(F.col(c).isNotNull()).alias(c) for c in copied]).collect()
    views = {}
    for row in filled:
        columns = [c for c in copied if row[c]]
        output = OutputColumns(
            keys=tuple(c for c in KEY_CANDIDATES if c in columns),
            allowed=tuple(c for c in columns if c not in KEY_CANDIDATES),
            hashed=(),
            salt="",
        )
        source = row[S.SOURCE_TABLE]
        view = settings.table(source_view_name(source))
        views[view] = flagged_view_sql(view, settings.table(S.FLAGGED), source, output, old.schema)
    return views


def upgraded_run_metrics(old: DataFrame) -> DataFrame:
    """An old `run_metrics` as today's `S.RUN_METRICS_SCHEMA` rows: each run's source_table is the
    `feature` of its `source` scope row (what udfs.metrics wrote there), scoring_role primary."""
    sources = (
        old.where(F.col(S.SCOPE) == "source")
        .groupBy(S.RUN_ID)
        .agg(F.first(S.FEATURE).alias(S.SOURCE_TABLE))
    )
    joined = old.join(F.broadcast(sources), S.RUN_ID, "left").withColumn(
        S.SOURCE_TABLE, F.coalesce(F.col(S.SOURCE_TABLE), F.lit("unknown"))
    )
    derived = {S.SCORING_ROLE: F.lit(S.PRIMARY)}
    upgraded = joined.select(
        *[derived[f.name].alias(f.name) if f.name in derived else F.col(f.name) for f in S.RUN_METRICS_SCHEMA]
    )
    # A run with metrics is complete: an older lakescore wrote all of a run's metrics in one
    # commit, after its flagged rows. Runs from before `run_complete` existed get the row, so
    # that the view `flagged` (published runs) shows them.
    complete = upgraded.where(F.col(S.METRIC) == S.RUN_COMPLETE_METRIC).select(S.RUN_ID)
    missing = (
        upgraded.join(complete, S.RUN_ID, "left_anti")
        .groupBy(S.RUN_ID, S.RUN_DATE, S.SOURCE_TABLE, S.MODEL_NAME, S.MODEL_VERSION, S.SCORING_ROLE)
        .agg(F.max("recorded_at").alias("recorded_at"))
        .select(
            *[
                {S.SCOPE: F.lit("run"), S.FEATURE: F.lit(None).cast("string"), S.METRIC: F.lit(S.RUN_COMPLETE_METRIC),
                 S.VALUE: F.lit(1.0)}.get(f.name, F.col(f.name)).alias(f.name)
                for f in S.RUN_METRICS_SCHEMA
            ]
        )
    )
    return upgraded.unionByName(missing)


def _overwrite(df: DataFrame, path: Path) -> None:
    """Replace the whole table at `path` with `df` and its schema and partitioning, in one commit."""
    (
        df.write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .partitionBy(*S.SLICE_COLUMNS)
        .save(str(path))
    )
