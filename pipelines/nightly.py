"""The nightly scoring run, top to bottom: one date partition of a source table scored with a
registered model (and optionally a shadow challenger in the same pass), its flagged rows and
metrics written to the lake as Delta tables.

A run is keyed by its slice (run_date, source_table, model_name, scoring_role): a re-run replaces
exactly its own slice of `flagged` and `run_metrics`, and other sources and models scored the same
night are never touched (see lakescore.schemas.SLICE_COLUMNS).

    run_nightly
      1. plan_run        resolve the bundles and the source; every check that can fail on the
                         input (bundles verified, columns present and typed, keys, dates, the
                         tables' layout) runs here, before anything is written
      2. broadcast       each bundle's bytes shipped once; each model built once per Python worker
      3. score_date      per date: count the partition's rows and refuse a missing or short one
                         (check_row_floor: PartitionError, before any write), score them in one
                         pass (the Arrow UDF scores with every model and adds every row's metrics
                         to one accumulator per model while only flagged rows return to the JVM)
                         into a staging folder the run owns, then
      4.                 verify that every model scored exactly the rows read (VerificationError
                         otherwise: the staged rows are deleted and no table is touched), then
      5.                 write `flagged` (every model's slice replaced in ONE Delta commit), then
      6.                 write `run_metrics` (every model's metrics and `run_complete` row, one commit)
      7.                 register both tables in the catalog, and the source's typed view
                         `flagged_<source>`; delete the staging folder

A run that dies before step 5 commits leaves both tables as they were. One that dies between the
two commits leaves `flagged` slices whose run_id has no `run_complete` row: re-run the date.

`boundary`, when given, is called with the name of each point between a run's steps
(BOUNDARIES), in order: what a caller or a test hooks in to watch (or to interrupt) a run.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakescore import lake
from lakescore import schemas as S
from lakescore.bundle import Bundle, load_bundle
from lakescore.config import ConfigError, ScoreSettings, Settings
from lakescore.feedback import source_name
from lakescore.registry import load_registered

if TYPE_CHECKING:  # the scoring code imports torch: only when a run starts (fast `--help`)
    from lakescore.specs import SourceSpec
    from udfs.broadcast import BroadcastModel
    from udfs.flagged import OutputColumns
    from udfs.metrics import RunIdentity

log = logging.getLogger(__name__)

# Under the lake's tables folder: one folder per run, holding its flagged rows until they are verified.
STAGING_DIR = "_staging"

# The points between a run's steps, in order, as `boundary` hooks are told about them.
COUNTED = "counted"  # the partition's rows counted and above the floors; nothing written yet
STAGED = "staged"  # flagged rows scored into the run's staging folder; no table touched yet
FLAGGED_WRITTEN = "flagged_written"  # flagged's commit made; run_metrics not yet
METRICS_WRITTEN = "metrics_written"  # run_metrics' commit made; the run is complete
BOUNDARIES = (COUNTED, STAGED, FLAGGED_WRITTEN, METRICS_WRITTEN)


class PartitionError(lake.SourceError):
    """The date partition a run would score is missing or holds fewer rows than the floors allow."""


class VerificationError(RuntimeError):
    """A run's own checks of what it did failed (rows read != rows scored); nothing was written."""


@dataclass(frozen=True)
class RunSummary:
    """What one run did (one date, or the whole of an undated source)."""

    run_id: str
    run_date: dt.date
    model: str
    scoring_role: str  # S.PRIMARY, or S.SHADOW for a challenger scored in the same pass
    source: str
    source_version: int | None
    rows_read: int  # rows in the source partition, counted without the model
    rows_scored: int  # rows the scoring UDF scored, added up by the UDF itself
    rows_flagged: int
    scoring_seconds: float  # the one pass over the rows: score, flag, explain, write flagged
    duration_seconds: float  # the whole run, commits and catalog included


@dataclass(frozen=True)
class RunPlan:
    """Everything a night's runs need, resolved and checked before the first write."""

    bundle: Bundle
    shadow: Bundle | None  # a challenger scored beside `bundle` in the same pass, or None
    source: lake.Source
    source_name: str  # as flagged, run_metrics and feedback record it (lakescore.feedback.source_name)
    df: DataFrame  # the source at its pinned version
    columns: tuple[str, ...]  # what a run reads of it: the models' inputs and flagged's columns
    date_column: str | None  # the column each run selects its date on; None: an undated source
    run_dates: tuple[dt.date, ...]
    output: "OutputColumns"  # the source columns copied into flagged
    run_date_column: str | None  # a copied column filled with the run date instead of being read
    # Source columns whose values never leave the source in clear: the primary's feature spec's
    # `sensitive` plus settings.score.sensitive_columns (hashed or dropped in flagged, no reason value).
    sensitive: tuple[str, ...] = ()

    @property
    def bundles(self) -> tuple[Bundle, ...]:
        """The models a run scores with, the primary first."""
        return (self.bundle,) if self.shadow is None else (self.bundle, self.shadow)

    def rows_of(self, run_date: dt.date) -> DataFrame:
        """The rows one run scores: its date's partition, or every row of an undated source."""
        from udfs.flagged import source_column

        if self.date_column is None:
            rows = self.df
        else:
            day = source_column(self.date_column)
            if not isinstance(self.df.schema[self.date_column].dataType, T.DateType):
                day = F.to_date(day)  # a timestamp date column: the rows of that calendar day
            rows = self.df.filter(day == F.lit(run_date))
        return rows.select(*[source_column(c) for c in self.columns])


def run_nightly(
    spark: SparkSession,
    settings: Settings,
    run_date: dt.date | None = None,
    *,
    last_date: dt.date | None = None,
    source: str | None = None,
    model: str | None = None,
    bundle_path: Path | str | None = None,
    shadow: str | None = None,
    allow_empty: bool = False,
    catch_up: bool = False,
    boundary: Callable[[str], None] | None = None,
) -> list[RunSummary]:
    """Score `source` for `run_date` (or each date from `run_date` to `last_date`, each its own
    run and commits), write `flagged` and `run_metrics`; return one summary per run and model
    (the primary's first).

    Args:
        run_date: the date partition to score (the date column of the primary model's feature
            spec, or settings.score.date_column: see `plan_run`); default yesterday (UTC). An
            undated source (no date column) is scored whole as the run of this date.
        last_date: with it, every date from run_date to last_date.
        source: catalog table or path (default settings.score.table).
        model: `name` (champion) or `name@version` (default settings.score.model): the primary model.
        bundle_path: a bundle directory to use as the primary model instead of the registry.
        shadow: `name@version` (or `name`, its champion) of a challenger scored in the same pass
            over the rows, written as its own slice (scoring_role `shadow`).
        allow_empty: score a date even when its partition is missing or below the row floors
            (score.min_rows, score.min_fraction_of_median): a legitimately empty night.
        catch_up: score every date after the last complete run of the primary model's slice
            (source, model, role) up to yesterday (UTC), each its own run; `run_date` is the
            first date only when the slice has no complete run yet (then it is required), and
            `last_date` must be None. Nothing to catch up: no run, an empty list.
        boundary: called with each name of BOUNDARIES as a run passes it (see the module docstring).

    Raises, before anything of the failing date is written: BundleError (a bundle that fails
    verification), RegistryError, lake.SourceError, PartitionError (a missing or short date
    partition), VerificationError (rows read != rows scored), ValueError (missing/mistyped
    columns, bad dates, tables in the layout of an older lakescore: see pipelines.upgrade).
    Dates of a range before the failing one keep their committed runs.
    """
    from udfs.broadcast import broadcast_model

    plan = plan_run(
        spark, settings, run_date, last_date, source=source, model=model, bundle_path=bundle_path, shadow=shadow,
        catch_up=catch_up,
    )
    models = [broadcast_model(spark, bundle) for bundle in plan.bundles]
    return [
        summary
        for date in plan.run_dates
        for summary in score_date(spark, settings, plan, models, date, allow_empty=allow_empty, boundary=boundary)
    ]


def plan_run(
    spark: SparkSession,
    settings: Settings,
    run_date: dt.date | None,
    last_date: dt.date | None,
    *,
    source: str | None = None,
    model: str | None = None,
    bundle_path: Path | str | None = None,
    shadow: str | None = None,
    catch_up: bool = False,
) -> RunPlan:
    """Resolve the bundles and the source and run every check that can fail on the input, once.

    What a run reads of the source follows the primary bundle's feature spec
    (`bundle.manifest.feature_set.fitted.spec`):
    - date column: settings.score.date_column when set (an explicit override), else the spec's
      `date_column` (a spec without one: an undated run), else, for a bundle without a spec,
      `event_date`;
    - keys (flagged's key columns and `record_key`): settings.score.key_columns when set, else
      the spec's `keys`, else (no spec) the known key columns (`udfs.flagged.KEY_CANDIDATES`);
      a shadow must resolve to the same keys, or the run is refused here;
    - sensitive columns: the spec's `sensitive` (of either model) plus settings.score.sensitive_columns.

    `catch_up`: see run_nightly.
    """
    from pipelines.upgrade import check_table_layouts
    from udfs.flagged import choose_output_columns, scan_columns
    from udfs.scoring import check_source_columns, shared_inputs

    check_table_layouts(spark, settings)
    score = settings.score
    bundle = load_bundle(bundle_path) if bundle_path else load_registered(spark, settings, model or score.model)[1]
    challenger = load_registered(spark, settings, shadow)[1] if shadow else None
    if challenger is not None and (challenger.name, challenger.version) == (bundle.name, bundle.version):
        raise ValueError(
            f"--shadow {shadow} is the primary model {bundle.label} itself; "
            "name another version as the shadow (e.g. the challenger to compare with the champion)"
        )
    bundles = (bundle,) if challenger is None else (bundle, challenger)
    specs = [_source_spec(b) for b in bundles]
    keys = [(score.key_columns or (s.keys if s is not None else ())) for s in specs]
    if len(set(keys)) > 1:
        raise ValueError(
            f"the primary model {bundle.label} keys its rows by {list(keys[0]) or 'the known key columns'}, "
            f"the shadow {challenger.label} by {list(keys[1]) or 'the known key columns'}: one pass writes one "
            "record key per row; shadow a model trained with the same spec keys, or name the keys for both "
            "in score.key_columns"
        )
    resolved = lake.resolve_source(spark, settings, source or score.table)
    df = lake.read_source(spark, resolved)
    where = f"source {resolved.name}"
    for b in bundles:
        check_source_columns(df, b.feature_set, f"{where} (model {b.label})")
    sensitive = tuple(dict.fromkeys([*(c for s in specs if s is not None for c in s.sensitive), *score.sensitive_columns]))
    output = choose_output_columns(df.columns, score, where, keys=keys[0] or None, sensitive=sensitive)
    if output.hashed and not output.salt:
        raise ConfigError(
            f"{where}: column(s) {', '.join(output.hashed)} are sensitive and would be hashed, but the hash key is "
            "empty; set LAKESCORE_HASH_KEY (or score.hash_key_file) to a secret kept across nights"
        )
    date_column = score.date_column or (specs[0].date_column if specs[0] is not None else S.EVENT_DATE)
    if not score.date_column and specs[0] is not None and date_column is not None and date_column not in df.columns:
        raise ValueError(
            f"{where} lacks the date column {date_column!r} that model {bundle.label}'s feature spec names; "
            "score the table the model was trained on, or set score.date_column to its date column"
        )
    name = source_name(settings, resolved.name)
    if catch_up:
        run_date, last_date = _catch_up_dates(spark, settings, name, bundle.name, run_date, last_date)
    run_dates, dated = _run_dates(df, date_column, run_date, last_date, where, catch_up)
    # Only what flagged and the models need leaves the scan (the date column only if flagged
    # cannot take it from the run).
    inputs, _ = shared_inputs([b.feature_set for b in bundles])
    columns, run_date_column = scan_columns(output, inputs, df.schema, date_column if dated else None)
    return RunPlan(
        bundle=bundle,
        shadow=challenger,
        source=resolved,
        source_name=name,
        df=df,
        columns=tuple(columns),
        date_column=date_column if dated else None,
        run_dates=tuple(run_dates),
        output=output,
        run_date_column=run_date_column,
        sensitive=sensitive,
    )


def _catch_up_dates(
    spark: SparkSession, settings: Settings, source: str, model_name: str, first: dt.date | None, last: dt.date | None
) -> tuple[dt.date, dt.date]:
    """(first, last) date of a catch-up: the day after the slice's last complete run (or
    `first` when there is none) to yesterday (UTC). first > last: nothing to do."""
    if last is not None:
        raise ValueError("--catch-up runs up to yesterday by itself; leave out --to")
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    complete = last_complete_run_date(spark, settings, source, model_name, S.PRIMARY)
    if complete is None and first is None:
        raise ValueError(
            f"--catch-up found no complete run of model {model_name} on {source} to continue from; "
            "give the first date to score with --from (or --run-date)"
        )
    start = complete + dt.timedelta(days=1) if complete is not None else first
    log.info("catching up %s with %s: %s to %s", source, model_name, start, yesterday)
    return start, yesterday


def last_complete_run_date(
    spark: SparkSession, settings: Settings, source: str, model_name: str, scoring_role: str
) -> dt.date | None:
    """The latest run_date of a complete run (one with its `run_complete` metric) of the slice
    (source, model, role); None when it has none."""
    path = lake.table_path(settings, S.RUN_METRICS)
    if not (path / "_delta_log").is_dir():
        return None
    row = (
        spark.read.format("delta")
        .load(str(path))
        .where(
            (F.col(S.SOURCE_TABLE) == source)
            & (F.col(S.MODEL_NAME) == model_name)
            & (F.col(S.SCORING_ROLE) == scoring_role)
            & (F.col(S.METRIC) == S.RUN_COMPLETE_METRIC)
        )
        .agg(F.max(S.RUN_DATE).alias("last"))
        .first()
    )
    return row["last"]


def _source_spec(bundle: Bundle) -> "SourceSpec | None":
    """The feature spec `bundle` was trained with (None: a bundle from before specs)."""
    fitted = bundle.manifest.feature_set.fitted
    return None if fitted is None else fitted.spec


def _run_dates(
    df: DataFrame,
    column: str | None,
    run_date: dt.date | None,
    last_date: dt.date | None,
    where: str,
    catch_up: bool = False,
) -> tuple[list[dt.date], bool]:
    """(dates to run, whether to filter on the date column); `column` None: an undated source;
    a catch-up with nothing to do: none."""
    first = run_date or (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))
    if column is None or column not in df.columns:
        if last_date is not None:
            raise ValueError(
                f"{where} has no date column {column!r}, so a date range cannot be scored; "
                "score it whole with --run-date only, or name its date column in the spec's "
                "`date_column` (or score.date_column)"
            )
        log.info("%s has no date column %r: scoring every row as the run of %s", where, column, first)
        return [first], False
    last = last_date or first
    if last < first:
        if catch_up:
            return [], True
        raise ValueError(f"--to {last} is before --from {first}; give the range in order")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)], True


def score_date(
    spark: SparkSession,
    settings: Settings,
    plan: RunPlan,
    models: "list[BroadcastModel]",
    run_date: dt.date,
    *,
    allow_empty: bool = False,
    boundary: Callable[[str], None] | None = None,
) -> list[RunSummary]:
    """One night of one source: refuse a missing or short partition, score the rows of
    `run_date` in one pass with every model (the primary, then a shadow), check that each model
    scored every row read, write each model's slice of flagged (one commit), then of the metrics
    (one commit); one summary per model. `allow_empty` and `boundary`: see run_nightly."""
    from udfs.flagged import flagged_records
    from udfs.metrics import metric_records
    from udfs.scoring import new_run_totals, score_dataframe, score_models_dataframe

    started = time.perf_counter()
    scored_at = dt.datetime.now(dt.timezone.utc)
    runs = [
        _run_identity(plan, bundle, role, run_date, scored_at)
        for bundle, role in zip(plan.bundles, (S.PRIMARY, S.SHADOW))
    ]
    for run, bundle in zip(runs, plan.bundles):
        log.info("run %s: scoring %s for %s with %s (%s)", run.run_id, run.source, run_date, bundle.label, run.scoring_role)
    rows = plan.rows_of(run_date)
    # Counted without the model (Parquet footers or Delta statistics, no column is decoded): the
    # UDF's own count of rows scored is checked against it.
    rows_read = rows.count()
    if not allow_empty:
        trailing = trailing_rows_read(spark, settings, runs[0], settings.score.median_window)
        check_row_floor(rows_read, trailing, settings.score, f"{plan.source_name} partition {_partition(plan, run_date)}")
    _reached(boundary, COUNTED)
    totals = [new_run_totals(spark, model) for model in models]
    top_k = settings.score.top_reasons
    # The job writes only flagged rows; the totals still count every row. One model takes the
    # plain path; a shadow scores in the same UDF over the same rows (one scan, one transfer).
    if len(models) == 1:
        flagged = score_dataframe(
            rows, models[0], top_k=top_k, totals=totals[0], flagged_only=True, sensitive=plan.sensitive
        )
    else:
        flagged = score_models_dataframe(rows, models, top_k=top_k, totals=totals, sensitive=plan.sensitive)
    # The one action over the source rows: the flagged rows are written while the UDF adds up
    # the metrics of every row into `totals` (no cache, no second pass, no second model run).
    # They go to a folder of this run's own first: the row counts are known only once the pass
    # is over, and a run that did not score every row read must not replace anything. Only the
    # flagged rows (few) are read back for the commit.
    flagged_path = lake.table_path(settings, S.FLAGGED)
    staging = settings.lake.tables_dir / STAGING_DIR / runs[0].run_id
    records = flagged_records(flagged, plan.output, runs, scored_at, plan.run_date_column)
    try:
        records.write.mode("errorifexists").parquet(str(staging))
        scoring_seconds = time.perf_counter() - started
        _reached(boundary, STAGED)
        for run, run_totals in zip(runs, (t.value for t in totals)):
            verify_rows_scored(run, rows_read, run_totals.rows, plan.source_name, _partition(plan, run_date))
        replace_slices(spark.read.schema(S.FLAGGED_SCHEMA).parquet(str(staging)), flagged_path, runs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _reached(boundary, FLAGGED_WRITTEN)

    metric_rows = []
    for run, model, run_totals in zip(runs, models, (t.value for t in totals)):
        metric_rows += metric_records(
            run,
            model.layout,
            run_totals,
            rows_read=rows_read,
            reference=model.bundle.reference,
            scoring_seconds=scoring_seconds,
            duration_seconds=time.perf_counter() - started,
            recorded_at=dt.datetime.now(dt.timezone.utc),
        )
    metrics_path = lake.table_path(settings, S.RUN_METRICS)
    replace_slices(spark.createDataFrame(metric_rows, S.RUN_METRICS_SCHEMA), metrics_path, runs)
    _reached(boundary, METRICS_WRITTEN)
    lake.register_table(spark, settings, S.FLAGGED, flagged_path, "delta")
    lake.register_table(spark, settings, S.RUN_METRICS, metrics_path, "delta")
    register_source_view(spark, settings, plan)
    duration = time.perf_counter() - started
    summaries = []
    for run, model, run_totals in zip(runs, models, (t.value for t in totals)):
        counts = model.layout.split(run_totals.counts)
        log.info("run %s: %d rows, %d flagged in %.1fs", run.run_id, counts.rows, counts.rows_flagged, duration)
        summaries.append(
            RunSummary(
                run_id=run.run_id,
                run_date=run_date,
                model=model.bundle.label,
                scoring_role=run.scoring_role,
                source=run.source,
                source_version=plan.source.version,
                rows_read=rows_read,
                rows_scored=counts.rows,
                rows_flagged=counts.rows_flagged,
                scoring_seconds=scoring_seconds,
                duration_seconds=duration,
            )
        )
    return summaries


def check_row_floor(rows_read: int, trailing: Sequence[int], score: ScoreSettings, where: str) -> None:
    """Raise PartitionError unless `rows_read` reaches score.min_rows and
    score.min_fraction_of_median of the median of `trailing` (the rows read by the slice's last
    complete runs; no relative floor without them). `where` names the table and partition."""
    fix = "check that the partition has landed, then re-run; for a night that is legitimately empty, pass --allow-empty"
    if rows_read == 0 and score.min_rows > 0:
        raise PartitionError(f"{where} is missing or empty (0 rows, score.min_rows={score.min_rows}); {fix}")
    if rows_read < score.min_rows:
        raise PartitionError(f"{where} holds {rows_read} rows, fewer than score.min_rows={score.min_rows}; {fix}")
    if trailing and score.min_fraction_of_median > 0:
        median = statistics.median(trailing)
        floor = score.min_fraction_of_median * median
        if rows_read < floor:
            raise PartitionError(
                f"{where} holds {rows_read} rows, fewer than {score.min_fraction_of_median:g} x the median "
                f"{median:g} of the last {len(trailing)} complete runs ({floor:g}); {fix}"
            )


def verify_rows_scored(run: "RunIdentity", rows_read: int, rows_scored: int, source: str, partition: str) -> None:
    """Raise VerificationError unless the model of `run` scored exactly the rows counted."""
    if rows_scored != rows_read:
        raise VerificationError(
            f"run {run.run_id} ({run.model_name} v{run.model_version}, {run.scoring_role}) of {source} partition "
            f"{partition}: {rows_read} rows read but {rows_scored} scored, so nothing was written; the source "
            "changed under the run or rows were lost in the scan (files removed by a VACUUM or a compaction): "
            "re-run the date once the source is stable"
        )


def trailing_rows_read(spark: SparkSession, settings: Settings, run: "RunIdentity", window: int) -> list[int]:
    """rows_read of the last `window` complete runs of the slice of `run` (same source, model and
    role) for dates before run.run_date, newest first; [] before the first run."""
    path = lake.table_path(settings, S.RUN_METRICS)
    if not (path / "_delta_log").is_dir():
        return []
    metrics = spark.read.format("delta").load(str(path)).where(
        (F.col(S.SOURCE_TABLE) == run.source)
        & (F.col(S.MODEL_NAME) == run.model_name)
        & (F.col(S.SCORING_ROLE) == run.scoring_role)
        & (F.col(S.RUN_DATE) < F.lit(run.run_date))
        & (F.col(S.SCOPE) == "run")
    )
    complete = metrics.where(F.col(S.METRIC) == S.RUN_COMPLETE_METRIC).select(S.RUN_ID)
    rows = (
        metrics.where(F.col(S.METRIC) == "rows_read")
        .join(complete, S.RUN_ID)
        .orderBy(F.col(S.RUN_DATE).desc())
        .limit(window)
        .collect()
    )
    return [int(r[S.VALUE]) for r in rows]


def _partition(plan: RunPlan, run_date: dt.date) -> str:
    return f"{plan.date_column}={run_date}" if plan.date_column else f"(undated, run of {run_date})"


def _reached(boundary: Callable[[str], None] | None, name: str) -> None:
    if boundary is not None:
        boundary(name)


def register_source_view(spark: SparkSession, settings: Settings, plan: RunPlan) -> str:
    """Create or replace the source's typed view of `flagged` (`flagged_<source>`, see
    `udfs.flagged.flagged_view_sql`); return its qualified name."""
    from udfs.flagged import flagged_view_sql, source_view_name

    view = settings.table(source_view_name(plan.source_name))
    spark.sql(flagged_view_sql(view, settings.table(S.FLAGGED), plan.source_name, plan.output, plan.df.schema))
    return view


def _run_identity(
    plan: RunPlan, bundle: Bundle, scoring_role: str, run_date: dt.date, scored_at: dt.datetime
) -> "RunIdentity":
    from udfs.metrics import RunIdentity

    return RunIdentity(
        run_id=f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        run_date=run_date,
        model_name=bundle.name,
        model_version=bundle.version,
        model_sha256=bundle.sha256,
        source=plan.source_name,
        source_version=plan.source.version,
        threshold=bundle.threshold,
        scoring_role=scoring_role,
    )


def slice_condition(runs: "Sequence[RunIdentity]") -> str:
    """The SQL predicate that selects exactly the slices of `runs` (partition columns only)."""
    from udfs.flagged import sql_string

    slices = sorted(
        {(r.run_date, r.source, r.model_name, r.scoring_role) for r in runs}
    )
    return " OR ".join(
        f"({S.RUN_DATE} = DATE'{day.isoformat()}' AND {S.SOURCE_TABLE} = {sql_string(source)} "
        f"AND {S.MODEL_NAME} = {sql_string(model)} AND {S.SCORING_ROLE} = {sql_string(role)})"
        for day, source, model, role in slices
    )


def replace_slices(df: DataFrame, path: Path, runs: "Sequence[RunIdentity]") -> None:
    """Replace the slices of `runs` in the Delta table at `path` with `df`, in one commit.

    The table is partitioned by the slice columns (S.SLICE_COLUMNS) and the predicate names
    only them, so Delta drops the slices' old files without rewriting any file (a predicate on
    another column would rewrite files first), and every other slice keeps its files: other
    sources, other models, and the other role of the same model. Every row of a one-model run
    has the same slice, so the write skips Spark's sort by partition
    (lake.unsorted_partition_writes); with a shadow, a task meeting the second slice sorts.
    """
    with lake.unsorted_partition_writes(df.sparkSession):
        (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", slice_condition(runs))
            .partitionBy(*S.SLICE_COLUMNS)
            .save(str(path))
        )
