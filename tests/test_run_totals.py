"""udfs.run_totals: what batches add up to, the score grid's quantiles and the histogram bins, without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from lakescore.drift import bin_index
from lakescore.features import TRANSACTIONS_V1
from scoring_bundles import AUTOENCODER, MLP
from transactions_rows import N_FEATURES, raw_transactions
from udfs.metrics import RunTotalsParam
from udfs.run_totals import RunTotalsLayout, ScoreGrid, count_batch
from udfs.scorer import build_scoring_model, score_rows


def test_batch_totals_add_up_to_the_totals_of_the_whole_and_every_histogram_counts_every_row(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(700, seed=7)
    whole = score_rows(scoring, raw, top_k=3)
    totals = RunTotalsParam().zero(whole.totals)
    for piece in (raw.iloc[:300], raw.iloc[300:]):
        totals = RunTotalsParam().addInPlace(totals, score_rows(scoring, piece, top_k=3).totals)
    np.testing.assert_array_equal(whole.totals.counts, totals.counts)
    assert totals.score_sum == pytest.approx(whole.scores.sum())
    assert (totals.score_min, totals.score_max) == (whole.scores.min(), whole.scores.max())
    parts = scoring.layout.split(totals.counts)
    assert parts.rows == totals.rows == 700
    assert set(parts.feature_bins) == set(TRANSACTIONS_V1.features)
    assert all(bins.sum() == 700 for bins in parts.feature_bins.values())
    assert parts.score_bins.sum() == parts.score_grid.sum() == 700


@pytest.mark.parametrize("kind", [MLP, AUTOENCODER])
def test_score_quantiles_read_from_the_grid_are_within_half_a_bin_of_the_exact_ones(kind):
    grid = ScoreGrid.for_kind(kind)
    rng = np.random.default_rng(11)
    scores = rng.beta(0.3, 8.0, 20_000) if kind == MLP else rng.lognormal(-3.0, 1.5, 20_000)
    counts = np.bincount(grid.index(scores), minlength=grid.bins)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = np.quantile(scores, q, method="inverted_cdf")
        approx = grid.quantile(counts, q)
        if kind == MLP:
            assert abs(np.log(approx / (1 - approx)) - np.log(exact / (1 - exact))) <= grid.step / 2 + 1e-9
        else:
            assert abs(np.log(approx) - np.log(exact)) <= grid.step / 2 + 1e-9
    assert grid.quantile(np.zeros(grid.bins, dtype=np.int64), 0.5) is None


def test_all_features_are_binned_at_once_exactly_as_drift_bin_index_bins_each(mlp_bundle):
    layout = RunTotalsLayout.from_bundle(mlp_bundle)
    rng = np.random.default_rng(10)
    x = rng.normal(0.0, 2.0, size=(500, N_FEATURES)).astype(np.float32)
    sorted_, compared = [], []
    for i, name in enumerate(layout.binned):
        (sorted_ if len(layout.feature_edges[i]) > 4 else compared).append(layout.features.index(name))
    assert sorted_ and compared  # both ways of binning are checked: continuous features and flags
    for column in (sorted_[0], compared[0]):
        edges = layout.feature_edges[layout.binned.index(layout.features[column])]
        # NaN, below the first edge, exactly on edges (the smallest float32 at or above each), beyond the last.
        on = [_float32_at_or_above(e) for e in edges]
        x[:6, column] = [np.nan, edges[0] - 1.0, on[0], on[1], on[-1], edges[-1] + 5.0]
    scores = rng.random(500)
    parts = layout.split(count_batch(layout, x, x, scores, scores > 0.5, np.zeros(N_FEATURES)))
    for i, name in enumerate(layout.features):
        expected = np.bincount(bin_index(x[:, i], layout.feature_edges[i]), minlength=len(layout.feature_edges[i]) - 1)
        np.testing.assert_array_equal(parts.feature_bins[name], expected)
    np.testing.assert_array_equal(parts.score_bins, np.bincount(bin_index(scores, layout.score_edges), minlength=len(layout.score_edges) - 1))


def _float32_at_or_above(value: float) -> np.float32:
    v = np.float32(value)
    return v if v >= value else np.nextafter(v, np.float32(np.inf))
