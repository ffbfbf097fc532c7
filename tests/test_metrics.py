"""udfs.metrics: a run's metric rows from its totals, without Spark."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from lakescore import schemas as S
from lakescore.drift import psi
from transactions_rows import raw_transactions
from udfs.metrics import RunIdentity, metric_records
from udfs.run_totals import RunTotals, RunTotalsLayout
from udfs.scorer import build_scoring_model, score_rows


def _run(bundle) -> RunIdentity:
    return RunIdentity("r1", dt.date(2026, 11, 4), bundle.name, bundle.version, bundle.sha256, "lakescore.t", 7, bundle.threshold)


def test_metric_records_hold_counts_rates_quantiles_psi_and_end_with_run_complete(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(800, seed=9)
    batch = score_rows(scoring, raw, top_k=3)
    parts = scoring.layout.split(batch.totals.counts)
    when = dt.datetime(2026, 11, 5, 3, 0)
    records = metric_records(
        _run(mlp_bundle), scoring.layout, batch.totals, rows_read=800, reference=mlp_bundle.reference,
        scoring_seconds=2.0, duration_seconds=2.5, recorded_at=when,
    )
    by_key = {(r[6], r[7], r[8]): r[9] for r in records}
    assert records[-1][8] == S.RUN_COMPLETE_METRIC and records[-1][9] == 1.0
    assert all(r[:6] == ("r1", dt.date(2026, 11, 4), "lakescore.t", "tx", 1, S.PRIMARY) and r[10] == when for r in records)
    assert by_key[("run", None, "rows_read")] == by_key[("run", None, "rows_scored")] == 800
    assert by_key[("run", None, "rows_flagged")] == batch.flagged.sum()
    assert by_key[("run", None, "flag_rate")] == pytest.approx(batch.flagged.mean())
    assert by_key[("score", None, "mean")] == pytest.approx(batch.scores.mean())
    assert by_key[("score", None, "max")] == batch.scores.max()
    exact_p99 = np.quantile(batch.scores, 0.99, method="inverted_cdf")
    assert by_key[("score", None, "p99")] == pytest.approx(exact_p99, rel=0.01)
    assert by_key[("source", "lakescore.t", "source_version")] == 7
    assert by_key[("model", mlp_bundle.sha256, "model_sha256")] == 1
    expected_psi = psi(mlp_bundle.reference["features"]["log_amount"]["fractions"], parts.feature_bins["log_amount"])
    assert by_key[("feature", "log_amount", "psi")] == pytest.approx(expected_psi)
    histogram = [r for r in records if r[8] == "histogram_count"]
    assert sum(r[9] for r in histogram) == 800
    assert [r[7] for r in histogram] == sorted(r[7] for r in histogram)


def test_metric_records_of_an_empty_run_count_zero_and_leave_rates_and_quantiles_null(mlp_bundle):
    layout = RunTotalsLayout.from_bundle(mlp_bundle)
    records = metric_records(
        _run(mlp_bundle), layout, RunTotals(layout.size), rows_read=0, reference=mlp_bundle.reference,
        scoring_seconds=0.5, duration_seconds=1.0, recorded_at=dt.datetime(2026, 11, 5),
    )
    by_key = {(r[6], r[7], r[8]): r[9] for r in records}
    assert by_key[("run", None, "rows_read")] == 0 and by_key[("run", None, "rows_scored")] == 0
    assert by_key[("run", None, "flag_rate")] is None
    assert by_key[("score", None, "p50")] is None and by_key[("score", None, "mean")] is None
    assert by_key[("score", None, "min")] is None
    assert by_key[("feature", "log_amount", "psi")] is None
    assert records[-1][8] == S.RUN_COMPLETE_METRIC
