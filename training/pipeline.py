"""The training pipeline from a resolved lake source to a written, verified model bundle.

    read (Ray Data, pinned Delta version) -> features + split -> preprocessing fitted on the
    training split (distributed aggregations) -> TorchTrainer (DDP, checkpoints, early stopping)
    -> scores on validation and test (distributed) -> threshold on validation -> evaluation on
    test, IsolationForest beside it -> plots, reference histograms -> bundle

No Spark here: the job resolves the source and registers the bundle. Ray must be initialised
by the caller (a job's main, or a test fixture).

What runs in one process, on purpose and bounded: the scores and labels of the validation and
test windows (collected after distributed scoring: a few numbers per row), and a sample of at
most `train.sample_rows` preprocessed training rows for the IsolationForest baseline and the
reference histograms.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lakescore import drift
from lakescore import schemas as S
from lakescore.bundle import Bundle, write_bundle
from lakescore.config import Settings
from lakescore.feedback_keys import RECORD_KEY_COLUMNS, record_key_column
from lakescore.features import FeatureSet
from lakescore.manifest import (
    Architecture,
    FeatureSetSpec,
    Lineage,
    Manifest,
    PreprocessingRecord,
    ScoreDefinition,
    ThresholdRecord,
    TrainingRecord,
)
from lakescore.models import AUTOENCODER, MLP, build_model, score_batch
from lakescore.preprocess import Preprocessing
from training import evaluation as E
from training.data import (
    LABEL_COLUMN,
    SPLIT_COLUMN,
    SPLITS,
    TEST,
    TRAIN,
    TYPE_COLUMN,
    VALIDATION,
    SourceLike,
    SplitPlan,
    date_splits,
    read_rows,
    source_dates,
)
from training.preprocessing import X, Y, feature_matrix, features_batch, fit_preprocessing, preprocess_batch
from training.thresholds import Threshold, choose_threshold
from training.trainer import TrainedModel, fit_model, make_architecture

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

MODEL = "model"
BASELINE = "isolation_forest"
PR_CURVE_PNG = "pr_curve.png"
SCORE_HISTOGRAM_PNG = "score_histogram.png"


@dataclass(frozen=True)
class TrainingRun:
    """A finished training run: the bundle written, and what to print."""

    bundle: Bundle
    path: Path
    trained: TrainedModel
    evaluation: Mapping[str, Any]
    table: str  # the evaluation, model and IsolationForest side by side


class TrainingDataError(ValueError):
    """The source cannot be trained on as configured; the message says what to change."""


def train_from_source(
    settings: Settings,
    source: SourceLike,
    columns: Sequence[str],
    feature_set: FeatureSet,
    *,
    version: int,
    bundle_dir: Path,
    fault_injection: Mapping[str, Any] | None = None,
    label_overrides: Mapping[str, bool] | None = None,
    champion: Bundle | None = None,
    lineage_extra: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Train `settings.train.kind` on `source` and write bundle `version` into `bundle_dir`.

    Args:
        settings: the whole configuration (train and ray sections are used).
        source: the resolved source (path, format, pinned Delta version).
        columns: the source's column names (the job read its schema).
        feature_set: the feature set checked against the source's columns.
        version: the model version the registry will give this bundle.
        bundle_dir: where to write the bundle (must not exist).
        fault_injection: test only; see training.trainer.train_loop_per_worker.
        label_overrides: analysts' verdicts {record key: is_anomaly}; they replace source labels.
        champion: a bundle to score on the same test rows (retraining): its figures land in
            evaluation["test"]["champion"], at its own threshold.
        lineage_extra: more lineage for the manifest (e.g. the feedback table version read).
    """
    t = settings.train
    clock = _Clock()
    data = prepare_datasets(settings, source, columns, feature_set, label_overrides)
    featured, counts, plan, preprocessing = data.featured, data.counts, data.plan, data.preprocessing
    features = feature_set.features
    clock.lap("read, features, preprocessing fitted and applied; split counts %s", counts)

    pos_weight = None
    if t.kind == MLP:
        negatives = counts[TRAIN]["rows"] - counts[TRAIN]["anomalies"]
        pos_weight = float(min(negatives / counts[TRAIN]["anomalies"], t.max_pos_weight))
    architecture = make_architecture(t.kind, len(features), t)
    run_name = f"{t.model_name}-v{version}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
    storage = settings.ray.storage_path or settings.lake.checkpoints_dir
    trained = fit_model(
        data.train_xy,
        data.validation_xy,
        architecture=architecture,
        train_settings=t,
        ray_settings=settings.ray,
        storage_path=storage,
        run_name=run_name,
        pos_weight=pos_weight,
        fault_injection=fault_injection,
    )

    clock.lap("Ray Train: %d epochs", len(trained.history))

    # IsolationForest beside the model: fitted on a bounded sample of the same training split.
    sample = sample_matrix(featured, features, preprocessing, TRAIN, counts[TRAIN]["rows"], t.sample_rows, t.seed)
    forest = E.fit_isolation_forest(sample, t.seed)
    weights = {k: v.numpy() for k, v in trained.state_dict.items()}
    scored = score_splits(featured, (VALIDATION, TEST), features, preprocessing, architecture, weights, forest)
    val, test = scored[scored["split"] == VALIDATION], scored[scored["split"] == TEST]
    clock.lap("IsolationForest fitted on %d rows; validation and test scored", len(sample))
    threshold = choose_threshold(t.threshold_policy, t.threshold_value, val["score"].to_numpy(), val["y"].to_numpy())
    baseline_threshold = choose_threshold(
        t.threshold_policy, t.threshold_value, val["baseline"].to_numpy(), val["y"].to_numpy()
    )
    evaluation = {
        "test": {
            MODEL: E.evaluate(test["score"], test["y"], threshold.value, t.precision_at_k),
            BASELINE: E.evaluate(test["baseline"], test["y"], baseline_threshold.value, t.precision_at_k),
        },
        "validation": {
            MODEL: E.evaluate(val["score"], val["y"], threshold.value, t.precision_at_k),
            BASELINE: E.evaluate(val["baseline"], val["y"], baseline_threshold.value, t.precision_at_k),
        },
        "test_by_anomaly_type": {
            MODEL: E.by_type(test["score"], test["y"], test["type"], threshold.value),
            BASELINE: E.by_type(test["baseline"], test["y"], test["type"], baseline_threshold.value),
        },
        "baseline_threshold": baseline_threshold.to_manifest(),
    }
    if champion is not None:
        from training.retrain import evaluate_champion, score_bundle_on_split

        evaluation["test"]["champion"] = evaluate_champion(
            score_bundle_on_split(featured, TEST, champion), champion, t.precision_at_k
        )
        evaluation["champion"] = {"model": champion.label, "sha256": champion.sha256}
        clock.lap("champion %s scored on the same test rows", champion.label)
    if label_overrides:
        evaluation["feedback_labels"] = len(label_overrides)
    label = f"{t.model_name} v{version} ({t.kind}) on {source.name}, test split"
    extra_files = {
        PR_CURVE_PNG: E.plot_pr_curve(
            {t.kind: (test["score"].to_numpy(), test["y"].to_numpy()), BASELINE: (test["baseline"].to_numpy(), test["y"].to_numpy())},
            label,
        ),
        SCORE_HISTOGRAM_PNG: E.plot_score_histogram(test["score"].to_numpy(), test["y"].to_numpy(), threshold.value, label),
    }
    reference = {
        "features": {f: drift.reference_histogram(sample[:, i]) for i, f in enumerate(features)},
        "score": drift.reference_histogram(val["score"].to_numpy()),
        "rows": int(len(sample)),
    }
    manifest = build_manifest(
        settings, source, feature_set, data, trained, threshold, evaluation,
        version=version, pos_weight=pos_weight, run_name=run_name,
    )
    if lineage_extra:
        manifest = dataclasses.replace(manifest, lineage=manifest.lineage.with_extra(lineage_extra))
    bundle = write_bundle(bundle_dir, manifest, trained.state_dict, reference, extra_files)
    clock.lap("evaluated; bundle written to %s", bundle_dir)
    table = E.format_table({t.kind: evaluation["test"][MODEL], BASELINE: evaluation["test"][BASELINE]})
    return TrainingRun(bundle=bundle, path=bundle_dir, trained=trained, evaluation=evaluation, table=table)


@dataclass(frozen=True)
class PreparedData:
    """The source read, featurised and split, with the preprocessing fitted on its training split."""

    featured: "ray.data.Dataset"  # every row in the window: features, label, split, type (materialized)
    counts: Mapping[str, Mapping[str, int]]  # rows and anomalies per split
    plan: SplitPlan
    preprocessing: Preprocessing
    statistics: Mapping[str, Any]
    train_xy: "ray.data.Dataset"  # {"x", "y"} the workers train on (autoencoder: normal rows only)
    validation_xy: "ray.data.Dataset"  # {"x", "y"} for early stopping


def prepare_datasets(
    settings: Settings,
    source: SourceLike,
    columns: Sequence[str],
    feature_set: FeatureSet,
    label_overrides: Mapping[str, bool] | None = None,
) -> PreparedData:
    """Read the training window, compute features and splits, fit the preprocessing on the
    training split and build the materialized datasets the workers iterate."""
    t = settings.train
    plan = _split_plan(settings, source, columns)
    features = feature_set.features
    read_columns = list(dict.fromkeys([*feature_set.inputs, S.IS_ANOMALY, S.EVENT_DATE if plan.dated else S.RECORD_ID]))
    key_column = record_key_column(columns) if label_overrides else None
    if label_overrides and key_column is None:
        raise TrainingDataError(
            f"{source.name} has no record key ({' or '.join(RECORD_KEY_COLUMNS)}) to join analyst verdicts on"
        )
    if key_column:
        read_columns = list(dict.fromkeys([*read_columns, key_column]))
    if S.ANOMALY_TYPE in columns:
        read_columns.append(S.ANOMALY_TYPE)

    # The only full read of the source: features, label, split and type per row, kept in Ray's
    # object store (distributed) for the passes below. In the source's order: Ray Data otherwise
    # emits blocks as its tasks finish, so the batches the workers train on, and the model, changed
    # from run to run (a shuttle MLP's test AUCPR ranged from 0.945 to 0.9997 over runs); ordered,
    # the same table version and seed train the same model.
    rows = read_rows(source, read_columns)
    rows.context.execution_options.preserve_order = True  # the dataset's own copy of the context
    featured = (
        rows
        .map_batches(
            features_batch,
            fn_kwargs={
                "feature_set": feature_set,
                "plan": plan,
                # Verdicts are few (written by people): shipped to every batch as a small dict.
                "label_overrides": dict(label_overrides or {}),
                "key_column": key_column,
            },
            batch_format="pandas",
        )
        .materialize()
    )
    counts = split_counts(featured)
    _check_counts(counts, t.kind, plan)

    preprocessing, statistics = fit_preprocessing(
        _select(featured, TRAIN),
        features,
        (t.clip_low_quantile, t.clip_high_quantile),
        t.clip_margin,
        rows=counts[TRAIN]["rows"],
    )

    # What the workers iterate every epoch: materialized, so no Ray Data task competes with them.
    only_normal = t.kind == AUTOENCODER
    train_xy = _preprocessed(featured, features, preprocessing, TRAIN, only_normal=only_normal).materialize()
    validation_xy = _preprocessed(featured, features, preprocessing, VALIDATION).materialize()
    return PreparedData(featured, counts, plan, preprocessing, statistics, train_xy, validation_xy)


# --- steps ----------------------------------------------------------------------------------


class _Clock:
    """Logs each stage with its duration."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self, message: str, *args: Any) -> None:
        now = time.perf_counter()
        log.info(message + " (%.1fs)", *args, now - self.last)
        self.last = now


def _split_plan(settings: Settings, source: SourceLike, columns: Sequence[str]) -> SplitPlan:
    t = settings.train
    if S.IS_ANOMALY not in columns:
        raise TrainingDataError(
            f"{source.name} has no {S.IS_ANOMALY} column; training needs labels to stop early, choose a "
            "threshold and evaluate (the autoencoder trains on the rows labelled normal)"
        )
    if S.EVENT_DATE in columns:
        dates = source_dates(source)
        if not dates:
            raise TrainingDataError(
                f"{source.name} has an {S.EVENT_DATE} column but no {S.EVENT_DATE} partitions; write it "
                f"partitioned by {S.EVENT_DATE} (as `lakescore generate` does) so the time split can read its dates"
            )
        try:
            mapping = date_splits(dates, t.validation_days, t.test_days, t.first_date, t.last_date)
        except ValueError as exc:
            raise TrainingDataError(f"{source.name}: {exc}") from None
        return SplitPlan(dated=True, date_to_split=mapping)
    if S.RECORD_ID in columns:
        return SplitPlan(dated=False, validation_fraction=t.validation_fraction, test_fraction=t.test_fraction, seed=t.seed)
    raise TrainingDataError(
        f"{source.name} has neither {S.EVENT_DATE} (a time split) nor {S.RECORD_ID} (a stratified split); "
        "add one of them to the table"
    )


def split_counts(featured: "ray.data.Dataset") -> dict[str, dict[str, int]]:
    """Rows and anomalies per split: partial counts per block, summed here (a few numbers per block)."""

    def count(batch: pd.DataFrame) -> pd.DataFrame:
        grouped = batch.groupby(SPLIT_COLUMN)[LABEL_COLUMN].agg(["size", "sum"]).reset_index()
        return grouped.rename(columns={SPLIT_COLUMN: "split", "size": "rows", "sum": "anomalies"})

    partial = featured.map_batches(count, batch_format="pandas").to_pandas()
    out = {s: {"rows": 0, "anomalies": 0} for s in SPLITS}
    for row in partial.itertuples():
        out[row.split]["rows"] += int(row.rows)
        out[row.split]["anomalies"] += int(row.anomalies)
    return out


def _check_counts(counts: Mapping[str, Mapping[str, int]], kind: str, plan: SplitPlan) -> None:
    how = "train.first_date/last_date, validation_days, test_days" if plan.dated else "train.validation_fraction/test_fraction"
    for split in SPLITS:
        if counts[split]["rows"] == 0:
            raise TrainingDataError(f"the {split} split has no rows; adjust {how}")
    if counts[VALIDATION]["anomalies"] == 0 or counts[TEST]["anomalies"] == 0:
        raise TrainingDataError(
            f"the validation or test split holds no labelled anomaly ({counts}); early stopping, the threshold and "
            f"the evaluation need some: adjust {how}"
        )
    if kind == MLP and counts[TRAIN]["anomalies"] == 0:
        raise TrainingDataError(f"the training split holds no labelled anomaly; the mlp needs some (or use kind=autoencoder)")
    if kind == AUTOENCODER and counts[TRAIN]["anomalies"] == counts[TRAIN]["rows"]:
        raise TrainingDataError("the training split holds no row labelled normal; the autoencoder trains on those")


def _select(featured: "ray.data.Dataset", split: str) -> "ray.data.Dataset":
    return featured.map_batches(lambda b: b[b[SPLIT_COLUMN] == split], batch_format="pandas")


def _preprocessed(
    featured: "ray.data.Dataset",
    features: Sequence[str],
    preprocessing: Preprocessing,
    split: str,
    only_normal: bool = False,
) -> "ray.data.Dataset":
    """{"x", "y"} of one split, ready for `iter_torch_batches`."""

    def run(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        out = preprocess_batch(batch, features, preprocessing, split)
        keep = out[Y] == 0 if only_normal else slice(None)
        return {X: out[X][keep], Y: out[Y][keep]}

    return featured.map_batches(run, batch_format="pandas")


def sample_matrix(
    featured: "ray.data.Dataset",
    features: Sequence[str],
    preprocessing: Preprocessing,
    split: str,
    split_rows: int,
    max_rows: int,
    seed: int,
) -> np.ndarray:
    """A random sample of at most about `max_rows` preprocessed rows of `split`, in this process."""
    ds = _preprocessed(featured, features, preprocessing, split)
    if split_rows > max_rows:
        ds = ds.random_sample(max_rows / split_rows, seed=seed)
    blocks = [b[X] for b in ds.iter_batches(batch_format="numpy", batch_size=None) if len(b[X])]
    return np.concatenate(blocks)[:max_rows] if blocks else np.empty((0, len(features)), np.float32)


def score_splits(
    featured: "ray.data.Dataset",
    splits: Sequence[str],
    features: Sequence[str],
    preprocessing: Preprocessing,
    architecture: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    forest,
) -> pd.DataFrame:
    """Score the rows of `splits` with the model (through the scoring core the nightly job uses)
    and the IsolationForest, distributed; return split, score, baseline, y and type per row."""

    def run(batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch[batch[SPLIT_COLUMN].isin(splits)]
        x, _ = preprocessing.apply(feature_matrix(batch, features))
        model = build_model(architecture)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        model.eval()
        return pd.DataFrame(
            {
                "split": batch[SPLIT_COLUMN].to_numpy(dtype=object),
                "score": score_batch(model, architecture["kind"], x),
                "baseline": E.isolation_forest_scores(forest, x),
                "y": batch[LABEL_COLUMN].to_numpy(dtype=bool),
                "type": batch[TYPE_COLUMN].fillna("").to_numpy(dtype=object),
            }
        )

    return featured.map_batches(run, batch_format="pandas").to_pandas()


# --- the manifest ---------------------------------------------------------------------------


def build_manifest(
    settings: Settings,
    source: SourceLike,
    feature_set: FeatureSet,
    data: PreparedData,
    trained: TrainedModel,
    threshold: Threshold,
    evaluation: Mapping[str, Any],
    *,
    version: int,
    pos_weight: float | None,
    run_name: str,
) -> Manifest:
    """Everything DESIGN.md lists for manifest.json except format_version and files (added on write).

    Args:
        data: the prepared data (counts, split plan, preprocessing and its statistics).
        trained: the trained model (architecture, history, checkpoint).
        threshold, evaluation: the threshold chosen on validation and the evaluation report.
        pos_weight, run_name: what the run used beyond the settings (the mlp's positive-class
            weight, the Ray Train run name).
    """
    t = settings.train
    kind = trained.architecture["kind"]
    test, val = evaluation["test"], evaluation["validation"]
    metrics = {
        "validation_aucpr": val[MODEL]["aucpr"],
        "validation_aucroc": val[MODEL]["aucroc"],
        "test_aucpr": test[MODEL]["aucpr"],
        "test_aucroc": test[MODEL]["aucroc"],
        "test_precision": test[MODEL]["precision"],
        "test_recall": test[MODEL]["recall"],
        "test_f1": test[MODEL]["f1"],
        "test_precision_at_k": test[MODEL]["precision_at_k"],
        "baseline_test_aucpr": test[BASELINE]["aucpr"],
        "baseline_test_aucroc": test[BASELINE]["aucroc"],
        "threshold": threshold.value,
    }
    clip_quantiles = (t.clip_low_quantile, t.clip_high_quantile)
    return Manifest(
        name=t.model_name,
        version=version,
        kind=kind,
        architecture=Architecture.from_json(_finite(dict(trained.architecture))),
        feature_set=FeatureSetSpec.of(feature_set),
        preprocessing=PreprocessingRecord(
            data.preprocessing,
            fitted_on=TRAIN,
            statistics=_finite(dict(data.statistics)),
            clip_quantiles=clip_quantiles,
            clip_margin=t.clip_margin,
        ),
        score=ScoreDefinition.for_kind(kind),
        threshold=ThresholdRecord.from_json(_finite(threshold.to_manifest())),
        metrics=_finite(metrics),
        evaluation=_finite(evaluation),
        lineage=Lineage(
            source_table=source.name,
            source_path=source.path,
            source_format=source.format,
            source_version=source.version,
            split="time" if data.plan.dated else "stratified hash of record_id",
            date_window=data.plan.window(),
            counts=_finite(data.counts),
        ),
        training=TrainingRecord(
            epochs_run=len(trained.history),
            best_epoch=trained.best_epoch,
            best_validation_aucpr=_finite(trained.best_validation_aucpr),
            history=tuple(_finite(trained.history)),
            attempts=tuple(_finite(trained.attempts)),
            num_workers=settings.ray.num_workers,
            use_gpu=settings.ray.use_gpu,
            pos_weight=pos_weight,
            batch_size=t.batch_size,
            learning_rate=t.learning_rate,
            weight_decay=t.weight_decay,
            epochs=t.epochs,
            patience=t.patience,
            seed=t.seed,
            validation_days=t.validation_days,
            test_days=t.test_days,
            validation_fraction=t.validation_fraction,
            test_fraction=t.test_fraction,
            clip_quantiles=clip_quantiles,
            clip_margin=t.clip_margin,
            max_pos_weight=t.max_pos_weight,
            shuffle_buffer_rows=t.shuffle_buffer_rows,
            precision_at_k=t.precision_at_k,
            sample_rows=t.sample_rows,
            ray_run=run_name,
            checkpoint=trained.checkpoint_path,
        ),
        code_version=code_version(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def code_version() -> dict[str, str | None]:
    """The installed lakescore version and, when run from a git checkout, its commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("lakescore")
    except PackageNotFoundError:
        package = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"lakescore": package, "git_commit": commit}


def _finite(value: Any) -> Any:
    """NaN/inf -> None, recursively (the manifest is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
