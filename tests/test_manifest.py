"""The typed manifest: bundles already written still load, byte for byte; bad manifests are named."""

import copy
import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lakescore import bundle as B
from lakescore.config import Settings
from lakescore.manifest import (
    Architecture,
    FeedbackLineage,
    Lineage,
    Manifest,
    TrainingRecord,
)
from lakescore.models import MLP
from lakescore.specs import FeatureSpec, SourceSpec

# Written by the code before the manifest was typed (tests/data/README.md).
BUNDLE_V1 = Path(__file__).parent / "data" / "bundle_v1"


def _fixture_json() -> dict:
    return json.loads((BUNDLE_V1 / B.MANIFEST).read_text())


def test_a_bundle_written_before_the_typed_manifest_loads_with_its_fields_as_attributes():
    bundle = B.load_bundle(BUNDLE_V1)
    m = bundle.manifest
    assert (bundle.name, bundle.version, bundle.kind, bundle.label, bundle.threshold) == (
        "transactions", 3, MLP, "transactions@3", 0.7312,
    )
    assert m.architecture == Architecture(MLP, 3, (4, 2), 0.1)
    assert m.feature_set.features == ("amount", "hour", "velocity")
    assert m.feature_set.build().inputs == {"amount": "numeric", "hour": "numeric", "velocity": "numeric"}
    assert m.preprocessing.steps.impute.tolist() == [20.0, 12.0, 1.0]
    assert (m.preprocessing.fitted_on, m.preprocessing.clip_quantiles, m.preprocessing.clip_margin) == ("train", (0.001, 0.999), 0.5)
    assert (m.score.type, m.score.calibration, m.score.explanation) == ("probability", None, None)
    assert (m.threshold.policy, m.threshold.target, m.threshold.fallback) == ("target_precision", 0.9, None)
    assert m.metrics["test_f1"] == 0.8
    assert m.evaluation["champion"]["model"] == "transactions@2"
    assert (m.lineage.source_table, m.lineage.source_version, m.lineage.split) == ("lakescore.transactions", 12, "time")
    assert m.lineage.counts["train"] == {"rows": 800, "anomalies": 8}
    assert m.lineage.feedback == FeedbackLineage("lakescore.feedback", 4, 2)
    assert (m.training.epochs_run, m.training.best_epoch, m.training.pos_weight) == (2, 0, 49.0)
    assert m.training.history[1]["validation_aucpr"] is None  # NaN was written as null
    assert m.training.shuffle_buffer_rows is None  # not recorded then
    assert m.code_version == {"lakescore": "0.1.0", "git_commit": "55079bb0000000000000000000000000deadbeef"}
    assert set(m.files) == {"weights.safetensors", "reference.json", "pr_curve.png"}


def test_a_bundle_written_before_the_typed_manifest_re_serialises_to_the_same_bytes():
    on_disk = (BUNDLE_V1 / B.MANIFEST).read_bytes()
    assert B._json_bytes(B.load_bundle(BUNDLE_V1).manifest.to_json()) == on_disk


def test_rewriting_a_loaded_bundle_gives_the_same_bundle_identity(tmp_path):
    old = B.load_bundle(BUNDLE_V1)
    again = B.write_bundle(
        tmp_path / "again", old.manifest, old.state_dict(), old.reference,
        {"pr_curve.png": old.files["pr_curve.png"]},
    )
    assert again.sha256 == old.sha256


def _training_inputs():
    """The inputs tests/data/bundle_v1 was written from (tests/data/README.md)."""
    from lakescore.features import numeric_feature_set
    from lakescore.models import build_model
    from lakescore.preprocess import Preprocessing
    from training import evaluation as E
    from training.data import SplitPlan
    from training.pipeline import BASELINE, MODEL, Candidate, Evaluation, FittedModel, PreparedData, TrainingInput
    from training.thresholds import Threshold
    from training.trainer import TrainedModel, make_architecture

    settings = Settings()
    fs = numeric_feature_set(["amount", "hour", "velocity"])
    spec = SourceSpec("payments_v1", 1, ("transaction_id",), tuple(FeatureSpec(c, "numeric", (c,), "none") for c in fs.features),
                      label="is_anomaly", date_column="event_date")
    stats = {
        "amount": {"q_low": 1.0, "median": 20.0, "q_high": 400.0, "mean": 35.5, "std": 50.25},
        "hour": {"q_low": 0.0, "median": 12.0, "q_high": 23.0, "mean": 11.75, "std": 6.5},
        "velocity": {"q_low": 0.0, "median": 1.0, "q_high": 9.0, "mean": None, "std": None},
    }
    column = lambda k: np.array([np.nan if stats[f][k] is None else stats[f][k] for f in fs.features])  # noqa: E731
    preprocessing = Preprocessing.from_statistics(
        fs.features, column("median"), column("q_low"), column("q_high"), column("mean"), column("std"), 0.5
    )
    architecture = make_architecture(MLP, 3, SimpleNamespace(hidden=(4, 2), dropout=0.1))
    torch.manual_seed(0)
    epoch = {"epoch": 0, "train_loss": 0.5, "validation_aucpr": 0.625, "validation_aucroc": 0.75, "train_rows": 800,
             "train_seconds": 0.5, "train_rows_per_s": 1600.0, "epoch_seconds": 0.75, "best_epoch": 0,
             "early_stopped": False, "workers": 2, "device": "cpu"}
    history = [epoch, {**epoch, "epoch": 1, "train_loss": 0.25, "validation_aucpr": float("nan"),
                       "validation_aucroc": 0.875, "early_stopped": True}]
    trained = TrainedModel(architecture, build_model(architecture).state_dict(), history,
                           [{"start_epoch": 0, "resumed_from_epoch": None}], 0, 0.625,
                           "/lake/_checkpoints/transactions-v3-20261201T000000/checkpoint_000000")
    scores, labels = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.75]), np.array([0, 0, 1, 1, 0, 0])
    types = np.array(["", "", "spike", "burst", "", ""])
    fallback = "no threshold reaches precision 0.9; the highest precision instead"
    evaluation = {
        "test": {MODEL: E.evaluate(scores, labels, 0.7312, 3), BASELINE: E.evaluate(scores[::-1], labels, 0.55, 3),
                 "champion": E.evaluate(scores * 0.9, labels, 0.5, 3)},
        "validation": {MODEL: E.evaluate(scores, labels, 0.7312, 3), BASELINE: E.evaluate(scores[::-1], labels, 0.55, 3)},
        "test_by_anomaly_type": {MODEL: E.by_type(scores, labels, types, 0.7312),
                                 BASELINE: E.by_type(scores[::-1], labels, types, 0.55)},
        "baseline_threshold": Threshold("target_precision", 0.9, 0.55, fallback).to_manifest(),
        "champion": {"model": "transactions@2", "sha256": "ab" * 32},
        "feedback_labels": 2,
    }
    counts = {"train": {"rows": 800, "anomalies": 8}, "validation": {"rows": 100, "anomalies": 2},
              "test": {"rows": 100, "anomalies": 2}}
    days = [dt.date(2026, 11, 21) + dt.timedelta(days=i) for i in range(7)]
    plan = SplitPlan(dated=True, date_column="event_date", date_to_split={d: "train" if i < 5 else "validation" if i == 5 else "test"
                                                for i, d in enumerate(days)})
    data = PreparedData(None, counts, plan, preprocessing, stats, None, None, fs.features, fs)
    source = SimpleNamespace(name="lakescore.transactions", path="/lake/tables/transactions", format="delta", version=12)
    threshold = Threshold("target_precision", 0.9, 0.7312, None)
    candidate = Candidate(
        TrainingInput(source, (*fs.inputs, "is_anomaly"), spec),
        data,
        FittedModel(trained, architecture, 49.0, "transactions-v3-20261201T000000", Path("/lake/_checkpoints")),
        Evaluation(report=evaluation, threshold=threshold, histograms=None, sample=None),
    )
    return settings, candidate


def test_training_builds_the_manifest_it_always_wrote_plus_the_settings_recorded_since():
    from training.pipeline import build_manifest

    settings, candidate = _training_inputs()
    manifest = build_manifest(settings, candidate, version=3)
    manifest = dataclasses.replace(
        manifest,
        lineage=manifest.lineage.with_extra({"feedback_table": "lakescore.feedback", "feedback_version": 4, "feedback_labels": 2}),
        code_version={"lakescore": "0.1.0", "git_commit": "55079bb0000000000000000000000000deadbeef"},
        created_at="2026-12-01T00:00:00+00:00",
        files=_fixture_json()["files"],
    )
    expected = _fixture_json()
    expected["training"].update(shuffle_buffer_rows=20_000, precision_at_k=100, sample_rows=100_000,
                                negative_sample_rate=1.0, trained_rows=0, worker_cache_mb=1024, whole_read_mb=64)
    # Every baseline's figures, and the best one's AUCPR: here the IsolationForest alone, whose
    # reversed scores rank these rows perfectly (as baseline_test_* always recorded).
    expected["metrics"].update(baseline_isolation_forest_test_aucpr=1.0, baseline_isolation_forest_test_aucroc=1.0,
                               best_baseline_test_aucpr=1.0)
    assert json.loads(B._json_bytes(manifest.to_json())) == expected


def test_the_recorded_training_maps_back_to_the_settings_that_trained_the_model(tmp_path):
    base = Settings().with_overrides({"lake.root": str(tmp_path), "train.hidden": "8", "train.shuffle_buffer_rows": 7})
    again = base.with_overrides(B.load_bundle(BUNDLE_V1).manifest.train_overrides())
    t = again.train
    assert (t.table, t.kind, t.model_name, t.hidden, t.dropout) == ("/lake/tables/transactions", MLP, "transactions", (4, 2), 0.1)
    assert (t.first_date, t.last_date) == (dt.date(2026, 11, 21), dt.date(2026, 11, 27))
    assert (t.threshold_policy, t.threshold_value, t.epochs, t.batch_size, t.learning_rate) == ("target_precision", 0.9, 20, 1024, 0.002)
    assert (t.clip_low_quantile, t.clip_high_quantile, t.clip_margin, t.max_pos_weight) == (0.001, 0.999, 0.5, 50.0)
    assert (again.ray.num_workers, again.ray.use_gpu) == (2, False)
    # Not recorded by that bundle: the settings keep their value; but it trained on every row...
    assert t.shuffle_buffer_rows == 7
    assert base.with_overrides({"train.negative_sample_rate": 0.1}).with_overrides(
        B.load_bundle(BUNDLE_V1).manifest.train_overrides()).train.negative_sample_rate == 1.0
    # ...and streamed its shard every epoch (before the worker cache), and so does its reproduction.
    assert t.worker_cache_mb == 0
    # Nor did it read small splits whole: its reproduction takes Ray Data's shards, as it did.
    assert t.whole_read_mb == 0
    newer = dict(_fixture_json()["training"], shuffle_buffer_rows=5000, precision_at_k=50, sample_rows=1000, worker_cache_mb=64,
                 whole_read_mb=16)
    overrides = TrainingRecord.from_json(newer).settings_overrides()
    assert (overrides["train.shuffle_buffer_rows"], overrides["train.precision_at_k"], overrides["train.sample_rows"]) == (5000, 50, 1000)
    assert overrides["train.worker_cache_mb"] == 64 and overrides["train.whole_read_mb"] == 16


def test_lineage_keys_a_caller_adds_are_kept_and_written_back_flat():
    lineage = Lineage(source_table="t").with_extra({"rows": 10, "feedback_table": "f", "feedback_version": None, "feedback_labels": 0})
    assert lineage.feedback == FeedbackLineage("f", None, 0) and lineage.extra == {"rows": 10}
    assert lineage.to_json() == {
        "source_table": "t", "source_path": None, "source_format": None, "source_version": None, "split": None,
        "date_window": None, "counts": None, "feedback_table": "f", "feedback_version": None, "feedback_labels": 0, "rows": 10,
    }


def _set(path: str | tuple[str, ...], value):
    def change(manifest: dict) -> None:
        *parents, last = path.split(".") if isinstance(path, str) else path
        for key in parents:
            manifest = manifest[key]
        manifest[last] = value

    return change


def _drop(path: str):
    def change(manifest: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            manifest = manifest[key]
        del manifest[last]

    return change


@pytest.mark.parametrize(
    "change, field, problem",
    [
        (_set("version", -1), "version", "integer >= 0"),
        (_set("version", "3"), "version", "expected an integer"),
        (_set("kind", "forest"), "kind", "one of: mlp, autoencoder"),
        (_set("architecture.kind", "autoencoder"), "architecture.kind", "manifest's kind is 'mlp'"),
        (_set("architecture.hidden", [4, 0]), "architecture.hidden", "positive integers"),
        (_set("threshold.value", float("nan")), "threshold.value", "finite number"),
        (_set("threshold.value", "0.7"), "threshold.value", "expected a number"),
        (_set(("files", "pr_curve.png"), "abc"), "files", "pr_curve.png is not 64 lowercase hex"),
        (_drop("score"), "score", "is missing"),
        (_drop("training.seed"), "training.seed", "is missing"),
        (_set("feature_set.features", ["amount", 7, "velocity"]), "feature_set.features", "list of strings"),
        (_set("feature_set.inputs.hour", "float"), "feature_set.inputs", "numeric, boolean, string"),
        (_set("preprocessing.scale", [1.0, 1.0]), "preprocessing.scale", "2 values for 3 features"),
        (_set("preprocessing.scale", [1.0, 0.0, 1.0]), "preprocessing", "scale must be positive"),
        (_set("lineage.feedback_labels", -2), "lineage.feedback_labels", "integer >= 0"),
        (_set("lineage.counts.test", {"rows": 1}), "lineage.counts", "test is not {rows, anomalies}"),
        (_set("created_at", "yesterday"), "created_at", "ISO 8601"),
        (_set("model_path", "/tmp/model.pkl"), "model_path", "not a manifest field"),
    ],
)
def test_an_invalid_manifest_is_refused_naming_the_field_and_the_fix(change, field, problem):
    manifest = copy.deepcopy(_fixture_json())
    change(manifest)
    with pytest.raises(B.BundleError) as raised:
        Manifest.from_json(manifest, "bundle_v1/manifest.json")
    message = str(raised.value)
    assert f"`{field}`" in message and problem in message and "re-export the model" in message, message


def test_a_bundle_whose_manifest_was_edited_on_disk_is_refused_on_load(tmp_path):
    copy_ = tmp_path / "bundle_v1"
    shutil.copytree(BUNDLE_V1, copy_)
    manifest = _fixture_json()
    manifest["threshold"]["value"] = None
    (copy_ / B.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(B.BundleError, match=r"bundle_v1/manifest.json: `threshold.value` is None: expected a number"):
        B.load_bundle(copy_)


# Training settings a reproduction does not take from `train_overrides`, and why.
NOT_FROM_OVERRIDES = {
    "autoencoder_hidden": "an mlp bundle's architecture sets `hidden` (an autoencoder's sets this one)",
    "spec": "`--reproduce` trains with the spec and vocabularies the bundle records, not a file",
    "evaluate_in_process_rows": "where the evaluation scores (this process or an actor pool), not what: the same counts",
}


def test_every_training_setting_is_taken_from_the_bundle_or_named_as_not_and_a_changed_config_does_not_leak_in(tmp_path):
    from lakescore.config import TrainSettings
    from lakescore.manifest import Manifest

    data = _fixture_json()
    data["training"].update(shuffle_buffer_rows=5000, precision_at_k=50, sample_rows=1000, negative_sample_rate=0.25)
    overrides = Manifest.from_json(data).train_overrides()
    covered = {key.split(".", 1)[1] for key in overrides if key.startswith("train.")}
    assert {f.name for f in dataclasses.fields(TrainSettings)} - covered == set(NOT_FROM_OVERRIDES)

    # Today's config differs in every one of them; the reproduction's settings are the bundle's.
    changed = {f"train.{k}": v for k, v in {
        "epochs": 3, "batch_size": 7, "learning_rate": 0.5, "weight_decay": 0.25, "dropout": 0.5, "seed": 99,
        "patience": 1, "clip_low_quantile": 0.1, "clip_high_quantile": 0.9, "clip_margin": 3.0,
        "max_pos_weight": 2.0, "shuffle_buffer_rows": 1, "precision_at_k": 5, "sample_rows": 10, "worker_cache_mb": 3, "whole_read_mb": 5,
        "negative_sample_rate": 0.5, "threshold_policy": "alert_rate", "threshold_value": 0.05, "validation_days": 3, "test_days": 2,
    }.items()}
    today = Settings().with_overrides({"lake.root": str(tmp_path), "ray.num_workers": 5, **changed})
    again = today.with_overrides(overrides)
    from_defaults = Settings().with_overrides({"lake.root": str(tmp_path), **overrides})
    assert again.train == from_defaults.train and again.ray == from_defaults.ray
    assert (again.train.epochs, again.train.clip_margin, again.ray.num_workers) == (20, 0.5, 2)
    assert again.train.negative_sample_rate == 0.25
