"""Retraining: champion and challenger on the same holdout, analyst feedback as labels,
promotion only when better, rollback, and reproduction from the recorded data version."""

import math
import os

import numpy as np
import pandas as pd
import pytest

from lakescore import registry
from lakescore import schemas as S
from training.data import SplitPlan
from training.champion import decide, metrics_match

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def _figures(aucpr, precision, recall=0.5, rows=100):
    return {"aucpr": aucpr, "precision": precision, "recall": recall, "rows": rows}


def test_a_challenger_that_beats_the_champion_by_the_margin_is_promoted():
    decision = decide(_figures(0.91, 0.80), _figures(0.85, 0.80), min_aucpr_gain=0.01, precision_tolerance=0.0)
    assert decision.promote
    assert decision.figures["aucpr_gain"] == pytest.approx(0.06)
    assert decision.note().startswith("promoted: holdout AUCPR 0.9100 vs champion 0.8500")


def test_a_challenger_below_the_margin_or_with_lower_precision_is_kept_out():
    small_gain = decide(_figures(0.855, 0.9), _figures(0.85, 0.8), min_aucpr_gain=0.01, precision_tolerance=0.0)
    less_precise = decide(_figures(0.95, 0.7), _figures(0.85, 0.8), min_aucpr_gain=0.01, precision_tolerance=0.05)
    single_class = decide(_figures(math.nan, 0.0), _figures(math.nan, 0.0), min_aucpr_gain=0.0, precision_tolerance=0.0)
    assert not small_gain.promote and "gain too small" in small_gain.reason
    assert not less_precise.promote and "precision at threshold would drop" in less_precise.reason
    assert not single_class.promote and "single class" in single_class.reason


def test_analyst_verdicts_override_the_source_labels_of_the_records_they_name():
    from lakescore.features import numeric_feature_set
    from training.feature_batches import features_batch

    raw = pd.DataFrame(
        {S.RECORD_ID: [1, 2, 3, 4], "f": [0.1, None, np.nan, 4.0], S.IS_ANOMALY: [False, True, False, None]}
    )
    plan = SplitPlan(dated=False, validation_fraction=0.2, test_fraction=0.2, seed=0, keys=(S.RECORD_ID,))
    fs = numeric_feature_set(["f"])
    plain = features_batch(raw, fs, plan, S.IS_ANOMALY).to_pandas()
    overridden = features_batch(raw, fs, plan, S.IS_ANOMALY, {"2": False, "3": True, "99": True}, (S.RECORD_ID,)).to_pandas()
    assert plain["__label"].tolist() == [False, True, False, False]
    assert overridden["__label"].tolist() == [False, False, True, False]


def test_reproduced_metrics_match_within_the_tolerance_and_differ_beyond_it():
    assert metrics_match({"a": 0.9, "b": 0.5}, {"a": 0.905, "b": 0.5}, 0.01)["match"]
    result = metrics_match({"a": 0.9}, {"a": 0.8}, 0.01)
    assert not result["match"] and result["max_abs_difference"] == pytest.approx(0.1)


# --- end to end on the lake, with Ray Train -----------------------------------------------------

NAME = "retrain_test"
GOOD = {"train.batch_size": "256", "train.epochs": "8", "train.patience": "4", "train.learning_rate": "0.003"}
# Deliberately weak: one epoch at a tiny learning rate through a two-unit layer.
WEAK = {"train.batch_size": "256", "train.epochs": "1", "train.learning_rate": "0.00001", "train.hidden": "2"}


@pytest.fixture(scope="module")
def retrain_settings(settings):
    # One worker: the decisions are under test here; data-parallel training is proven in
    # test_train_job and on the two-node cluster (test_clusters), and one worker starts faster.
    # The weak champion (test AUCPR 0.22) flags few of the test day's rows at its threshold, at a
    # high precision on this draw; the challenger trades some of it for recall (precision change
    # -0.10 measured), which the default tolerance of 0 refuses. The tolerance of 0.2 lets this
    # end-to-end test turn on the AUCPR gain; the precision rule has its own unit test above.
    return settings.with_overrides({"train.model_name": NAME, "ray.num_workers": "1", "retrain.precision_tolerance": "0.2"})


@pytest.fixture(scope="module")
def weak_champion(spark, retrain_settings, transactions, ray_local):
    from pipelines.train import run_train

    _, entry = run_train(spark, retrain_settings.with_overrides(WEAK))
    assert entry.stage == "champion"
    return entry


@pytest.fixture(scope="module")
def verdicts(spark, settings, transactions):
    """Analysts confirm five rows of the holdout day the source labels normal."""
    from pipelines.feedback import VerdictSource, run_feedback

    rows = spark.sql(
        f"SELECT {S.TRANSACTION_ID} FROM {transactions} WHERE NOT {S.IS_ANOMALY} AND {S.EVENT_DATE} = DATE'2026-11-04' "
        f"ORDER BY {S.TRANSACTION_ID} LIMIT 5"
    ).collect()
    for r in rows:
        run_feedback(spark, settings, VerdictSource(key=str(r[0]), verdict="confirmed_anomaly", analyst="test"), table="transactions")
    return [str(r[0]) for r in rows]


@pytest.fixture(scope="module")
def promoted(spark, retrain_settings, weak_champion, verdicts):
    from pipelines.retrain import run_retrain

    return run_retrain(spark, retrain_settings.with_overrides(GOOD))


@pytest.mark.slow
def test_a_better_challenger_trained_with_feedback_is_promoted_in_one_commit(spark, settings, weak_champion, verdicts, promoted):
    assert promoted.promoted and promoted.challenger.version == weak_champion.version + 1
    assert promoted.feedback_labels == len(verdicts)
    assert promoted.figures["holdout_aucpr"] > promoted.figures["champion_holdout_aucpr"]
    stages = {r["version"]: (r["stage"], r["note"]) for r in registry.list_models(spark, settings, NAME)}
    assert stages[weak_champion.version][0] == "archived"
    assert stages[promoted.challenger.version][0] == "champion"
    assert stages[promoted.challenger.version][1].startswith("promoted: holdout AUCPR")
    entry = registry.get_entry(spark, settings, NAME)
    assert entry.metrics["holdout_aucpr"] == pytest.approx(promoted.figures["holdout_aucpr"])
    # The verdicts became labels: the test window counts five more anomalies than the source has.
    _, bundle = registry.load_registered(spark, settings, NAME)
    source_anomalies = spark.sql(
        f"SELECT COUNT(*) FROM lakescore.transactions WHERE {S.IS_ANOMALY} AND {S.EVENT_DATE} = DATE'2026-11-04'"
    ).collect()[0][0]
    assert bundle.manifest.lineage.counts["test"]["anomalies"] == source_anomalies + len(verdicts)
    assert bundle.manifest.evaluation["champion"]["model"] == f"{NAME}@{weak_champion.version}"


@pytest.mark.slow
def test_a_worse_challenger_is_kept_out_and_the_champion_keeps_scoring(spark, retrain_settings, settings, promoted):
    from pipelines.retrain import run_retrain

    result = run_retrain(spark, retrain_settings.with_overrides(WEAK))
    assert not result.promoted and "kept out" in result.reason
    assert registry.get_entry(spark, settings, NAME).version == promoted.challenger.version
    row = [r for r in registry.list_models(spark, settings, NAME) if r["version"] == result.challenger.version][0]
    assert row["stage"] == "challenger" and row["note"].startswith("kept out: AUCPR gain too small")
    # Rolling back by hand still works and is the nightly job's champion at once.
    registry.promote(spark, settings, f"{NAME}@1", note="rollback test")
    assert registry.get_entry(spark, settings, NAME).version == 1
    registry.promote(spark, settings, f"{NAME}@{promoted.challenger.version}")


# Tiny data (one test day of ~3,000 rows, ~60 anomalies): DDP over streamed shards is not bit
# for bit, and a few rows' order moves AUCPR by a few hundredths here.
REPRODUCE_TOLERANCE = "0.05"


@pytest.mark.slow
def test_reproducing_a_version_from_its_recorded_data_gives_the_same_metrics(spark, settings, promoted):
    from pipelines.retrain import run_reproduce

    entry = registry.get_entry(spark, settings, f"{NAME}@{promoted.challenger.version}")
    result = run_reproduce(
        spark, settings.with_overrides({"retrain.reproduce_tolerance": REPRODUCE_TOLERANCE}), entry.label
    )
    assert result["counts_match"], result  # the same rows and labels, feedback verdicts included
    assert result["match"], result
    _, bundle = registry.load_registered(spark, settings, entry.label)
    assert result["source_version"] == bundle.manifest.lineage.source_version
