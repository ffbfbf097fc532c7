"""Threshold policies, evaluation metrics and splits: plain numpy, no Ray or Spark."""

import datetime as dt
import math

import numpy as np
import pytest

from training import evaluation as E
from training.data import TEST, TRAIN, VALIDATION, date_splits, hash_uniform, stratified_split
from training.thresholds import ALERT_RATE, FIXED, TARGET_PRECISION, choose_threshold
from training.trainer import EarlyStopping

# Scores in decreasing order with their labels: precision of `score >= t` for each t is
#   0.9: 1/1, 0.8: 2/2, 0.7: 2/3, 0.6: 3/4, 0.5: 3/5, 0.4: 4/6 ...
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
LABELS = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0, 0])


def test_target_precision_picks_the_lowest_threshold_that_reaches_the_target():
    assert choose_threshold(TARGET_PRECISION, 0.75, SCORES, LABELS).value == 0.6
    assert choose_threshold(TARGET_PRECISION, 1.0, SCORES, LABELS).value == 0.8
    assert choose_threshold(TARGET_PRECISION, 0.6, SCORES, LABELS).value == 0.4


def test_tied_scores_are_flagged_together_when_choosing_a_threshold():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    labels = np.array([1, 1, 0, 0])
    # `>= 0.5` flags both tied rows: precision 2/3, so a target of 0.9 must stop at 0.9.
    assert choose_threshold(TARGET_PRECISION, 0.9, scores, labels).value == 0.9
    assert choose_threshold(TARGET_PRECISION, 0.6, scores, labels).value == 0.5


def test_an_unreachable_target_precision_falls_back_to_best_f1_and_says_so():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([0, 1, 0, 1])
    threshold = choose_threshold(TARGET_PRECISION, 0.95, scores, labels)
    # Best F1: flag all four (precision 0.5, recall 1, F1 0.667) beats 0.8 (0.5, 0.5).
    assert threshold.value == 0.6
    assert "no threshold reaches precision 0.95" in threshold.fallback
    assert threshold.to_manifest()["fallback"] == threshold.fallback


def test_alert_rate_flags_the_top_fraction_of_rows():
    threshold = choose_threshold(ALERT_RATE, 0.2, SCORES, LABELS)
    assert threshold.value == 0.8
    assert int(np.sum(SCORES >= threshold.value)) == 2
    # A rate below one row still flags the top row.
    assert choose_threshold(ALERT_RATE, 0.01, SCORES, LABELS).value == 0.9


def test_a_fixed_threshold_is_taken_as_given_and_recorded_with_its_policy():
    threshold = choose_threshold(FIXED, 0.42, SCORES, LABELS)
    assert threshold.to_manifest() == {
        "policy": "fixed",
        "target": 0.42,
        "value": 0.42,
        "fallback": None,
        "flag_rule": "score >= threshold",
    }


def test_evaluation_counts_the_confusion_matrix_and_precision_at_k():
    metrics = E.evaluate(SCORES, LABELS, threshold=0.6, k=3)
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (3, 1, 1, 5)
    assert metrics["precision"] == 0.75 and metrics["recall"] == 0.75 and metrics["f1"] == 0.75
    assert metrics["precision_at_k"] == pytest.approx(2 / 3)
    # Average precision: mean of the precision at each anomaly's rank: (1 + 1 + 3/4 + 4/6) / 4.
    assert metrics["aucpr"] == pytest.approx((1 + 1 + 0.75 + 4 / 6) / 4)
    assert metrics["aucroc"] == pytest.approx(21 / 24)


def test_a_classifier_that_never_flags_has_zero_recall_and_a_window_of_one_class_has_no_auc():
    flat = E.evaluate(np.zeros(10), LABELS, threshold=0.5, k=5)
    assert flat["recall"] == 0.0 and flat["precision"] == 0.0 and flat["tp"] == 0
    one_class = E.evaluate(SCORES, np.zeros(10), threshold=0.5, k=5)
    assert math.isnan(one_class["aucpr"]) and math.isnan(one_class["aucroc"])


def test_recall_per_anomaly_type_is_measured_against_the_normal_rows():
    types = np.array(["a", "b", "", "a", "", "b", "", "", "", ""])
    out = E.by_type(SCORES, LABELS, types, threshold=0.7)
    assert out["a"]["rows"] == 2 and out["a"]["recall"] == 0.5
    assert out["b"]["rows"] == 2 and out["b"]["recall"] == 0.5


def test_the_evaluation_table_puts_models_side_by_side():
    table = E.format_table({"mlp": {"aucpr": 0.9, "tp": 3}, "isolation_forest": {"aucpr": 0.5, "tp": 1}}, ["aucpr", "tp"])
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "mlp", "isolation_forest"]
    assert lines[1].split() == ["aucpr", "0.9000", "0.5000"]
    assert lines[2].split() == ["tp", "3", "1"]


def test_the_plots_are_png_files():
    assert E.plot_pr_curve({"m": (SCORES, LABELS)}, "t")[:8] == b"\x89PNG\r\n\x1a\n"
    assert E.plot_score_histogram(SCORES, LABELS, 0.5, "t")[:8] == b"\x89PNG\r\n\x1a\n"


def test_later_dates_are_held_out_for_validation_and_test():
    days = [dt.date(2026, 11, d) for d in (3, 1, 4, 2, 5)]
    assert date_splits(days, validation_days=1, test_days=2) == {
        dt.date(2026, 11, 1): TRAIN,
        dt.date(2026, 11, 2): TRAIN,
        dt.date(2026, 11, 3): VALIDATION,
        dt.date(2026, 11, 4): TEST,
        dt.date(2026, 11, 5): TEST,
    }


def test_the_training_window_limits_the_dates_and_must_leave_training_days():
    days = [dt.date(2026, 11, d) for d in range(1, 8)]
    window = date_splits(days, 1, 1, first=dt.date(2026, 11, 2), last=dt.date(2026, 11, 5))
    assert list(window) == [dt.date(2026, 11, d) for d in (2, 3, 4, 5)]
    assert window[dt.date(2026, 11, 5)] == TEST and window[dt.date(2026, 11, 4)] == VALIDATION
    with pytest.raises(ValueError, match="leaving none to train on"):
        date_splits(days[:2], 1, 1)


def test_the_stratified_split_is_deterministic_and_keeps_the_class_balance():
    keys = np.arange(20_000)
    labels = keys % 10 == 0  # 10% anomalies
    first = stratified_split(keys, labels, 0.2, 0.2, seed=7)
    assert np.array_equal(first, stratified_split(keys, labels, 0.2, 0.2, seed=7))
    # The same key lands in the same split whatever rows it is split with.
    assert np.array_equal(first[5000:6000], stratified_split(keys[5000:6000], labels[5000:6000], 0.2, 0.2, seed=7))
    for name, fraction in ((TRAIN, 0.6), (VALIDATION, 0.2), (TEST, 0.2)):
        assert np.mean(first[labels] == name) == pytest.approx(fraction, abs=0.03)
        assert np.mean(first[~labels] == name) == pytest.approx(fraction, abs=0.01)
    assert not np.array_equal(first, stratified_split(keys, labels, 0.2, 0.2, seed=8))


def test_the_key_hash_is_uniform_on_the_unit_interval():
    u = hash_uniform(np.arange(100_000), salt=3)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.histogram(u, bins=10, range=(0, 1))[0] == pytest.approx([10_000] * 10, rel=0.05)
    # Pinned values: a split must not move between releases or machines.
    assert hash_uniform(np.array([0, 1, 2]), salt=3).tolist() == pytest.approx(
        [0.026433771592597743, 0.9710027535867962, 0.5956380814000053], abs=1e-15
    )
    # A key's value does not depend on the batch it comes in; the salt changes every value.
    assert np.array_equal(hash_uniform(np.arange(500, 600), salt=3), u[500:600])
    assert not np.isclose(hash_uniform(np.arange(1000), salt=4), u[:1000]).any()
    # Neighbouring keys are not correlated (a bare modulo or affine map would be).
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02


def test_early_stopping_waits_patience_epochs_after_the_best_validation_aucpr():
    stopping = EarlyStopping(patience=2)
    decisions = [(stopping.update(epoch, aucpr), stopping.stop) for epoch, aucpr in enumerate([0.5, 0.7, 0.69, 0.7, 0.8, 0.8, 0.75])]
    assert decisions == [
        (True, False),
        (True, False),
        (False, False),
        (False, True),  # two epochs without beating 0.7 (an equal figure is no improvement)
        (True, False),
        (False, False),
        (False, True),
    ]
    assert (stopping.best_epoch, stopping.best_aucpr) == (4, 0.8)


def test_a_validation_window_without_a_score_never_counts_as_an_improvement():
    stopping = EarlyStopping(patience=1, best_aucpr=0.6, best_epoch=3, bad_epochs=0)  # as restored from a checkpoint
    assert stopping.update(4, math.nan) is False and stopping.stop
    assert stopping.best_epoch == 3
