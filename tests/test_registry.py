"""The model registry: first model is champion, promotion and rollback in one commit, clear errors."""

import numpy as np
import pytest
import torch

from lakescore import registry
from lakescore.bundle import write_bundle
from lakescore.features import numeric_feature_set
from lakescore.manifest import Architecture, FeatureSetSpec, Lineage, Manifest, PreprocessingRecord, ScoreDefinition, ThresholdRecord
from lakescore.preprocess import Preprocessing
from lakescore.models import build_model


def _register(spark, settings, name, metrics):
    version = registry.next_version(spark, settings, name)
    arch = {"kind": "mlp", "n_features": 2, "hidden": [2], "dropout": 0.0}
    manifest = Manifest(
        name=name,
        version=version,
        kind="mlp",
        architecture=Architecture.from_json(arch),
        feature_set=FeatureSetSpec.of(numeric_feature_set(["a", "b"])),
        preprocessing=PreprocessingRecord(Preprocessing.from_statistics(["a", "b"], *[np.zeros(2)] * 4, np.ones(2))),
        score=ScoreDefinition.for_kind("mlp"),
        threshold=ThresholdRecord("fixed", 0.5, 0.5),
        metrics=metrics,
        lineage=Lineage(source_table="lakescore.t", source_version=3),
    )
    torch.manual_seed(version)
    path = registry.bundle_dir(settings, name, version)
    bundle = write_bundle(path, manifest, build_model(arch).state_dict(), {})
    return registry.register_bundle(spark, settings, bundle, path)


def _stages(spark, settings, name):
    return {r["version"]: r["stage"] for r in registry.list_models(spark, settings, name)}


def test_the_first_model_of_a_name_is_champion_and_later_ones_are_challengers(spark, settings):
    first = _register(spark, settings, "reg_a", {"test_aucpr": 0.5})
    second = _register(spark, settings, "reg_a", {"test_aucpr": 0.6})
    assert (first.version, first.stage) == (1, "champion")
    assert (second.version, second.stage) == (2, "challenger")
    assert registry.get_entry(spark, settings, "reg_a").version == 1
    assert registry.get_entry(spark, settings, "reg_a@2").metrics == {"test_aucpr": 0.6}
    row = registry.list_models(spark, settings, "reg_a")[0]
    assert (row["source_table"], row["source_version"]) == ("lakescore.t", 3)


def test_promotion_and_rollback_each_take_one_commit_and_leave_one_champion(spark, settings):
    for _ in range(3):
        _register(spark, settings, "reg_b", {})
    table = registry.registry_table(settings)
    before = spark.sql(f"DESCRIBE HISTORY {table}").count()
    registry.promote(spark, settings, "reg_b@3", note="better")
    assert _stages(spark, settings, "reg_b") == {1: "archived", 2: "challenger", 3: "champion"}
    registry.promote(spark, settings, "reg_b@1")  # rollback
    assert _stages(spark, settings, "reg_b") == {1: "champion", 2: "challenger", 3: "archived"}
    assert spark.sql(f"DESCRIBE HISTORY {table}").count() == before + 2
    _, bundle = registry.load_registered(spark, settings, "reg_b")
    assert bundle.version == 1


def test_unknown_models_and_bad_references_are_explained(spark, settings):
    with pytest.raises(registry.RegistryError, match="no a champion for nobody|no .*champion for nobody"):
        registry.get_entry(spark, settings, "nobody")
    with pytest.raises(registry.RegistryError, match="not `name`"):
        registry.parse_model_ref("a@b@c")
    with pytest.raises(registry.RegistryError, match="explicit version"):
        registry.promote(spark, settings, "reg_a")


def test_a_bundle_replaced_on_disk_after_registration_is_refused(spark, settings):
    import shutil

    entry = _register(spark, settings, "reg_c", {})
    other = _register(spark, settings, "reg_c", {})
    shutil.rmtree(entry.path)
    shutil.copytree(other.path, entry.path)
    with pytest.raises(Exception, match="files were replaced|manifest"):
        registry.load_registered(spark, settings, "reg_c@1")


NOTE = "it's \"fine\" \\ really"


def test_a_note_with_quotes_and_backslashes_is_stored_exactly_by_promote_and_record_decision(spark, settings):
    for _ in range(2):
        _register(spark, settings, "reg_note", {})
    table = registry.registry_table(settings)
    before = spark.sql(f"DESCRIBE HISTORY {table}").count()
    registry.promote(spark, settings, "reg_note@2", note=NOTE)
    notes = {r["version"]: r["note"] for r in registry.list_models(spark, settings, "reg_note")}
    assert notes == {1: None, 2: NOTE}

    challenger = _register(spark, settings, "reg_note", {"test_aucpr": 0.5})
    registry.record_decision(spark, settings, challenger, {"first_gain": 0.25}, NOTE + " kept", promote=False)
    registry.record_decision(spark, settings, challenger, {"gain": 0.5}, NOTE + " promoted", promote=True)
    rows = {r["version"]: r for r in registry.list_models(spark, settings, "reg_note")}
    assert {v: (r["stage"], r["note"]) for v, r in rows.items()} == {
        1: ("archived", None),
        2: ("archived", "archived: replaced by reg_note@3"),
        3: ("champion", NOTE + " promoted"),
    }
    assert rows[3]["metrics"] == {"test_aucpr": 0.5, "first_gain": 0.25, "gain": 0.5}
    # promote, then register (one commit), then each decision: one commit apiece.
    assert spark.sql(f"DESCRIBE HISTORY {table}").count() == before + 4


def test_a_decision_without_promotion_leaves_the_champion_as_it_was(spark, settings):
    _register(spark, settings, "reg_keep", {})
    challenger = _register(spark, settings, "reg_keep", {})
    registry.record_decision(spark, settings, challenger, {}, "not better", promote=False)
    rows = {r["version"]: r for r in registry.list_models(spark, settings, "reg_keep")}
    assert {v: (r["stage"], r["note"]) for v, r in rows.items()} == {1: ("champion", None), 2: ("challenger", "not better")}
    assert rows[2]["metrics"] == {}
