"""Nightly scoring: score one date partition of a source table with a registered model, write the
flagged rows and the run's metrics to the lake as Delta tables.

Embedded default (this machine; `make setup` made .venv and .jars):

    PYSPARK_PYTHON=$PWD/.venv/bin/python .venv/bin/spark-submit --driver-memory 4g \\
      --jars "$(ls .jars/*.jar | paste -sd,)" \\
      jobs/score_nightly.py --run-date 2026-11-27

(in local mode the driver is the executor: spark-submit's default 1g heap keeps the GC busy;
`lakescore score` starts its own JVM with 4g).

or `lakescore score --run-date 2026-11-27`. A cluster whose machines do not have lakescore
installed gets the code as a zip (`lakescore package` -> dist/lakescore-0.1.0.zip), the Delta jars
from Maven (or --jars), a Python with numpy/pandas/pyarrow/torch/safetensors on every executor,
and the shared metastore and lake root:

    spark-submit --master spark://HOST:7077 \\
      --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
      --py-files dist/lakescore-0.1.0.zip \\
      --conf spark.pyspark.python=/opt/lakescore-env/bin/python \\
      --conf spark.hadoop.javax.jdo.option.ConnectionURL='jdbc:postgresql://metastore/hive' \\
      jobs/score_nightly.py --run-date 2026-11-27 --model transactions --table transactions \\
      --set lake.root=/shared/lake

Options: `--table` a catalog table or a path (Delta or Parquet, detected); `--model name` (its
champion) or `name@version`, or `--bundle DIR` for a bundle outside the registry; `--run-date D`
(default: yesterday, UTC) or `--from A --to B`, which runs each date as its own run.

What a run writes, in this order:
1. `flagged` (partitioned by run_date): the flagged rows of the date with keys, allow-listed
   columns, score, threshold, reasons and provenance, replacing that date's rows in ONE Delta
   commit (`replaceWhere` on run_date), so a re-run never duplicates rows;
2. `run_metrics`: the run's metrics (long format), added up by the scoring UDF in the same pass
   over the data that wrote `flagged` (the model runs once per row), with the `run_complete` row,
   in one commit.
A run that dies before step 1 commits leaves both tables as they were. One that dies between the
two commits leaves a `flagged` date whose run_id has no `run_complete` row: re-run the date.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, print_rows, setup
from lakescore import lake
from lakescore import schemas as S
from lakescore.bundle import Bundle, BundleError, load_bundle
from lakescore.config import Settings
from lakescore.features import feature_set_from_manifest
from lakescore.registry import RegistryError, load_registered
from lakescore.spark import build_spark_session

if TYPE_CHECKING:  # the scoring code imports torch: only when a run starts (fast `--help`, `lakescore sql`)
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


def run_score(
    spark: SparkSession,
    settings: Settings,
    run_date: dt.date | None = None,
    *,
    last_date: dt.date | None = None,
    source: str | None = None,
    model: str | None = None,
    bundle_path: Path | str | None = None,
) -> list[RunSummary]:
    """Score `source` for `run_date` (or each date from `run_date` to `last_date`) and write
    `flagged` and `run_metrics`; return one summary per run.

    Args:
        run_date: the date partition to score (settings.score.date_column); default yesterday (UTC).
        last_date: with it, every date from run_date to last_date, each its own run and commits.
        source: catalog table or path (default settings.score.table).
        model: `name` (champion) or `name@version` (default settings.score.model).
        bundle_path: a bundle directory to use instead of the registry.

    Raises, before anything is written: BundleError (a bundle that fails verification),
    RegistryError, lake.SourceError, ValueError (missing/mistyped columns, bad dates).
    """
    from udfs.broadcast import broadcast_bundle
    from udfs.flagged import choose_output_columns, scan_columns
    from udfs.scoring import check_source_columns

    score = settings.score
    bundle = load_bundle(bundle_path) if bundle_path else load_registered(spark, settings, model or score.model)[1]
    resolved = lake.resolve_source(spark, settings, source or score.table)
    df = lake.read_source(spark, resolved)
    where = f"source {resolved.name}"

    # Every check that can fail on the input runs here, before the first write.
    feature_set = bundle.manifest.feature_set.build()
    check_source_columns(df, feature_set, where)
    output = choose_output_columns(df.columns, score, where)
    days, dated = _run_dates(df, settings, run_date, last_date, where)

    # Only what flagged and the model need leaves the scan (a date column, only if flagged cannot
    # take it from the run).
    needed, run_date_column = scan_columns(output, list(feature_set.inputs), df.schema, score.date_column if dated else None)
    broadcast = broadcast_bundle(spark, bundle)
    summaries = []
    for day in days:
        rows = (df.filter(F.col(score.date_column) == F.lit(day)) if dated else df).select(*needed)
        summaries.append(_score_one(spark, settings, rows, day, bundle, broadcast, resolved, output, run_date_column))
    return summaries


def _run_dates(
    df: DataFrame, settings: Settings, first: dt.date | None, last: dt.date | None, where: str
) -> tuple[list[dt.date], bool]:
    """(dates to run, whether to filter on the date column)."""
    column = settings.score.date_column
    first = first or (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))
    if column not in df.columns:
        if last is not None:
            raise ValueError(
                f"{where} has no date column {column!r}, so a date range cannot be scored; "
                "score it whole with --run-date only, or set score.date_column"
            )
        log.info("%s has no %s column: scoring every row as the run of %s", where, column, first)
        return [first], False
    last = last or first
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}; give the range in order")
    days = (last - first).days + 1
    return [first + dt.timedelta(days=i) for i in range(days)], True


def _score_one(
    spark: SparkSession,
    settings: Settings,
    rows: DataFrame,
    run_date: dt.date,
    bundle: Bundle,
    broadcast: Broadcast,
    resolved: lake.Source,
    output: OutputColumns,
    run_date_column: str | None,
) -> RunSummary:
    started = time.perf_counter()
    scored_at = dt.datetime.now(dt.timezone.utc)
    from udfs.core import MetricLayout
    from udfs.flagged import flagged_records
    from udfs.metrics import RunIdentity, metric_records
    from udfs.scoring import new_run_totals, score_dataframe

    run = RunIdentity(
        run_id=f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        run_date=run_date,
        model_name=bundle.name,
        model_version=bundle.version,
        model_sha256=bundle.sha256,
        source=resolved.name if "/" in resolved.name else settings.table(resolved.name),
        source_version=resolved.version,
        threshold=bundle.threshold,
    )
    log.info("run %s: scoring %s for %s with %s", run.run_id, run.source, run_date, bundle.label)
    # Rows in the source partition, counted without the model (Parquet footers or Delta
    # statistics, no column is decoded): the UDF's own count of rows scored is checked against it.
    rows_read = rows.count()
    totals = new_run_totals(spark, bundle)
    scored = score_dataframe(
        rows,
        broadcast,
        top_k=settings.score.top_reasons,
        totals=totals,
        where=f"source {resolved.name}",
        flagged_only=True,  # the job writes only flagged rows; the totals still count every row
    )
    # The one action over the source rows: the flagged rows are written while the UDF adds up the
    # metrics of every row into `totals` (no cache, no second pass, no second model run).
    flagged_path = lake.table_path(settings, S.FLAGGED)
    _replace_run(flagged_records(scored, output, run, scored_at, run_date_column), flagged_path, run)
    scoring_seconds = time.perf_counter() - started
    run_totals = totals.value
    if run_totals.rows != rows_read:
        log.warning("run %s: %d rows read but %d scored", run.run_id, rows_read, run_totals.rows)

    layout = MetricLayout.from_bundle(bundle)
    records = metric_records(
        run,
        layout,
        run_totals,
        rows_read=rows_read,
        reference=bundle.reference,
        scoring_seconds=scoring_seconds,
        duration_seconds=time.perf_counter() - started,
        recorded_at=dt.datetime.now(dt.timezone.utc),
    )
    metrics_path = lake.table_path(settings, S.RUN_METRICS)
    _replace_run(spark.createDataFrame(records, S.RUN_METRICS_SCHEMA), metrics_path, run)
    lake.register_table(spark, settings, S.FLAGGED, flagged_path, "delta")
    lake.register_table(spark, settings, S.RUN_METRICS, metrics_path, "delta")
    duration = time.perf_counter() - started
    counts = layout.split(run_totals.counts)
    log.info("run %s: %d rows, %d flagged in %.1fs", run.run_id, counts.rows, counts.rows_flagged, duration)
    return RunSummary(
        run_id=run.run_id,
        run_date=run_date,
        model=bundle.label,
        source=run.source,
        source_version=resolved.version,
        rows_read=rows_read,
        rows_scored=counts.rows,
        rows_flagged=counts.rows_flagged,
        scoring_seconds=scoring_seconds,
        duration_seconds=duration,
    )


def _replace_run(df: DataFrame, path: Path, run: RunIdentity) -> None:
    """Replace the rows of `run.run_date` in the Delta table at `path` with `df`, in one commit.

    The predicate names only the partition column, so Delta drops the date's old files without
    rewriting any (a predicate on another column would rewrite the partition's files first).
    A date holds one run: re-running it, with any model, replaces it. Every row has the run's
    date, so the write skips Spark's sort by partition (lake.unsorted_partition_writes).
    """
    condition = f"{S.RUN_DATE} = DATE'{run.run_date.isoformat()}'"
    with lake.unsorted_partition_writes(df.sparkSession):
        (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", condition)
            .option("mergeSchema", "true")  # a source with other key/allowed columns adds columns
            .partitionBy(S.RUN_DATE)
            .save(str(path))
        )


def score(
    run_date: Optional[str] = typer.Option(None, "--run-date", help="Date partition to score, YYYY-MM-DD (default: yesterday, UTC)."),
    first: Optional[str] = typer.Option(None, "--from", help="First date of a range (each date is its own run)."),
    last: Optional[str] = typer.Option(None, "--to", help="Last date of a range."),
    table: Optional[str] = typer.Option(None, help="Catalog table or path, Delta or Parquet (default: score.table)."),
    model: Optional[str] = typer.Option(None, help="`name` (its champion) or `name@version` (default: score.model)."),
    bundle: Optional[Path] = typer.Option(None, help="Score with this bundle directory instead of the registry."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Score a date partition with the champion model; write lakescore.flagged and lakescore.run_metrics."""
    settings = setup(config, set_, {"score.table": table, "score.model": model}, verbose)
    try:
        if run_date and (first or last):
            raise ValueError("give either --run-date or --from/--to, not both")
        if (first is None) != (last is None):
            raise ValueError("a range needs both --from and --to")
        start = dt.date.fromisoformat(run_date or first) if (run_date or first) else None
        end = dt.date.fromisoformat(last) if last else None
    except ValueError as exc:
        fail(str(exc))
    spark = build_spark_session(settings, app_name="lakescore-score")
    try:
        summaries = run_score(spark, settings, start, last_date=end, bundle_path=bundle)
    except (BundleError, RegistryError, lake.SourceError, ValueError) as exc:
        fail(str(exc))
    finally:
        spark.stop()
    print_rows(
        [
            {
                "run_date": s.run_date,
                "run_id": s.run_id,
                "model": s.model,
                "rows": s.rows_read,
                "flagged": s.rows_flagged,
                "flag_rate": s.rows_flagged / s.rows_read if s.rows_read else None,
                "seconds": s.duration_seconds,
                "rows_per_s": s.rows_read / s.scoring_seconds if s.scoring_seconds else None,
            }
            for s in summaries
        ],
        ["run_date", "run_id", "model", "rows", "flagged", "flag_rate", "seconds", "rows_per_s"],
    )


def main() -> None:
    typer.run(score)


if __name__ == "__main__":
    main()
