"""`lakescore train` end to end on lake tables, Ray Train's recovery from a killed worker, and
model quality against the issue's targets on small data with fixed seeds."""

import os

import numpy as np
import pyarrow as pa
import pytest

from lakescore import bundle as B
from lakescore import registry
from lakescore import schemas as S
from lakescore.models import model_from_bundle, score_batch

# Ray Train's controller collects each epoch's report on this interval (default 2 s, which
# would dominate epochs of a few thousand rows). Read when Ray starts, so set at import, before
# the session's `ray_local` fixture runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# Quality targets of the issue, checked here on small data (4 tiny days, subsampled tables),
# where a few anomalies more or less move the figures: hence the tolerance.
ALLOWED_AUCPR_DELTA = 0.03
TRANSACTIONS_AUCPR = 0.90
TRANSACTIONS_MARGIN_OVER_ISOLATION_FOREST = 0.30
SHUTTLE_AUCPR = 0.99
SHUTTLE_AUTOENCODER_AUCROC = 0.99
BREAST_CANCER_AUCPR = 0.97

# Small-data training settings: smaller batches give enough optimiser steps per epoch.
SMALL_TRAINING = {
    "train.batch_size": "256",
    "train.epochs": "20",
    "train.patience": "5",
    "train.learning_rate": "0.003",
    "ray.num_workers": "2",
}


@pytest.fixture(scope="module")
def mlp_run(spark, settings, transactions, ray_local):
    from pipelines.train import run_train

    run_settings = settings.with_overrides({**SMALL_TRAINING, "train.model_name": "transactions_test"})
    run, entry = run_train(spark, run_settings)
    return run_settings, run, entry


@pytest.mark.slow
def test_training_on_the_transactions_table_registers_a_verified_champion_bundle(spark, mlp_run):
    settings, run, entry = mlp_run
    assert (entry.name, entry.version, entry.stage) == ("transactions_test", 1, "champion")
    loaded = B.load_bundle(entry.path)  # verifies every sha256 and the format version
    assert loaded.sha256 == run.bundle.sha256 == entry.sha256
    assert entry.path == str(registry.bundle_dir(settings, "transactions_test", 1))
    assert set(loaded.manifest.files) == {"weights.safetensors", "reference.json", "pr_curve.png", "score_histogram.png"}
    assert loaded.files["pr_curve.png"][:4] == b"\x89PNG"

    m = loaded.manifest
    lineage = m.lineage
    assert lineage.source_table == "transactions" and lineage.source_format == "delta"
    version = spark.sql(f"DESCRIBE HISTORY {settings.table('transactions')}").agg({"version": "max"}).collect()[0][0]
    assert lineage.source_version == version
    assert lineage.date_window == {
        "first": "2026-11-01",
        "last": "2026-11-04",
        "train": "2026-11-01..2026-11-02",
        "validation": "2026-11-03..2026-11-03",
        "test": "2026-11-04..2026-11-04",
    }
    counts = lineage.counts
    total = spark.sql(f"SELECT COUNT(*) AS n, SUM(CAST(is_anomaly AS INT)) AS a FROM {settings.table('transactions')}").collect()[0]
    assert sum(c["rows"] for c in counts.values()) == total["n"]
    assert sum(c["anomalies"] for c in counts.values()) == total["a"]
    assert m.feature_set.name == "transactions_v1" and m.architecture.n_features == 21
    assert m.preprocessing.fitted_on == "train" and len(m.preprocessing.steps.impute) == 21
    assert m.score.type == "probability"
    assert m.threshold.policy == "target_precision" and m.threshold.target == 0.9
    # Every setting that shapes training is recorded, so a reproduction can set it again.
    assert (m.training.shuffle_buffer_rows, m.training.clip_margin) == (settings.train.shuffle_buffer_rows, settings.train.clip_margin)

    # One metrics entry per epoch run, in order; early stopping keeps the best epoch's weights.
    history = m.training.history
    assert [h["epoch"] for h in history] == list(range(len(history)))
    assert m.training.best_validation_aucpr == max(h["validation_aucpr"] for h in history)
    # Equal shards: Ray Data drops at most one row per worker beyond an equal split.
    assert all(h["workers"] == 2 and 0 <= counts["train"]["rows"] - h["train_rows"] < 2 for h in history)

    # The registry row carries the manifest's metrics.
    row = spark.sql(f"SELECT * FROM {registry.registry_table(settings)} WHERE name = 'transactions_test'").collect()[0]
    assert row["metrics"]["test_aucpr"] == pytest.approx(m.metrics["test_aucpr"])
    assert row["source_version"] == version


@pytest.mark.slow
def test_the_reference_statistics_follow_the_drift_layout(mlp_run):
    _, run, _ = mlp_run
    reference = run.bundle.reference
    features = run.bundle.manifest.feature_set.features
    assert sorted(reference["features"]) == sorted(features)
    for histogram in [*reference["features"].values(), reference["score"]]:
        assert np.all(np.diff(histogram["edges"]) > 0)
        assert len(histogram["fractions"]) == len(histogram["edges"]) - 1
        assert sum(histogram["fractions"]) == pytest.approx(1.0)
    assert reference["rows"] == run.bundle.manifest.lineage.counts["train"]["rows"]


@pytest.mark.slow
def test_the_bundle_scores_the_test_window_as_evaluation_did(mlp_run, spark, settings):
    """The bundle alone (manifest + weights, as scoring loads it) reproduces the evaluation."""
    _, run, _ = mlp_run
    bundle = run.bundle
    raw = spark.sql(f"SELECT * FROM {settings.table('transactions')} WHERE event_date = DATE'2026-11-04'").toPandas()
    x, _ = bundle.manifest.preprocessing.steps.apply(bundle.manifest.feature_set.build().transform(raw))
    scores = score_batch(model_from_bundle(bundle), bundle.kind, x)
    flagged = int(np.sum(scores >= bundle.threshold))
    test = run.evaluation["test"]["model"]
    assert flagged == test["tp"] + test["fp"]
    assert int(np.sum((scores >= bundle.threshold) & raw[S.IS_ANOMALY].to_numpy())) == test["tp"]


@pytest.mark.slow
def test_the_mlp_beats_isolation_forest_on_transactions_by_the_issue_margin(mlp_run):
    _, run, _ = mlp_run
    test = run.evaluation["test"]
    model, forest = test["model"]["aucpr"], test["isolation_forest"]["aucpr"]
    assert model >= TRANSACTIONS_AUCPR - ALLOWED_AUCPR_DELTA, run.table
    assert model - forest >= TRANSACTIONS_MARGIN_OVER_ISOLATION_FOREST - ALLOWED_AUCPR_DELTA, run.table
    # The printed table holds both models' figures.
    assert "isolation_forest" in run.table and f"{model:.4f}" in run.table


@pytest.mark.slow
def test_negative_downsampling_trains_on_a_quarter_of_the_normal_rows_and_keeps_the_quality(spark, mlp_run, ray_local):
    from pipelines.train import run_train

    settings, full, _ = mlp_run
    run, _ = run_train(spark, settings.with_overrides({"train.model_name": "transactions_sampled", "train.negative_sample_rate": "0.25"}))
    m = run.bundle.manifest
    train = m.lineage.counts["train"]
    normals = train["rows"] - train["anomalies"]
    assert m.training.negative_sample_rate == 0.25
    assert 0.2 * normals < m.training.trained_rows - train["anomalies"] < 0.3 * normals
    assert all(0 <= m.training.trained_rows - h["train_rows"] < 2 for h in m.training.history)
    # Kept normals weigh 1/rate: the whole split's (capped) weight times the rate.
    assert m.training.pos_weight == pytest.approx(min(normals / train["anomalies"], settings.train.max_pos_weight) * 0.25)
    # Validation and test are whole: the same rows as without downsampling, so the figures compare.
    for split in ("validation", "test"):
        assert run.evaluation[split]["model"]["rows"] == full.evaluation[split]["model"]["rows"]
    # Still a learned model well above the IsolationForest, close to the full run. On these 6,000
    # training rows a quarter of the normals is 1,500 rows, so the allowance is wider than the demo
    # week's (200,490 rows: AUCPR 0.906 full, 0.896 at 0.25; docs/measurements.md, "Training").
    sampled, whole = (r.evaluation["test"] for r in (run, full))
    assert sampled["model"]["aucpr"] >= whole["model"]["aucpr"] - 0.1, run.table
    assert sampled["model"]["aucpr"] - sampled["isolation_forest"]["aucpr"] >= 0.2, run.table
    assert m.lineage.counts == full.bundle.manifest.lineage.counts


def test_a_killed_worker_is_replaced_and_training_resumes_from_the_last_checkpoint(tmp_path, settings, ray_local):
    import ray

    from training.faults import kill_worker_once
    from training.trainer import fit_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 1.5).astype(np.float32)
    rows = [{"x": a, "y": b} for a, b in zip(x, y)]
    train = ray.data.from_items(rows[:1500]).materialize()
    validation = ray.data.from_items(rows[1500:]).materialize()
    marker = tmp_path / "killed"
    run_settings = settings.with_overrides({"train.epochs": "4", "train.patience": "10", "train.batch_size": "128", "train.learning_rate": "0.05", "ray.num_workers": "2"})

    trained = fit_model(
        train,
        validation,
        architecture={"kind": "mlp", "n_features": 4, "hidden": [8], "dropout": 0.0},
        settings=run_settings.with_overrides({"ray.storage_path": str(tmp_path / "checkpoints")}),
        run_name="killed-worker",
        pos_weight=3.0,
        on_epoch_end=kill_worker_once(after_epoch=1, marker=marker),
    )
    assert "killed worker rank 1" in marker.read_text()
    # The first worker group ran epochs 0-1; the second started from epoch 1's checkpoint.
    assert trained.attempts == [
        {"start_epoch": 0, "resumed_from_epoch": None},
        {"start_epoch": 2, "resumed_from_epoch": 1},
    ]
    assert [h["epoch"] for h in trained.history] == [0, 1, 2, 3]
    assert all(h["workers"] == 2 and h["train_rows"] == 1500 and h["device"] == "cpu" for h in trained.history)
    # Training went on from the checkpoint's weights, not from scratch: the loss kept falling.
    assert trained.history[2]["train_loss"] < trained.history[0]["train_loss"]
    assert trained.best_validation_aucpr > 0.9


@pytest.fixture(scope="module")
def benchmark_tables(tmp_path_factory):
    """The real benchmarks as Delta tables (written with delta-rs: these tests need no Spark)."""
    from deltalake import write_deltalake

    from lakescore.datasets import BENCHMARKS

    root = tmp_path_factory.mktemp("benchmarks")
    for name, load in BENCHMARKS.items():
        frame = load()
        if name == "shuttle":
            frame = frame.sample(n=15_000, random_state=0)  # small data: a third of the 49,097 rows
        write_deltalake(str(root / name), pa.Table.from_pandas(frame, preserve_index=False))
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "table, kind, metric, target",
    [
        ("shuttle", "mlp", "aucpr", SHUTTLE_AUCPR),
        ("shuttle", "autoencoder", "aucroc", SHUTTLE_AUTOENCODER_AUCROC),
        ("breast_cancer", "mlp", "aucpr", BREAST_CANCER_AUCPR),
    ],
)
def test_the_real_benchmarks_reach_the_issue_targets(settings, benchmark_tables, ray_local, tmp_path, table, kind, metric, target):
    from deltalake import DeltaTable

    from lakescore.specs import builtin_spec
    from training.data import TableSource
    from training.pipeline import TrainingInput, train_from_source

    path = str(benchmark_tables / table)
    columns = DeltaTable(path).schema().to_arrow().names
    run_settings = settings.with_overrides(
        {
            "train.kind": kind,
            "train.model_name": f"{table}_{kind}",
            # One worker: quality, not parallelism, is under test here (and it starts faster).
            "ray.num_workers": "1",
            "train.epochs": "10",
            "train.batch_size": "256" if table == "shuttle" else "32",
        }
    )
    # The builtin spec of the table: the features numeric_v1 gave (tests/test_train_spec.py).
    inputs = TrainingInput(TableSource(table, path, "delta", version=0), tuple(columns), builtin_spec(f"{table}_v1"))
    run = train_from_source(run_settings, inputs, version=1, bundle_dir=tmp_path / "bundle")
    test = run.evaluation["test"]
    assert test["model"][metric] >= target - ALLOWED_AUCPR_DELTA, run.table
    # Undated tables are split per class by the record_id hash: every split holds anomalies.
    counts = run.bundle.manifest.lineage.counts
    assert run.bundle.manifest.lineage.split == "stratified hash of record_id"
    assert all(c["anomalies"] > 0 for c in counts.values())
    assert counts["test"]["anomalies"] / counts["test"]["rows"] == pytest.approx(
        counts["train"]["anomalies"] / counts["train"]["rows"], rel=0.25
    )
    if kind == "autoencoder":
        assert run.bundle.manifest.score.type == "reconstruction_error"
        # The autoencoder trained on the rows labelled normal only.
        history = run.bundle.manifest.training.history
        assert history[0]["train_rows"] == counts["train"]["rows"] - counts["train"]["anomalies"]


def test_a_training_job_asks_ray_train_to_collect_reports_every_fifth_of_a_second_unless_told_otherwise(monkeypatch):
    from pipelines.train import job_environment

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert job_environment() == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}  # Ray's own default is 2 s
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    assert job_environment() == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"}
