"""The nightly report of a published night: read the lake with Spark, render the page
(lakescore.report), write it to `<lake.root>/reports/<source>/<model>/<run_date>.html`.

    write_report        one page, on demand (`lakescore report --run-date D [--model M]`)
    write_night_report  what a nightly run calls once it has published (pipelines.nightly): the
                        page of its primary model; a failure logs a warning and never fails the night

What is read, aggregated in Spark so that only small results reach the driver:
    run_metrics  one query: the model's last `report.runs` nights on the source (both roles; the
                 score histograms of the report's night only) and every run of that night;
    flagged      the published rows (lakescore.lake.published_flagged) of the night's run and of
                 the run scored beside it: reasons counted per feature (one query) and, when a
                 shadow ran, the rows each model flagged, counted by record key (one more).
Sensitive columns: no row's values are read back, only feature names and counts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from lakescore import lake
from lakescore import report
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.feedback import source_name
from lakescore.report import Night, ReportError

if TYPE_CHECKING:
    from lakescore.bundle import Bundle
    from pipelines.nightly import RunPlan

log = logging.getLogger(__name__)

# Under the lake root: reports/<source>/<model>/<run_date>.html
REPORTS_DIR = "reports"
_METRIC_COLUMNS = (S.RUN_ID, S.RUN_DATE, S.MODEL_NAME, S.MODEL_VERSION, S.SCORING_ROLE, S.SCOPE, S.FEATURE, S.METRIC, S.VALUE)

__all__ = ["REPORTS_DIR", "ReportError", "report_path", "write_night_report", "write_report"]


def report_path(settings: Settings, source: str, model: str, run_date: dt.date) -> Path:
    """Where the page of (source, model, run_date) lands. `source` as run_metrics names it: a
    catalog table keeps its name (`lakescore.transactions`); a path becomes a folder name of its
    last parts and a short hash of the whole (`data_lake_events-1a2b3c4d`)."""
    if "/" in source:
        tail = re.sub(r"[^A-Za-z0-9._-]+", "_", "/".join(Path(source).parts[-2:])).strip("_.")
        folder = f"{tail or 'source'}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"
    else:
        folder = source
    return settings.lake.root / REPORTS_DIR / folder / model / f"{run_date.isoformat()}.html"


def write_report(
    spark: SparkSession,
    settings: Settings,
    *,
    source: str | None = None,
    model: str | None = None,
    run_date: dt.date,
    out: Path | None = None,
    bundles: Sequence["Bundle"] = (),
) -> Path:
    """Render the page of `model`'s published run on `source` for `run_date`; return its path.

    Args:
        source: catalog table or path, as the run was given it (default settings.score.table).
        model: the model's name (`name@version` is taken as its name; default settings.score.model).
        out: write here instead of `report_path`.
        bundles: bundles already in memory (a nightly run's), whose reference statistics are used
            instead of reading the registry.

    Raises ReportError when the model has no published run on the source that night. The page is
    written to a temporary file beside its place, then renamed: a reader never sees half a page.
    """
    started = time.perf_counter()
    source = source_name(settings, source or settings.score.table)
    model = (model or settings.score.model).split("@", 1)[0]
    metrics = read_report_metrics(spark, settings, source, model, run_date, settings.report.runs)
    night = report.choose_night(metrics, source, model, run_date)
    read_metrics = time.perf_counter()
    reasons, overlap = read_flagged_summary(spark, settings, night)
    read_flagged = time.perf_counter()
    version = int(metrics.loc[metrics[S.RUN_ID] == night.run_id, S.MODEL_VERSION].iloc[0])
    page = report.build_report(
        night, metrics, reasons, runs=settings.report.runs,
        reference=_reference(spark, settings, model, version, bundles), overlap=overlap,
    )
    path = Path(out) if out is not None else report_path(settings, source, model, run_date)
    _write_atomically(path, report.render_report(page))
    done = time.perf_counter()
    log.info(
        "report of %s on %s for %s written in %.1fs (run_metrics %.1fs, flagged %.1fs, page %.1fs): %s",
        model, source, run_date, done - started, read_metrics - started, read_flagged - read_metrics, done - read_flagged, path,
    )
    return path


def write_night_report(spark: SparkSession, settings: Settings, plan: "RunPlan", run_date: dt.date) -> Path | None:
    """After a night is published: write the page of its primary model. A report is for people
    and the night is already published, so a failure logs a warning (with the command that
    retries it) and returns None instead of raising."""
    try:
        return write_report(
            spark, settings, source=plan.source_name, model=plan.bundle.name, run_date=run_date, bundles=plan.bundles
        )
    except Exception as exc:  # noqa: BLE001 - the published night must not fail for its report
        log.warning(
            "the night of %s on %s for %s is published, but its report failed (%s); render it with "
            "`lakescore report --run-date %s --model %s --table %s`",
            plan.bundle.name, plan.source_name, run_date, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            run_date, plan.bundle.name, plan.source_name,
        )
        return None


def read_report_metrics(
    spark: SparkSession, settings: Settings, source: str, model: str, run_date: dt.date, runs: int
) -> pd.DataFrame:
    """run_metrics' rows a page needs, as pandas (one Spark query): the last `runs` nights up to
    `run_date` of each role of `model` on `source`, and every run of `source` on `run_date`; score
    histogram bins of that night only. ReportError before the first run."""
    path = lake.table_path(settings, S.RUN_METRICS)
    if not (path / "_delta_log").is_dir():
        raise ReportError(f"{path} holds no run_metrics yet; score a night first (`lakescore score --run-date {run_date}`)")
    metrics = (
        spark.read.format("delta")
        .load(str(path))
        .where((F.col(S.SOURCE_TABLE) == source) & (F.col(S.RUN_DATE) <= F.lit(run_date)))
    )
    # Each slice (model, role) holds one run per night: its nights ranked newest first.
    newest_first = Window.partitionBy(S.MODEL_NAME, S.SCORING_ROLE).orderBy(F.col(S.RUN_DATE).desc())
    the_night = F.col(S.RUN_DATE) == F.lit(run_date)
    wanted = (
        metrics.withColumn("_night", F.dense_rank().over(newest_first))
        .where(((F.col(S.MODEL_NAME) == model) & (F.col("_night") <= runs)) | the_night)
        .where((F.col(S.METRIC) != report.HISTOGRAM_METRIC) | the_night)
        .select(*_METRIC_COLUMNS)
    )
    rows = wanted.collect()
    return pd.DataFrame([r.asDict() for r in rows], columns=list(_METRIC_COLUMNS))


def read_flagged_summary(spark: SparkSession, settings: Settings, night: Night) -> tuple[pd.DataFrame, dict[str, int] | None]:
    """(reasons per run_id and feature, the champion/shadow overlap or None) of the night's runs,
    from the published flagged rows, in one Spark query. Only feature names and counts are collected."""
    columns = [S.RUN_ID, "feature", "rows", "first", "mean_contribution"]
    flagged = lake.published_flagged(spark, settings)
    if flagged is None:
        return pd.DataFrame(columns=columns), None
    run_ids = [r for r in (night.run_id, night.partner_run_id) if r is not None]
    rows = flagged.where(
        (F.col(S.RUN_DATE) == F.lit(night.run_date)) & (F.col(S.SOURCE_TABLE) == night.source) & F.col(S.RUN_ID).isin(run_ids)
    )
    # Reasons: per run and feature, the rows naming it, as their first reason, and its mean contribution.
    summary = (
        rows.select(S.RUN_ID, F.posexplode(S.REASONS).alias("position", "reason"))
        .groupBy(S.RUN_ID, F.col(f"reason.{S.REASON_FEATURE}").alias("feature"))
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum((F.col("position") == 0).cast("long")).alias("first"),
            F.avg(f"reason.{S.REASON_CONTRIBUTION}").alias("mean_contribution"),
        )
        .withColumn("champion", F.lit(None).cast("int"))
        .withColumn("shadow", F.lit(None).cast("int"))
    )
    if night.partner_run_id is not None:
        # Overlap: record keys by which of the two runs flagged them (run_id NULL marks these rows).
        by_key = (
            rows.groupBy(S.RECORD_KEY)
            .agg(
                F.max((F.col(S.RUN_ID) == night.champion_run_id).cast("int")).alias("champion"),
                F.max((F.col(S.RUN_ID) == night.shadow_run_id).cast("int")).alias("shadow"),
            )
            .groupBy("champion", "shadow")
            .agg(F.count(F.lit(1)).alias("rows"))
        )
        summary = summary.unionByName(by_key, allowMissingColumns=True)
    collected = pd.DataFrame([r.asDict() for r in summary.collect()], columns=[*columns, "champion", "shadow"])
    reasons = collected[collected[S.RUN_ID].notna()][columns].reset_index(drop=True)
    if night.partner_run_id is None:
        return reasons, None
    counts = {(int(r.champion), int(r.shadow)): int(r.rows) for r in collected[collected[S.RUN_ID].isna()].itertuples()}
    return reasons, {"both": counts.get((1, 1), 0), "champion_only": counts.get((1, 0), 0), "shadow_only": counts.get((0, 1), 0)}


def _reference(
    spark: SparkSession, settings: Settings, model: str, version: int, bundles: Sequence["Bundle"]
) -> Mapping[str, Any] | None:
    """The reference statistics of model@version: from `bundles` when one is it, else from the
    registry; None (the page says so) when the bundle cannot be read."""
    for bundle in bundles:
        if (bundle.name, bundle.version) == (model, version):
            return bundle.reference
    from lakescore.registry import load_registered

    try:
        return load_registered(spark, settings, f"{model}@{version}")[1].reference
    except (ValueError, OSError) as exc:  # RegistryError, BundleError: the page is still worth having
        log.warning("the report shows no score reference: %s", str(exc).splitlines()[0])
        return None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
