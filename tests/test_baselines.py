"""The baselines beside the model: ECOD against a brute-force reference, which baselines a run
fits, the supervised ones on labelled rows, and the best baseline and the gap to it. Plain numpy
and scikit-learn, no Ray or Spark."""

import math

import numpy as np
import pytest

from training import baselines as B
from training import evaluation as E
from training import score_histograms as H


def _brute_force_ecod(sample: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The paper's ECOD score, one row and feature at a time: the empirical CDF of the sample
    with the scored row counted in it (as pyod computes it on the sample and the rows together),
    -log of each tail, and the largest of the left, right and skewness-side sums."""
    n, d = sample.shape
    out = []
    for row in x:
        left = right = auto = 0.0
        for j in range(d):
            column = sample[:, j]
            p_left = (sum(1 for v in column if v <= row[j]) + 1) / (n + 1)
            p_right = (sum(1 for v in column if v >= row[j]) + 1) / (n + 1)
            mean = column.mean()
            skew = np.mean((column - mean) ** 3) / np.mean((column - mean) ** 2) ** 1.5
            left -= math.log(p_left)
            right -= math.log(p_right)
            auto -= math.log(p_left if skew < 0 else p_right)
        out.append(max(left, right, auto))
    return np.array(out)


def test_ecod_tail_probabilities_on_five_values_count_the_scored_row_in_the_sample():
    ecod = B.ECOD.fit(np.array([[5.0], [1.0], [4.0], [2.0], [3.0]]))
    left, right = ecod.tail_probabilities(np.array([[3.0], [2.5], [0.0], [10.0], [5.0]]))
    # Five values 1..5 and the scored row: (values at or below + 1) / 6, (at or above + 1) / 6.
    assert left[:, 0].tolist() == pytest.approx([4 / 6, 3 / 6, 1 / 6, 6 / 6, 6 / 6])
    assert right[:, 0].tolist() == pytest.approx([4 / 6, 4 / 6, 6 / 6, 1 / 6, 2 / 6])


def test_ecod_scores_equal_the_brute_force_reference_and_a_clear_outlier_scores_highest():
    rng = np.random.default_rng(7)
    sample = np.column_stack([rng.exponential(size=60), rng.normal(size=60), -rng.exponential(size=60)])
    x = np.vstack([sample[:10], [[0.1, 0.5, -0.5], [12.0, 12.0, -12.0], [-4.0, 0.0, 0.0]]])
    ecod = B.ECOD.fit(sample)
    skewed = [bool(s < 0) for s in _skewness(sample)]
    assert ecod.left_skewed.tolist() == skewed and (skewed[0], skewed[2]) == (False, True)
    raw = ecod.raw_scores(x)
    np.testing.assert_allclose(raw, _brute_force_ecod(sample, x), rtol=1e-12)
    assert int(np.argmax(raw)) == 11  # far out in every feature
    # Beyond the sample in every feature: each outer tail at its floor 1/(n + 1), never 0 (finite
    # scores); the skewness-side sum takes the right tail of the first two features, the left of
    # the third, so it is the largest when the second's skewness is not negative.
    expected = (3 if not skewed[1] else 2) * math.log(61)
    assert raw[11] == pytest.approx(expected)
    # The mapped score keeps the order and lies in [0, 1), the unit bins' range.
    mapped = ecod.scores(x)
    np.testing.assert_allclose(mapped, raw / (raw + 3))
    assert np.all((mapped >= 0) & (mapped < 1)) and np.array_equal(np.argsort(mapped), np.argsort(raw))


def _skewness(x):
    centred = x - x.mean(axis=0)
    return np.mean(centred**3, axis=0) / np.mean(centred**2, axis=0) ** 1.5


def test_ecod_follows_the_skewed_tail_and_a_nan_at_scoring_counts_as_no_evidence():
    # Right-skewed: a large value is an outlier by the right tail, the sum the skewness picks.
    ecod = B.ECOD.fit(np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [1.0, 4.0], [10.0, 5.0]]))
    assert ecod.left_skewed.tolist() == [False, False]  # the second column is symmetric: skewness 0, right tail
    left, right = ecod.tail_probabilities(np.array([[np.nan, 3.0]]))
    assert (left[0, 0], right[0, 0]) == (1.0, 1.0)
    assert ecod.raw_scores(np.array([[np.nan, 3.0]]))[0] == pytest.approx(-math.log(4 / 6))


def test_ecod_refuses_a_sample_with_nan_or_without_rows_naming_the_fix():
    with pytest.raises(ValueError, match="holds NaN; fit it on the output of the bundle's preprocessing"):
        B.ECOD.fit(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="at least one of each, got shape \\(0, 3\\); raise train.sample_rows"):
        B.ECOD.fit(np.empty((0, 3)))


def test_a_supervised_mlp_run_gets_the_classifiers_and_the_autoencoder_gets_ecod():
    assert B.baseline_names("mlp", supervised=True) == ("isolation_forest", "hist_gradient_boosting", "mlp_classifier")
    assert B.baseline_names("autoencoder", supervised=True) == ("isolation_forest", "ecod")
    assert B.baseline_names("autoencoder", supervised=False) == ("isolation_forest", "ecod")


ALLOWED_AUCROC_BELOW_ORACLE = 0.03


def _labelled_rows(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.random(rows) < 0.08
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    x[y, 0] += 4.0  # anomalies sit high in one feature
    return x, y


def test_the_supervised_baselines_learn_from_the_labels_and_score_held_out_rows_by_probability():
    x, y = _labelled_rows(800, seed=1)
    fitted = B.fit_baselines(x, y, kind="mlp", supervised=True, seed=0)
    assert fitted.names == ("isolation_forest", "hist_gradient_boosting", "mlp_classifier") and not fitted.skipped
    held_out, labels = _labelled_rows(600, seed=2)
    for name in ("hist_gradient_boosting", "mlp_classifier"):
        baseline = fitted.fitted[name]
        scores = baseline.scores(held_out)
        assert baseline.scale == H.LOGIT and scores.shape == (600,) and np.all((scores >= 0) & (scores <= 1))
        # The best ranking of these rows is by the shifted feature itself; a classifier that
        # learned from the labels comes close to it.
        oracle = E.evaluate(held_out[:, 0], labels, 0.5, 10)["aucroc"]
        assert E.evaluate(scores, labels, 0.5, 10)["aucroc"] >= oracle - ALLOWED_AUCROC_BELOW_ORACLE, name
    assert fitted.fitted["isolation_forest"].scale == H.UNIT
    assert fitted.fitted["mlp_classifier"].scores(held_out[:0]).shape == (0,)


def test_a_sample_of_one_class_skips_the_supervised_baselines_and_says_why():
    x, _ = _labelled_rows(200, seed=3)
    fitted = B.fit_baselines(x, np.zeros(200, bool), kind="mlp", supervised=True, seed=0)
    assert fitted.names == ("isolation_forest",)
    assert set(fitted.skipped) == {"hist_gradient_boosting", "mlp_classifier"}
    assert "200 rows holds a single class (0 anomalies); raise train.sample_rows" in fitted.skipped["mlp_classifier"]


TEST_FIGURES = {
    "model": {"aucpr": 0.9125, "aucroc": 0.99},
    "isolation_forest": {"aucpr": 0.25, "aucroc": 0.8},
    "hist_gradient_boosting": {"aucpr": 0.875, "aucroc": 0.98},
    "mlp_classifier": {"aucpr": math.nan, "aucroc": math.nan},
    "champion": {"aucpr": 0.95, "aucroc": 0.99},  # not a baseline
}


def test_the_best_baseline_has_the_highest_test_aucpr_and_the_gap_is_in_points():
    assert B.in_report(TEST_FIGURES) == ("isolation_forest", "hist_gradient_boosting", "mlp_classifier")
    summary = B.summary(TEST_FIGURES, "model", {"ecod": "why"})
    assert summary == {
        "names": ["isolation_forest", "hist_gradient_boosting", "mlp_classifier"],
        "best": "hist_gradient_boosting",
        "best_test_aucpr": 0.875,
        "gap_aucpr_points": pytest.approx(3.75),
        "skipped": {"ecod": "why"},
    }
    assert B.gap_line(TEST_FIGURES, "model") == "gap to the best baseline (hist_gradient_boosting, AUCPR 0.8750): +3.75 AUCPR points"


def test_without_labels_there_is_no_best_baseline_and_no_gap():
    unlabelled = {m: {"aucpr": math.nan} for m in ("model", "isolation_forest", "ecod")}
    summary = B.summary(unlabelled, "model")
    assert summary["best"] is None and math.isnan(summary["best_test_aucpr"]) and math.isnan(summary["gap_aucpr_points"])
    assert B.gap_line(unlabelled, "model") == "gap to the best baseline: no AUCPR without labels"


def test_the_training_table_shows_each_baseline_beside_the_model_and_the_gap_under_them():
    from training.pipeline import baseline_metrics, evaluation_table

    table = evaluation_table("mlp", {"test": TEST_FIGURES}).splitlines()
    assert table[0].split() == ["metric", "mlp", "isolation_forest", "hist_gradient_boosting", "mlp_classifier"]
    assert table[1].split() == ["aucpr", "0.9125", "0.2500", "0.8750", "nan"]
    assert table[-1] == "gap to the best baseline (hist_gradient_boosting, AUCPR 0.8750): +3.75 AUCPR points"
    metrics = baseline_metrics(TEST_FIGURES)
    assert metrics["best_baseline_test_aucpr"] == 0.875
    assert metrics["baseline_hist_gradient_boosting_test_aucpr"] == 0.875
    assert metrics["baseline_isolation_forest_test_aucroc"] == 0.8
    assert math.isnan(metrics["baseline_mlp_classifier_test_aucpr"])
    assert "baseline_champion_test_aucpr" not in metrics
