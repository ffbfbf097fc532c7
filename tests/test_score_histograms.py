"""Metrics from fine score histograms against scikit-learn on the exact scores, within the error
bound each histogram states; thresholds chosen from histograms against the exact policies."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from training import evaluation as E
from training import score_histograms as H
from training.thresholds import choose_threshold, choose_threshold_binned

# Float noise only: the stated bound is the tolerance, this covers its last bits.
ROUNDING = 1e-12


def windows():
    """Scores and labels where binning matters: random, heavily tied, a few anomalies, errors."""
    rng = np.random.default_rng(11)
    n = 20_000
    labels = rng.random(n) < 0.01
    yield "probability", H.ScoreBins.of(H.LOGIT), 1 / (1 + np.exp(-(rng.normal(size=n) + 3 * labels))), labels
    tied = np.round(rng.random(n) * 0.5 + 0.5 * labels * rng.random(n), 2)  # 100 distinct values
    yield "many ties", H.ScoreBins.of(H.UNIT), tied, labels
    few = np.zeros(n, bool)
    few[[3, 500, 9000]] = True
    yield "three anomalies", H.ScoreBins.of(H.LOGIT), rng.random(n) * 0.9 + 0.1 * few, few
    errors = np.exp(rng.normal(size=n) * 2 + 4 * labels) * 1e-3
    yield "reconstruction errors", H.ScoreBins.of(H.LOG), errors, labels
    coarse = rng.random(n) ** 3 + labels * 0.2
    yield "coarse bins, a visible error", H.ScoreBins.of(H.UNIT, bins=64), coarse, labels


@pytest.mark.parametrize("name, bins, scores, labels", list(windows()), ids=[w[0] for w in windows()])
def test_aucs_and_precision_at_k_from_histograms_lie_within_their_stated_error_of_sklearn(name, bins, scores, labels):
    histograms = H.Histograms.of(bins, scores, labels)
    got = H.evaluate(histograms, threshold=0.5, k=100)
    exact = E.evaluate(scores, labels, threshold=0.5, k=100)
    assert abs(got["aucpr"] - average_precision_score(labels, scores)) <= got["aucpr_error"] + ROUNDING
    assert abs(got["aucroc"] - roc_auc_score(labels, scores)) <= got["aucroc_error"] + ROUNDING
    assert abs(got["precision_at_k"] - exact["precision_at_k"]) <= got["precision_at_k_error"] + ROUNDING
    assert (got["rows"], got["anomalies"]) == (exact["rows"], exact["anomalies"])


def test_coarse_bins_state_an_error_that_fine_bins_shrink():
    _, _, scores, labels = list(windows())[-1]
    coarse = H.evaluate(H.Histograms.of(H.ScoreBins.of(H.UNIT, bins=64), scores, labels), 0.5, 100)
    fine = H.evaluate(H.Histograms.of(H.ScoreBins.of(H.UNIT), scores, labels), 0.5, 100)
    assert coarse["aucroc_error"] > 100 * fine["aucroc_error"] > 0
    assert fine["aucroc_error"] < 1e-4 and fine["aucpr_error"] < 1e-3


def test_a_top_bin_of_saturated_probabilities_adds_no_error():
    scores = np.array([1.0, 1.0, 1.0, 0.2, 0.1, 1.0])
    labels = np.array([True, True, False, False, False, True])
    got = H.evaluate(H.Histograms.of(H.ScoreBins.of(H.LOGIT), scores, labels), 0.5, 3)
    assert got["aucroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["aucpr"] == pytest.approx(average_precision_score(labels, scores))
    assert got["aucroc_error"] == 0.0 and got["aucpr_error"] == 0.0


def test_counts_at_an_inserted_threshold_are_exact_and_nan_scores_are_never_flagged():
    scores = np.array([0.1, 0.3, 0.7312, 0.7312, 0.9, np.nan, 0.5, 0.99])
    labels = np.array([False, False, True, False, True, True, False, True])
    bins = H.ScoreBins.of(H.LOGIT).with_thresholds([0.7312])
    got = H.evaluate(H.Histograms.of(bins, scores, labels), 0.7312, 3)
    # Exact: rows >= 0.7312 are 0.7312 (x2), 0.9, 0.99; NaN counts as an unflagged anomaly.
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (3, 1, 1, 3)
    assert got["precision"] == 0.75 and got["recall"] == 0.75


def test_metrics_by_type_recall_each_type_exactly_at_the_threshold():
    scores = np.array([0.95, 0.2, 0.9, 0.85, 0.1, 0.3, 0.05])
    labels = np.array([True, True, True, True, False, False, False])
    types = np.array(["spike", "spike", "burst", "burst", "", "", ""], dtype=object)
    bins = H.ScoreBins.of(H.LOGIT).with_thresholds([0.5])
    out = H.by_type(H.Histograms.of(bins, scores, labels, types), 0.5)
    assert out["spike"]["rows"] == 2 and out["spike"]["recall"] == 0.5
    assert out["burst"]["recall"] == 1.0 and out["burst"]["aucpr"] == pytest.approx(1.0)
    exact = E.by_type(scores, labels, types, 0.5)
    for name in exact:
        assert (out[name]["rows"], out[name]["recall"]) == (exact[name]["rows"], exact[name]["recall"])
        assert abs(out[name]["aucpr"] - exact[name]["aucpr"]) <= out[name]["aucpr_error"] + ROUNDING


@pytest.mark.parametrize("policy, target", [("target_precision", 0.5), ("target_precision", 0.999), ("alert_rate", 0.01)])
def test_thresholds_from_histograms_follow_the_exact_policies_at_bin_resolution(policy, target):
    rng = np.random.default_rng(3)
    labels = rng.random(5000) < 0.05
    scores = np.round(1 / (1 + np.exp(-(rng.normal(size=5000) + 2.5 * labels))), 3)  # ties on bin edges' scale
    bins = H.ScoreBins.of(H.UNIT, bins=1000)
    binned = choose_threshold_binned(policy, target, H.Histograms.of(bins, scores, labels))
    exact = choose_threshold(policy, target, scores, labels)
    # Scores on a 0.001 grid and 1000 bins of width 0.001: each bin holds one score value, so the
    # lower edge found is the exact threshold up to the edge lying just below that value.
    assert binned.value == pytest.approx(exact.value, abs=1.5e-3)
    assert np.sum(scores >= binned.value) == np.sum(scores >= exact.value)
    assert (binned.fallback is None) == (exact.fallback is None)


def test_an_empty_window_or_one_class_gives_nan_metrics_not_an_error():
    bins = H.ScoreBins.of(H.LOGIT)
    one_class = H.evaluate(H.Histograms.of(bins, np.array([0.2, 0.4]), np.array([False, False])), 0.5, 5)
    assert math.isnan(one_class["aucpr"]) and math.isnan(one_class["aucroc"]) and one_class["tn"] == 2
    with pytest.raises(ValueError, match="validation split is empty"):
        choose_threshold_binned("alert_rate", 0.1, H.Histograms.empty(bins))


def test_the_drift_reference_from_a_histogram_has_exact_fractions_between_its_edges():
    from lakescore.drift import bin_index

    rng = np.random.default_rng(5)
    scores = rng.random(10_000) ** 2
    reference = H.reference_histogram(H.Histograms.of(H.ScoreBins.of(H.LOGIT), scores, np.zeros(10_000, bool)), 10)
    assert np.all(np.diff(reference["edges"]) > 0) and len(reference["fractions"]) == len(reference["edges"]) - 1
    again = np.bincount(bin_index(scores, reference["edges"]), minlength=len(reference["fractions"])) / len(scores)
    np.testing.assert_allclose(reference["fractions"], again)
    assert max(reference["fractions"]) < 0.12  # deciles, within a fine bin


def test_partial_counts_merge_to_the_histograms_of_the_whole():
    rng = np.random.default_rng(9)
    scores, labels = rng.random(3000), rng.random(3000) < 0.1
    types = np.where(labels, rng.choice(["a", "b"], 3000), "")
    bins = H.ScoreBins.of(H.UNIT)
    parts = [H.sparse_counts(np.full(1000, "test", dtype=object), "model", labels[i:i + 1000], types[i:i + 1000],
                             bins.index(scores[i:i + 1000])) for i in range(0, 3000, 1000)]
    merged = H.merge_counts(parts, {"model": bins})[("test", "model")]
    whole = H.Histograms.of(bins, scores, labels, types)
    np.testing.assert_array_equal(merged.normal, whole.normal)
    assert sorted(merged.anomalous) == ["a", "b"]
    for name in ("a", "b"):
        np.testing.assert_array_equal(merged.anomalous[name], whole.anomalous[name])
