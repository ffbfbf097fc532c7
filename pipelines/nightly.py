"""The nightly scoring run, top to bottom: one date partition of a source table scored with a
registered model, its flagged rows and metrics written to the lake as Delta tables.

    run_nightly
      1. plan_run        resolve the bundle and the source; every check that can fail on the
                         input (bundle verified, columns present and typed, keys, dates) runs
                         here, before anything is written
      2. broadcast       the bundle's bytes shipped once; the model is built once per Python worker
      3. score_date      per date: count the partition's rows, score them in one pass (the Arrow
                         UDF adds every row's metrics to an accumulator while only flagged rows
                         return to the JVM), then
      4.                 write `flagged` (the date's rows replaced in ONE Delta commit), then
      5.                 write `run_metrics` (the run's metrics and its `run_complete` row, one commit)
      6.                 register both tables in the catalog

A run that dies before step 4 commits leaves both tables as they were. One that dies between the
two commits leaves a `flagged` date whose run_id has no `run_complete` row: re-run the date.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakescore import lake
from lakescore import schemas as S
from lakescore.bundle import Bundle, load_bundle
from lakescore.config import Settings
from lakescore.registry import load_registered

if TYPE_CHECKING:  # the scoring code imports torch: only when a run starts (fast `--help`)
    from udfs.broadcast import BroadcastModel
    from udfs.flagged import OutputColumns
    from udfs.metrics import RunIdentity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What one run did (one date, or the whole of an undated source)."""

    run_id: str
    run_date: dt.date
    model: str
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
    source: lake.Source
    source_name: str  # as flagged and run_metrics record it: a path, or the qualified table name
    df: DataFrame  # the source at its pinned version
    columns: tuple[str, ...]  # what a run reads of it: the model's inputs and flagged's columns
    date_column: str | None  # the column each run selects its date on; None: an undated source
    run_dates: tuple[dt.date, ...]
    output: "OutputColumns"  # the source columns copied into flagged
    run_date_column: str | None  # a copied column filled with the run date instead of being read

    def rows_of(self, run_date: dt.date) -> DataFrame:
        """The rows one run scores: its date's partition, or every row of an undated source."""
        rows = self.df if self.date_column is None else self.df.filter(F.col(self.date_column) == F.lit(run_date))
        return rows.select(*self.columns)


def run_nightly(
    spark: SparkSession,
    settings: Settings,
    run_date: dt.date | None = None,
    *,
    last_date: dt.date | None = None,
    source: str | None = None,
    model: str | None = None,
    bundle_path: Path | str | None = None,
) -> list[RunSummary]:
    """Score `source` for `run_date` (or each date from `run_date` to `last_date`, each its own
    run and commits), write `flagged` and `run_metrics`; return one summary per run.

    Args:
        run_date: the date partition to score (settings.score.date_column); default yesterday (UTC).
        last_date: with it, every date from run_date to last_date.
        source: catalog table or path (default settings.score.table).
        model: `name` (champion) or `name@version` (default settings.score.model).
        bundle_path: a bundle directory to use instead of the registry.

    Raises, before anything is written: BundleError (a bundle that fails verification),
    RegistryError, lake.SourceError, ValueError (missing/mistyped columns, bad dates).
    """
    from udfs.broadcast import broadcast_model

    plan = plan_run(spark, settings, run_date, last_date, source=source, model=model, bundle_path=bundle_path)
    model_broadcast = broadcast_model(spark, plan.bundle)
    return [score_date(spark, settings, plan, model_broadcast, date) for date in plan.run_dates]


def plan_run(
    spark: SparkSession,
    settings: Settings,
    run_date: dt.date | None,
    last_date: dt.date | None,
    *,
    source: str | None = None,
    model: str | None = None,
    bundle_path: Path | str | None = None,
) -> RunPlan:
    """Resolve the bundle and the source and run every check that can fail on the input, once."""
    from udfs.flagged import choose_output_columns, scan_columns
    from udfs.scoring import check_source_columns

    score = settings.score
    bundle = load_bundle(bundle_path) if bundle_path else load_registered(spark, settings, model or score.model)[1]
    resolved = lake.resolve_source(spark, settings, source or score.table)
    df = lake.read_source(spark, resolved)
    where = f"source {resolved.name}"
    feature_set = bundle.feature_set
    check_source_columns(df, feature_set, where)
    output = choose_output_columns(df.columns, score, where)
    run_dates, dated = _run_dates(df, score.date_column, run_date, last_date, where)
    # Only what flagged and the model need leaves the scan (the date column only if flagged
    # cannot take it from the run).
    columns, run_date_column = scan_columns(
        output, list(feature_set.inputs), df.schema, score.date_column if dated else None
    )
    return RunPlan(
        bundle=bundle,
        source=resolved,
        source_name=resolved.name if "/" in resolved.name else settings.table(resolved.name),
        df=df,
        columns=tuple(columns),
        date_column=score.date_column if dated else None,
        run_dates=tuple(run_dates),
        output=output,
        run_date_column=run_date_column,
    )


def _run_dates(
    df: DataFrame, column: str, run_date: dt.date | None, last_date: dt.date | None, where: str
) -> tuple[list[dt.date], bool]:
    """(dates to run, whether to filter on the date column)."""
    first = run_date or (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))
    if column not in df.columns:
        if last_date is not None:
            raise ValueError(
                f"{where} has no date column {column!r}, so a date range cannot be scored; "
                "score it whole with --run-date only, or set score.date_column"
            )
        log.info("%s has no %s column: scoring every row as the run of %s", where, column, first)
        return [first], False
    last = last_date or first
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}; give the range in order")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)], True


def score_date(
    spark: SparkSession, settings: Settings, plan: RunPlan, model: "BroadcastModel", run_date: dt.date
) -> RunSummary:
    """One run: score the rows of `run_date` in one pass, write flagged, then the metrics."""
    from udfs.flagged import flagged_records
    from udfs.metrics import metric_records
    from udfs.scoring import new_run_totals, score_dataframe

    started = time.perf_counter()
    scored_at = dt.datetime.now(dt.timezone.utc)
    run = _run_identity(plan, run_date, scored_at)
    log.info("run %s: scoring %s for %s with %s", run.run_id, run.source, run_date, plan.bundle.label)
    rows = plan.rows_of(run_date)
    # Counted without the model (Parquet footers or Delta statistics, no column is decoded): the
    # UDF's own count of rows scored is checked against it.
    rows_read = rows.count()
    totals = new_run_totals(spark, model)
    # The job writes only flagged rows; the totals still count every row.
    flagged = score_dataframe(rows, model, top_k=settings.score.top_reasons, totals=totals, flagged_only=True)
    # The one action over the source rows: the flagged rows are written while the UDF adds up
    # the metrics of every row into `totals` (no cache, no second pass, no second model run).
    flagged_path = lake.table_path(settings, S.FLAGGED)
    _replace_run(flagged_records(flagged, plan.output, run, scored_at, plan.run_date_column), flagged_path, run_date)
    scoring_seconds = time.perf_counter() - started
    run_totals = totals.value
    if run_totals.rows != rows_read:
        log.warning("run %s: %d rows read but %d scored", run.run_id, rows_read, run_totals.rows)

    records = metric_records(
        run,
        model.layout,
        run_totals,
        rows_read=rows_read,
        reference=plan.bundle.reference,
        scoring_seconds=scoring_seconds,
        duration_seconds=time.perf_counter() - started,
        recorded_at=dt.datetime.now(dt.timezone.utc),
    )
    metrics_path = lake.table_path(settings, S.RUN_METRICS)
    _replace_run(spark.createDataFrame(records, S.RUN_METRICS_SCHEMA), metrics_path, run_date)
    lake.register_table(spark, settings, S.FLAGGED, flagged_path, "delta")
    lake.register_table(spark, settings, S.RUN_METRICS, metrics_path, "delta")
    duration = time.perf_counter() - started
    counts = model.layout.split(run_totals.counts)
    log.info("run %s: %d rows, %d flagged in %.1fs", run.run_id, counts.rows, counts.rows_flagged, duration)
    return RunSummary(
        run_id=run.run_id,
        run_date=run_date,
        model=plan.bundle.label,
        source=run.source,
        source_version=plan.source.version,
        rows_read=rows_read,
        rows_scored=counts.rows,
        rows_flagged=counts.rows_flagged,
        scoring_seconds=scoring_seconds,
        duration_seconds=duration,
    )


def _run_identity(plan: RunPlan, run_date: dt.date, scored_at: dt.datetime) -> "RunIdentity":
    from udfs.metrics import RunIdentity

    bundle = plan.bundle
    return RunIdentity(
        run_id=f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        run_date=run_date,
        model_name=bundle.name,
        model_version=bundle.version,
        model_sha256=bundle.sha256,
        source=plan.source_name,
        source_version=plan.source.version,
        threshold=bundle.threshold,
    )


def _replace_run(df: DataFrame, path: Path, run_date: dt.date) -> None:
    """Replace the rows of `run_date` in the Delta table at `path` with `df`, in one commit.

    The predicate names only the partition column, so Delta drops the date's old files without
    rewriting any (a predicate on another column would rewrite the partition's files first).
    A date holds one run: re-running it, with any model, replaces it. Every row has the run's
    date, so the write skips Spark's sort by partition (lake.unsorted_partition_writes).
    """
    condition = f"{S.RUN_DATE} = DATE'{run_date.isoformat()}'"
    with lake.unsorted_partition_writes(df.sparkSession):
        (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", condition)
            .option("mergeSchema", "true")  # a source with other key/allowed columns adds columns
            .partitionBy(S.RUN_DATE)
            .save(str(path))
        )
