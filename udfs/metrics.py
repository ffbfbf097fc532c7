"""A scoring run's metric summary, in `run_metrics`' long format (one value per row).

Built on the driver from the `RunTotals` the scoring UDF added to a Spark accumulator during the
one pass that wrote the flagged rows. Plain Python: unit-tested without Spark.

Why an accumulator and not `DataFrame.observe`: observe's CollectMetrics node and
percentile_approx cost a large share of the scoring stage (see docs/measurements.md, "Scoring
worker and UDF"); the UDF already holds every batch in numpy, so it counts there and ships one
small vector per task. Spark merges a result stage's accumulator updates once per partition
(successful attempts only), which is the same guarantee observe has (it is built on one).

Rows, as (scope, feature, metric, value):
    run      NULL          rows_read, rows_scored, rows_flagged, flag_rate, rows_with_invalid,
                           threshold, scoring_seconds (the pass over the rows), duration_seconds
                           (up to the metrics commit), and last `run_complete` = 1
    source   <source>      source_version   (Delta version read; NULL for Parquet)
    model    <sha256>      model_sha256     (value: the model version)
    feature  <feature>     invalid_values   (null/NaN/inf/unknown values imputed), psi
    score    NULL          p50, p90, p99, p99_9 (from a fine histogram, see udfs.run_totals.ScoreGrid),
                           mean, min, max, psi
    score    <bin label>   histogram_count  (bins of the bundle's reference score histogram;
                                             the first and last bins are open-ended)
`feature` names what a row is about: a feature, a histogram bin, the source or the bundle.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Mapping

from pyspark.accumulators import AccumulatorParam

from lakescore import schemas as S
from lakescore.drift import psi
from udfs.run_totals import RunTotals, RunTotalsLayout

RUN = "run"
SOURCE = "source"
MODEL = "model"
FEATURE = "feature"
SCORE = "score"

# Score quantiles recorded per run: metric name -> probability.
SCORE_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99_9": 0.999}


@dataclass(frozen=True)
class RunIdentity:
    """Who scored what: the columns every metric row of a run repeats."""

    run_id: str
    run_date: dt.date
    model_name: str
    model_version: int
    model_sha256: str
    source: str
    source_version: int | None
    threshold: float
    scoring_role: str = S.PRIMARY  # S.SHADOW for a challenger scored beside the primary model


class RunTotalsParam(AccumulatorParam):
    """Adds up `RunTotals` in a Spark accumulator: `sc.accumulator(RunTotals(layout.size), RunTotalsParam())`."""

    def zero(self, value: RunTotals) -> RunTotals:
        return RunTotals(len(value.counts))

    def addInPlace(self, value1: RunTotals, value2: RunTotals) -> RunTotals:
        return value1.add(value2)


def metric_records(
    run: RunIdentity,
    layout: RunTotalsLayout,
    totals: RunTotals,
    *,
    rows_read: int,
    reference: Mapping[str, Any],
    scoring_seconds: float,
    duration_seconds: float,
    recorded_at: dt.datetime,
) -> list[tuple]:
    """All metric rows of one run, in RUN_METRICS_SCHEMA column order, `run_complete` last.

    Undefined values (the flag rate of zero rows, quantiles of no scores, PSI without rows) are
    NULL, never NaN, so SQL aggregates over runs stay meaningful.

    Eight arguments, the last five keyword-only: each is the source of some of the rows (the
    run's identity, its totals read through `layout`, and the figures only the job knows), and
    grouping them would only move the list into another class.
    """
    parts = layout.split(totals.counts)
    scored = parts.rows > 0
    rows: list[tuple[str, str | None, str, float | None]] = [
        (RUN, None, "rows_read", rows_read),
        (RUN, None, "rows_scored", parts.rows),
        (RUN, None, "rows_flagged", parts.rows_flagged),
        (RUN, None, "flag_rate", parts.rows_flagged / parts.rows if parts.rows else None),
        (RUN, None, "rows_with_invalid", parts.rows_with_invalid),
        (RUN, None, "threshold", run.threshold),
        (SOURCE, run.source, "source_version", run.source_version),
        (MODEL, run.model_sha256, "model_sha256", run.model_version),
    ]
    reference_features = reference.get("features", {})
    for name in layout.features:
        rows.append((FEATURE, name, "invalid_values", parts.invalid[name]))
        if name in parts.feature_bins and name in reference_features:
            rows.append((FEATURE, name, "psi", psi(reference_features[name]["fractions"], parts.feature_bins[name])))
    for metric, q in SCORE_QUANTILES.items():
        rows.append((SCORE, None, metric, layout.grid.quantile(parts.score_grid, q)))
    rows += [
        (SCORE, None, "mean", totals.score_sum / parts.rows if scored else None),
        (SCORE, None, "min", totals.score_min if scored else None),
        (SCORE, None, "max", totals.score_max if scored else None),
    ]
    if "score" in reference:
        rows.append((SCORE, None, "psi", psi(reference["score"]["fractions"], parts.score_bins)))
    edges = layout.score_edges
    for i, count in enumerate(parts.score_bins.tolist()):
        rows.append((SCORE, histogram_bin_label(i, edges[i], edges[i + 1]), "histogram_count", count))
    rows.append((RUN, None, "scoring_seconds", scoring_seconds))
    rows.append((RUN, None, "duration_seconds", duration_seconds))
    rows.append((RUN, None, S.RUN_COMPLETE_METRIC, 1.0))
    return [
        (
            run.run_id, run.run_date, run.source, run.model_name, run.model_version, run.scoring_role,
            scope, feature, metric, _number(value), recorded_at,
        )
        for scope, feature, metric, value in rows
    ]


def histogram_bin_label(index: int, low: float, high: float) -> str:
    """`03:[0.0125,0.0311)`: sorts in bin order and shows the edges."""
    return f"{index:02d}:[{low:.6g},{high:.6g})"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
