"""Training follows the table's feature spec: a sensors table shaped nothing like transactions
(tests/sensor_rows.py) trains with a spec written by hand, with a suggested one, and without a
label; wrong specs fail before any work; the builtin specs give the features training always used."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lakescore import registry
from lakescore import schemas as S
from lakescore.feedback_keys import record_keys
from lakescore.specs import SpecError, builtin_spec
from sensor_rows import SITES, SPEC_PATH, write_sensors
from training.data import key_hashes, labels_of

# Read when Ray starts (see tests/test_train_job.py).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# Tiny runs: the spec's path through training is under test, not model quality.
SENSOR_TRAINING = {"train.epochs": "2", "train.batch_size": "128", "ray.num_workers": "1", "train.patience": "2"}


# --- labels, keys and the builtin specs, without Spark or Ray ------------------------------------


def test_labels_are_read_as_booleans_from_booleans_numbers_and_text_with_nulls_not_anomalous():
    assert labels_of(pd.Series([True, False, None], dtype="boolean"), 3).tolist() == [True, False, False]
    assert labels_of(pd.Series([1, 0, None, 2]), 4).tolist() == [True, False, False, False]
    assert labels_of(pd.Series(["true", "FALSE", None, "1", "yes"], dtype=object), 5).tolist() == [True, False, False, True, False]
    assert labels_of(None, 2).tolist() == [False, False]


def test_record_keys_are_the_key_values_as_spark_casts_them_joined_with_a_bar_for_several():
    rows = pd.DataFrame({"id": [12, 7], "site": ["Plant-7", "a b"], "day": [pd.Timestamp("2026-03-01").date()] * 2})
    assert record_keys(rows, ["id"]).tolist() == ["12", "7"]
    # An integer key read with nulls arrives as float: still "12", as its integer type casts.
    assert record_keys(pd.DataFrame({"id": [12.0, np.nan]}), ["id"]).tolist() == ["12", None]
    assert record_keys(rows, ["site", "day", "id"]).tolist() == ["Plant-7|2026-03-01|12", "a b|2026-03-01|7"]


def test_string_keys_hash_to_the_same_split_in_every_process_and_integer_keys_keep_their_value():
    keys = ["R-000001", "R-000002", "Ü 3"]
    code = (
        "import pandas as pd; from training.data import key_hashes; "
        f"print(list(key_hashes(pd.DataFrame({{'k': {keys!r}}}), ['k'])))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    here = key_hashes(pd.DataFrame({"k": keys}), ["k"])
    assert outputs == {f"{list(here)}\n"} and len(set(here)) == 3
    assert key_hashes(pd.DataFrame({"k": [5, 9]}), ["k"]).tolist() == [5, 9]


@pytest.mark.parametrize("table", [S.SHUTTLE, S.BREAST_CANCER])
def test_the_benchmark_specs_give_the_features_and_values_numeric_v1_gave(table):
    from lakescore.datasets import BENCHMARKS
    from lakescore.features import builtin_spec_for_table, feature_set_for_table

    frame = BENCHMARKS[table]().head(500)
    types = {c: "bigint" if c == S.RECORD_ID else "boolean" if c == S.IS_ANOMALY else "double" for c in frame.columns}
    spec = builtin_spec_for_table(types)
    assert spec is not None and spec.name == f"{table}_v1"
    numeric = feature_set_for_table(table, list(frame.columns))
    spec_features = spec.fit().feature_set()
    assert spec_features.features == numeric.features
    assert np.array_equal(spec_features.transform(frame), numeric.transform(frame), equal_nan=True)


def test_a_table_with_the_transactions_columns_gets_transactions_v1_and_another_table_none():
    from lakescore.features import builtin_spec_for_table

    spec = builtin_spec("transactions_v1")
    assert builtin_spec_for_table({c: "string" for c in spec.columns()}) is None  # wrong types
    assert builtin_spec_for_table({"reading_id": "string", "Temp C": "double"}) is None


# --- on the lake ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sensors(tmp_path_factory) -> str:
    return str(write_sensors(tmp_path_factory.mktemp("sensors") / "sensors"))


def _sensor_settings(settings, sensors, name, **overrides):
    return settings.with_overrides({**SENSOR_TRAINING, "train.table": sensors, "train.model_name": name, **overrides})


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started for a spec that does not fit")


WRONG_SPECS = {
    "unknown column": (('column = "Temp C"', 'column = "Temp F"'), r"features\[0\]\.column.*'Temp F'.*did you mean 'Temp C'"),
    "categorical on a float": (
        ('kind = "numeric"\ncolumn = "Vibration"\ntransform = "log1p"', 'kind = "categorical"\ncolumn = "Vibration"'),
        r"features\[1\]\.column.*categorical input.*'Vibration' is double.*kind = \"numeric\"",
    ),
    "label with three values": (('label = "fault"', 'label = "mode"'), r"`label` names 'mode', which holds 3 distinct values.*true/false or 0/1"),
    "date column no partition": (('date_column = "reading_day"', 'date_column = "ts"'),
                                 r"`date_column` 'ts' .* is no partition column.*partitioned by ts, or drop `date_column`"),
    "key not unique": (('keys = ["reading_id"]', 'keys = ["site"]'), r"`keys` \['site'\] are not unique.*name the column\(s\) that identify one row"),
}


@pytest.mark.parametrize("case", list(WRONG_SPECS))
def test_a_wrong_spec_fails_before_any_work_naming_the_key_and_the_fix(spark, settings, sensors, tmp_path, monkeypatch, case):
    import pipelines.train as train_pipeline

    (old, new), message = WRONG_SPECS[case]
    text = SPEC_PATH.read_text()
    assert old in text
    spec_file = tmp_path / "wrong.toml"
    spec_file.write_text(text.replace(old, new, 1))
    name = "sensors_wrong_" + case.replace(" ", "_")
    run_settings = _sensor_settings(settings, sensors, name, **{"train.spec": str(spec_file)})
    monkeypatch.setattr(train_pipeline, "ray_cluster", _no_ray)

    with pytest.raises(SpecError, match=message):
        train_pipeline.train_job(spark, run_settings)
    assert not registry.bundle_dir(run_settings, name, 1).exists()
    assert registry.next_version(spark, run_settings, name) == 1  # no registry row


def test_an_mlp_on_a_spec_without_a_label_fails_before_any_work_naming_label(spark, settings, sensors, tmp_path, monkeypatch):
    import pipelines.train as train_pipeline

    spec_file = tmp_path / "unlabelled.toml"
    spec_file.write_text(SPEC_PATH.read_text().replace('label = "fault"\n', ""))
    run_settings = _sensor_settings(settings, sensors, "sensors_unlabelled_mlp", **{"train.spec": str(spec_file), "train.kind": "mlp"})
    monkeypatch.setattr(train_pipeline, "ray_cluster", _no_ray)
    with pytest.raises(SpecError, match=r"no `label`.*train.kind = mlp.*add `label = .*or train an autoencoder"):
        train_pipeline.train_job(spark, run_settings)


@pytest.mark.slow
def test_an_mlp_trains_on_the_sensors_table_with_a_spec_written_by_hand(spark, settings, sensors, ray_local):
    from lakescore.bundle import load_bundle
    from pipelines.train import train_job
    from training.data import TableSource
    from training.pipeline import _split_plan, fit_spec

    run_settings = _sensor_settings(settings, sensors, "sensors_mlp", **{"train.spec": str(SPEC_PATH), "train.kind": "mlp"})
    inputs, run, entry = train_job(spark, run_settings)
    assert inputs.suggested is None and inputs.spec.label == "fault"

    m = load_bundle(entry.path).manifest
    fitted = m.feature_set.fitted
    assert fitted.spec.name == "sensors_v1" and fitted.spec.keys == ("reading_id",)
    # top_n = 3 of the training days' sites, most frequent first, plus the "(other)" slot.
    assert fitted.vocabularies == {"site": SITES[:3]}
    assert m.feature_set.features == ("Temp C", "vibration", "cycles", "door open", "site=Plant-7", "site=Plant-2",
                                      "site=Plant-9", "site=(other)", "hour_sin", "hour_cos")
    assert m.lineage.split == "time, by reading_day"
    assert m.lineage.date_window["test"] == "2026-03-06..2026-03-06"
    counts = m.lineage.counts
    assert sum(c["rows"] for c in counts.values()) == 1500  # every row, nulls and all
    faults = pd.read_parquet(sensors)["fault"]
    assert sum(c["anomalies"] for c in counts.values()) == int(faults.fillna(False).sum())
    assert 0.0 < m.metrics["test_aucpr"] <= 1.0 and m.metrics["test_aucroc"] > 0.5
    assert entry.metrics["test_aucpr"] == pytest.approx(m.metrics["test_aucpr"])
    _assert_baselines_beside_the_model(run, ("isolation_forest", "hist_gradient_boosting", "mlp_classifier"))
    # The registry row carries every baseline's figures too.
    assert entry.metrics["baseline_hist_gradient_boosting_test_aucpr"] == pytest.approx(
        m.metrics["baseline_hist_gradient_boosting_test_aucpr"])

    # Learned again the same way (a retraining or a reproduction), the vocabulary is the recorded one.
    source = TableSource("sensors", sensors, "parquet")
    again = fit_spec(source, inputs.spec, {"plan": _split_plan(run_settings, source, inputs.spec), "label": "fault",
                                           "label_overrides": {}, "keys": inputs.spec.keys})
    assert again.fitted.vocabularies == fitted.vocabularies


@pytest.mark.slow
def test_an_autoencoder_trains_on_the_sensors_table_with_no_spec_using_the_suggested_one(spark, settings, sensors, ray_local):
    from pipelines.train import train_job

    run_settings = _sensor_settings(settings, sensors, "sensors_ae", **{"train.kind": "autoencoder"})
    inputs, run, entry = train_job(spark, run_settings)
    assert inputs.suggested is not None and 'label = "fault"' in inputs.suggested
    assert 'date_column = "reading_day"' in inputs.suggested and 'keys = ["reading_id"]' in inputs.suggested

    m = run.bundle.manifest
    fitted = m.feature_set.fitted
    assert fitted.spec.name == "sensors_v1" and fitted.spec.label == "fault"
    assert fitted.vocabularies["site"] == SITES  # four sites, all kept
    assert {"site=Plant-7", "site=Depot 4", "Temp C", "door open", "ts hour_sin"} <= set(m.feature_set.features)
    assert m.score.type == "reconstruction_error"
    assert m.metrics["test_aucroc"] is not None and m.lineage.split == "time, by reading_day"
    _assert_baselines_beside_the_model(run, ("isolation_forest", "ecod"))


def _assert_baselines_beside_the_model(run, names):
    """The run evaluated exactly `names` beside the model on the same test rows, each with an
    AUCPR and its own threshold; the best is the one with the highest AUCPR, the gap is the
    model's AUCPR minus the best's in points; the manifest and the printed table carry them."""
    report, m = run.evaluation, run.bundle.manifest
    test = report["test"]
    assert tuple(n for n in test if n != "model") == names and report["baselines"]["names"] == list(names)
    for name in names:
        assert test[name]["rows"] == test["model"]["rows"] and test[name]["anomalies"] == test["model"]["anomalies"]
        assert 0.0 <= test[name]["aucpr"] <= 1.0, name
        assert m.metrics[f"baseline_{name}_test_aucpr"] == pytest.approx(test[name]["aucpr"])
        assert report["baseline_thresholds"][name]["value"] == test[name]["threshold"]
    best = max(names, key=lambda n: test[n]["aucpr"])
    assert report["baselines"]["best"] == best and report["baselines"]["skipped"] == {}
    assert m.evaluation["baselines"]["best"] == best
    assert m.metrics["best_baseline_test_aucpr"] == pytest.approx(test[best]["aucpr"])
    gap = report["baselines"]["gap_aucpr_points"]
    assert gap == pytest.approx(100 * (test["model"]["aucpr"] - test[best]["aucpr"]))
    # Older readers find the IsolationForest where they always did.
    assert m.metrics["baseline_test_aucpr"] == pytest.approx(test["isolation_forest"]["aucpr"])
    assert report["baseline_threshold"] == report["baseline_thresholds"]["isolation_forest"]
    assert run.table.splitlines()[0].split()[2:] == list(names)
    assert run.table.splitlines()[-1] == f"gap to the best baseline ({best}, AUCPR {test[best]['aucpr']:.4f}): {gap:+.2f} AUCPR points"


@pytest.mark.slow
def test_an_autoencoder_trains_without_a_label_and_records_only_what_needs_none(spark, settings, sensors, tmp_path, ray_local):
    from pipelines.train import train_job

    spec_file = tmp_path / "unlabelled.toml"
    spec_file.write_text(SPEC_PATH.read_text().replace('label = "fault"\n', ""))
    run_settings = _sensor_settings(settings, sensors, "sensors_unlabelled", **{"train.spec": str(spec_file), "train.kind": "autoencoder"})
    _, run, entry = train_job(spark, run_settings)

    m = run.bundle.manifest
    assert m.feature_set.fitted.spec.label is None
    # No AUC without labels: None in the manifest, absent from the registry row.
    assert m.metrics["test_aucpr"] is None and m.metrics["validation_aucroc"] is None
    assert "test_aucpr" not in entry.metrics and entry.metrics["threshold"] == pytest.approx(m.threshold.value)
    # The threshold flags the top 1% of validation rows.
    assert m.threshold.policy == "alert_rate" and m.threshold.target == 0.01 and "no label" in m.threshold.fallback
    test = m.evaluation["test"]["model"]
    assert test["rows"] == m.lineage.counts["test"]["rows"] and 0 <= test["flagged"] <= test["rows"]
    # Early stopping followed the validation reconstruction loss.
    assert all(h["validation_loss"] > 0 for h in m.training.history)
    assert m.training.best_validation_aucpr is None
    assert all(c["anomalies"] == 0 for c in m.lineage.counts.values())
    # The baselines of an autoencoder ran, with their thresholds, but without a label none is best.
    assert m.evaluation["baselines"]["names"] == ["isolation_forest", "ecod"] and m.evaluation["baselines"]["best"] is None
    assert m.metrics["best_baseline_test_aucpr"] is None and m.evaluation["baselines"]["gap_aucpr_points"] is None
    ecod = m.evaluation["test"]["ecod"]
    assert ecod["rows"] == test["rows"] and 0 <= ecod["flagged"] <= ecod["rows"]
    assert run.table.splitlines()[-1] == "gap to the best baseline: no AUCPR without labels"
