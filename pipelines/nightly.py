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
      5.                 append the flagged rows to `flagged_all` (one commit, every model's rows
                         under its own run_id): nobody sees them yet, then
      6.                 PUBLISH: replace the slices of `run_metrics` with every model's metrics
                         and `run_complete` row (one commit), then
      7.                 delete from `flagged_all` the rows no one can see any more (the runs this
                         one replaced, and runs that never published, after score.orphan_grace_hours),
                         and the staging folders of runs killed that long ago
      8.                 register the tables, the view `flagged` and the source's typed view
                         `flagged_<source>`; delete the staging folder
      9.                 write the night's report (pipelines.report; report.enabled): a page under
                         <lake.root>/reports, whose failure only logs a warning

Analysts read `flagged`, the view of the rows whose run is published (lakescore.lake.register_flagged):
commit 6 is the one that shows a night, in Delta's one atomic step, with its metrics. A run killed
anywhere before it leaves what analysts see as it was (its appended rows are invisible; a later run
deletes them); one killed after it has published the whole night. Two runs of the same slice at
once (two schedulers, a retry racing a late original) both append, invisibly, and race to publish:
Delta lets one replace the slice of run_metrics and refuses the other (a conflict, exit 5), which
then deletes its own rows; a slice never shows two runs, nor half of one.

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
# A run_id starts with the run's start time (UTC) in this format, then a random suffix.
RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
# How many of run_metrics' latest commits a run searches for its own publish commit: far more
# than the commits of runs racing it.
_HISTORY_LOOKBACK = 100

# The points between a run's steps, in order, as `boundary` hooks are told about them.
COUNTED = "counted"  # the partition's rows counted and above the floors; nothing written yet
STAGED = "staged"  # flagged rows scored into the run's staging folder; no table touched yet
FLAGGED_WRITTEN = "flagged_written"  # flagged rows appended to flagged_all, not yet published
PUBLISHED = "published"  # run_metrics' commit made: analysts see the run; replaced rows not yet deleted
BOUNDARIES = (COUNTED, STAGED, FLAGGED_WRITTEN, PUBLISHED)


# How a run reads and scores its rows (score.read_path, choose_read).
FILES_PATH = "files"  # Spark schedules the files, Python reads them with pyarrow (udfs.arrow_files)
UDF_PATH = "udf"  # Spark scans, an Arrow UDF scores (udfs.scoring): every source Spark can read


@dataclass(frozen=True)
class ReadChoice:
    """How one run reads its rows, and why (logged in one line)."""

    path: str  # FILES_PATH or UDF_PATH
    reason: str
    tasks: tuple = ()  # FILES_PATH: udfs.arrow_files.plan_tasks(...)
    date_filter: tuple[str, str] | None = None  # FILES_PATH: (date column, yyyy-mm-dd) filtered in the files


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
    read_path: str = "udf"  # how the rows were read and scored: FILES_PATH or UDF_PATH (see choose_read)


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
    scored every row read, append every model's flagged rows (one commit), then publish the run
    by replacing each model's slice of the metrics (one commit; a Delta conflict exception if a
    concurrent run of the slice published first); one summary per model. `allow_empty` and
    `boundary`: see run_nightly."""
    from pipelines.report import write_night_report  # matplotlib: only when a run starts
    from udfs.flagged import flagged_records
    from udfs.metrics import metric_records
    from udfs.arrow_files import score_files_dataframe
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
    read = choose_read(spark, settings, plan, run_date)
    log.info("run %s: the %s path (%s)", runs[0].run_id, read.path, read.reason)
    # The job writes only flagged rows; the totals still count every row. One model takes the
    # plain path; a shadow scores in the same UDF over the same rows (one scan, one transfer).
    if read.path == FILES_PATH:
        flagged = score_files_dataframe(
            spark, read.tasks, models, schema=rows.schema, totals=totals, top_k=top_k, sensitive=plan.sensitive,
            date_filter=read.date_filter, batch_rows=settings.spark.arrow_batch_size,
        )
    elif len(models) == 1:
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
    flagged_path = lake.table_path(settings, S.FLAGGED_ALL)
    metrics_path = lake.table_path(settings, S.RUN_METRICS)
    staging = settings.lake.tables_dir / STAGING_DIR / runs[0].run_id
    records = flagged_records(flagged, plan.output, runs, scored_at, plan.run_date_column)
    try:
        records.write.mode("errorifexists").parquet(str(staging))
        scoring_seconds = time.perf_counter() - started
        _reached(boundary, STAGED)
        for run, run_totals in zip(runs, (t.value for t in totals)):
            verify_rows_scored(run, rows_read, run_totals.rows, plan.source_name, _partition(plan, run_date))
        append_flagged(spark.read.schema(S.FLAGGED_SCHEMA).parquet(str(staging)), flagged_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _reached(boundary, FLAGGED_WRITTEN)

    try:
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
        publish = f"lakescore publish {runs[0].run_id}"  # finds the commit in the table's history
        replace_slices(spark.createDataFrame(metric_rows, S.RUN_METRICS_SCHEMA), metrics_path, runs, user_metadata=publish)
    except BaseException:
        withdraw_flagged(spark, flagged_path, metrics_path, runs)
        raise
    _reached(boundary, PUBLISHED)
    grace = dt.timedelta(hours=settings.score.orphan_grace_hours)
    replaced = replaced_run_ids(spark, metrics_path, runs, publish)
    delete_unpublished(spark, flagged_path, metrics_path, runs, replaced, older_than=scored_at - grace)
    remove_stale_staging(settings.lake.tables_dir / STAGING_DIR, older_than=scored_at - grace)
    lake.register_flagged(spark, settings)
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
                read_path=read.path,
            )
        )
    if settings.report.enabled:  # the night is published: its report can only log a warning (pipelines.report)
        write_night_report(spark, settings, plan, run_date)
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


def choose_read(spark: SparkSession, settings: Settings, plan: RunPlan, run_date: dt.date) -> ReadChoice:
    """How a run of `plan` for `run_date` reads its rows (score.read_path).

    "auto" takes the files path where it is exact, else the UDF path: a Delta source without
    deletion vectors on the date's files, column mapping or type widening (`lake.delta_files`),
    or a Parquet source; its date column a date partition, a date inside the files, or none;
    files pyarrow opens from the driver and reads as Spark types them
    (`udfs.arrow_files.check_readable`). "files" raises ConfigError where it is not exact;
    "udf" always takes the UDF path.
    """
    from udfs.arrow_files import check_readable, plan_tasks

    mode = settings.score.read_path
    if mode == UDF_PATH:
        return ReadChoice(UDF_PATH, "score.read_path=udf")
    schema = plan.rows_of(run_date).schema
    try:
        files, date_filter = _run_files(spark, plan, run_date)
        check_readable(files, schema, spark)
    except lake.FilesUnreadable as exc:
        if mode == FILES_PATH:
            raise ConfigError(
                f"score.read_path=files cannot read {plan.source_name} exactly: {exc}; set score.read_path=auto "
                "(the UDF path where the files path is not exact) or udf"
            ) from None
        return ReadChoice(UDF_PATH, str(exc))
    tasks = plan_tasks(files, settings.score.read_task_bytes, spark.sparkContext.defaultParallelism)
    return ReadChoice(FILES_PATH, f"{len(files)} files in {len(tasks)} tasks", tuple(tasks), date_filter)


def _run_files(
    spark: SparkSession, plan: RunPlan, run_date: dt.date
) -> "tuple[list[lake.DataFile], tuple[str, str] | None]":
    """(the files holding the rows of the run, the date filter to apply inside them)."""
    source, column = plan.source, plan.date_column
    partitioned = set(lake.partition_columns(spark, source))
    wanted = None
    date_filter = None
    if column is not None:
        kind = plan.df.schema[column].dataType
        if not isinstance(kind, T.DateType):
            raise lake.FilesUnreadable(
                f"the date column {column} is {kind.simpleString()}, and the files path selects a date on a date column"
            )
        if column in partitioned:
            wanted = (column, run_date.isoformat())
        else:
            date_filter = (column, run_date.isoformat())
    if source.format == "delta":
        return lake.delta_files(source, wanted), date_filter
    return lake.parquet_files(plan.rows_of(run_date), source.path), date_filter


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
        run_id=f"{scored_at.strftime(RUN_ID_TIME)}-{uuid.uuid4().hex[:8]}",
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


def append_flagged(df: DataFrame, path: Path) -> None:
    """Append flagged rows to the Delta table at `path` (`flagged_all`), in one commit.

    A blind append: it never conflicts with another run's append, publish or delete, so two runs
    of one slice race only where it matters, on publishing (`replace_slices` of run_metrics).
    The rows are invisible until their run is published (see the module docstring).
    """
    with lake.unsorted_partition_writes(df.sparkSession):
        df.write.format("delta").mode("append").partitionBy(*S.SLICE_COLUMNS).save(str(path))


def published_run_ids(spark: SparkSession, metrics_path: Path, runs: "Sequence[RunIdentity]") -> set[str]:
    """The run_ids published now in the slices of `runs` (their `run_complete` rows)."""
    if not (metrics_path / "_delta_log").is_dir():
        return set()
    rows = (
        spark.read.format("delta")
        .load(str(metrics_path))
        .where(F.expr(slice_condition(runs)) & (F.col(S.METRIC) == S.RUN_COMPLETE_METRIC))
        .select(S.RUN_ID)
        .distinct()
        .collect()
    )
    return {r[S.RUN_ID] for r in rows}


def replaced_run_ids(spark: SparkSession, metrics_path: Path, runs: "Sequence[RunIdentity]", publish: str) -> set[str]:
    """The run_ids that the publish commit tagged `publish` replaced: those published in the
    slices of `runs` at the version before that commit, whenever the other runs committed."""
    from delta.tables import DeltaTable

    commits = (
        DeltaTable.forPath(spark, str(metrics_path))
        .history(_HISTORY_LOOKBACK)
        .where(F.col("userMetadata") == publish)
        .select("version")
        .collect()
    )
    if not commits or commits[0]["version"] == 0:
        return set()
    rows = (
        spark.read.format("delta")
        .option("versionAsOf", commits[0]["version"] - 1)
        .load(str(metrics_path))
        .where(F.expr(slice_condition(runs)) & (F.col(S.METRIC) == S.RUN_COMPLETE_METRIC))
        .select(S.RUN_ID)
        .distinct()
        .collect()
    )
    return {r[S.RUN_ID] for r in rows}


def withdraw_flagged(spark: SparkSession, flagged_path: Path, metrics_path: Path, runs: "Sequence[RunIdentity]") -> None:
    """After a failure between appending and publishing: delete the rows `runs` appended, unless
    the publish went through after all. Best effort: rows left behind are invisible, and a later
    run deletes them (score.orphan_grace_hours)."""
    mine = [r.run_id for r in runs]
    try:
        if published_run_ids(spark, metrics_path, runs) & set(mine):
            return
        _delete_retrying(spark, flagged_path, F.expr(slice_condition(runs)) & F.col(S.RUN_ID).isin(mine))
        log.info("run %s did not publish: its flagged rows were deleted", ", ".join(mine))
    except Exception as exc:  # the original failure is what the caller must see
        log.warning("run %s did not publish and its invisible flagged rows stay until a later run deletes them: %s",
                    ", ".join(mine), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def delete_unpublished(
    spark: SparkSession,
    flagged_path: Path,
    metrics_path: Path,
    runs: "Sequence[RunIdentity]",
    replaced: set[str],
    *,
    older_than: dt.datetime,
) -> None:
    """Once `runs` are published, delete the rows of their slices in `flagged_all` that no one
    can see any more: those of the runs this publish `replaced`, and those of runs that never
    published and were scored before `older_than` (killed, or failed to publish). Never the rows
    of a run published now (this one, or a later one that won the slice since) nor those of a
    younger unpublished run, which may still be on its way to publish.

    Best effort: what another commit keeps it from deleting stays invisible until a later run."""
    published = published_run_ids(spark, metrics_path, runs) | {r.run_id for r in runs}
    gone = (
        F.expr(slice_condition(runs))
        & ~F.col(S.RUN_ID).isin(sorted(published))
        & (F.col(S.RUN_ID).isin(sorted(replaced) or [""]) | (F.col(S.SCORED_AT) < F.lit(older_than)))
    )
    try:
        _delete_retrying(spark, flagged_path, gone)
    except lake.delta_conflicts() as exc:
        log.warning("rows of replaced runs stay in flagged_all (invisible) until a later run deletes them: %s",
                    str(exc).splitlines()[0])


def remove_stale_staging(staging_dir: Path, *, older_than: dt.datetime) -> list[str]:
    """Delete the staging folders of runs started before `older_than` (killed before their
    cleanup: a folder's name is its run_id, which starts with the run's start time); return
    their names. A younger folder may belong to a run still going, and stays."""
    removed = []
    for folder in sorted(staging_dir.glob("*")):
        try:
            started = dt.datetime.strptime(folder.name.split("-", 1)[0], RUN_ID_TIME).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue  # not a run's folder: not ours to delete
        if started < older_than:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.info("removed the staging folders of %d runs killed before their cleanup: %s", len(removed), ", ".join(removed))
    return removed


def _delete_retrying(spark: SparkSession, path: Path, condition, attempts: int = 3) -> None:
    """DeltaTable.delete, tried again when a concurrent commit made Delta refuse it."""
    from delta.tables import DeltaTable

    for attempt in range(1, attempts + 1):
        try:
            DeltaTable.forPath(spark, str(path)).delete(condition)
            return
        except lake.delta_conflicts():
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)


def replace_slices(df: DataFrame, path: Path, runs: "Sequence[RunIdentity]", *, user_metadata: str | None = None) -> None:
    """Replace the slices of `runs` in the Delta table at `path` with `df`, in one commit.

    The table is partitioned by the slice columns (S.SLICE_COLUMNS) and the predicate names
    only them, so Delta drops the slices' old files without rewriting any file (a predicate on
    another column would rewrite files first), and every other slice keeps its files: other
    sources, other models, and the other role of the same model. Every row of a one-model run
    has the same slice, so the write skips Spark's sort by partition
    (lake.unsorted_partition_writes); with a shadow, a task meeting the second slice sorts.
    """
    writer = df.write.format("delta")
    if user_metadata is not None:
        writer = writer.option("userMetadata", user_metadata)  # DESCRIBE HISTORY shows it with the commit
    with lake.unsorted_partition_writes(df.sparkSession):
        (
            writer
            .mode("overwrite")
            .option("replaceWhere", slice_condition(runs))
            .partitionBy(*S.SLICE_COLUMNS)
            .save(str(path))
        )
