"""The training pipeline from a resolved lake source to a written, verified model bundle.

    read (Ray Data, pinned Delta version) -> features + split -> preprocessing fitted on the
    training split (distributed aggregations) -> TorchTrainer (DDP, checkpoints, early stopping)
    -> scores on validation and test (distributed) -> threshold on validation -> evaluation on
    test, the baselines beside it (training.baselines) -> plots, reference histograms -> bundle

No Spark here: the job resolves the source and registers the bundle. Ray must be initialised
by the caller (a job's main, or a test fixture).

What runs in one process, on purpose and bounded: the fine score histograms of the validation
and test windows (counts per bin, summed as the distributed scoring streams them in: a few
megabytes whatever the rows; training.score_histograms states the error this binning allows),
the vocabularies' top values (counted per block where the rows live, see `fit_spec`), and a sample
of at most `train.sample_rows` preprocessed training rows, with their labels, for the baselines
and the reference histograms. No step collects the window's rows: the driver's memory does not grow with it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lakescore import drift
from lakescore import schemas as S
from lakescore.bundle import Bundle, write_bundle
from lakescore.config import Settings
from lakescore.features import FeatureSet
from lakescore.feedback_keys import verdict_key_columns
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
from lakescore.specs import DEFAULT_TOP_N, SourceSpec
from training import baselines as B
from training import evaluation as E
from training import score_histograms as H
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
    hash_uniform,
    read_rows,
    source_dates,
)
from training.feature_batches import (
    X,
    Y,
    feature_matrix,
    features_batch,
    fit_preprocessing,
    preprocess_batch,
    split_tally,
    training_rows,
)
from training.thresholds import ALERT_RATE, FIXED, Threshold, choose_threshold_binned
from training.trainer import EpochHook, TrainedModel, checkpoint_storage, fit_model, make_architecture

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

MODEL = "model"
# The baseline every run evaluates and older readers know (the manifest's baseline_test_* figures);
# training.baselines lists the others.
BASELINE = B.ISOLATION_FOREST
CHAMPION = "champion"  # retraining: the champion's figures on the challenger's test rows
PR_CURVE_PNG = "pr_curve.png"
SCORE_HISTOGRAM_PNG = "score_histogram.png"
# Without a label no threshold can reach a precision: a target_precision policy flags this
# fraction of the validation rows instead (set train.threshold_policy=alert_rate to choose it).
UNSUPERVISED_ALERT_RATE = 0.01


@dataclass(frozen=True)
class TrainingInput:
    """What a run trains on: the resolved source, its column names (the job read its schema), the
    feature spec checked against them (its label, date column and keys drive the split; its
    vocabularies are learned on the training split), and analysts' verdicts {record key:
    is_anomaly} that replace the source's labels."""

    source: SourceLike
    columns: tuple[str, ...]
    spec: SourceSpec
    label_overrides: Mapping[str, bool] = field(default_factory=dict)
    suggested: str | None = None  # the spec as commented TOML when it was suggested, not given

    @property
    def supervised(self) -> bool:
        return self.spec.label is not None


@dataclass(frozen=True)
class FittedModel:
    """A model trained with Ray Train, with how it was trained."""

    trained: TrainedModel
    architecture: Mapping[str, Any]
    pos_weight: float | None  # the mlp loss's positive-class weight (None: the autoencoder)
    run_name: str  # Ray Train's run folder under `storage`
    storage: Path


@dataclass(frozen=True)
class Evaluation:
    """The model and the baselines on the validation and test splits, the threshold chosen on
    validation, and the training sample the reference histograms come from."""

    report: dict[str, Any]  # the manifest's `evaluation` entry
    threshold: Threshold
    # Score counts per fine bin, by (split, MODEL or a baseline's name): never a score per row.
    histograms: Mapping[tuple[str, str], H.Histograms] | None
    sample: np.ndarray | None  # preprocessed training rows (at most train.sample_rows)


@dataclass(frozen=True)
class Candidate:
    """A trained and evaluated model, not yet exported: what retraining judges against the champion."""

    inputs: TrainingInput
    data: "PreparedData"
    fitted: FittedModel
    evaluation: Evaluation

    def with_champion(self, champion: Bundle, figures: Mapping[str, float]) -> "Candidate":
        """This candidate with the champion's figures on the same test rows in its evaluation."""
        report = {**self.evaluation.report, "test": {**self.evaluation.report["test"], CHAMPION: dict(figures)}}
        report[CHAMPION] = {"model": champion.label, "sha256": champion.sha256}
        return dataclasses.replace(self, evaluation=dataclasses.replace(self.evaluation, report=report))


@dataclass(frozen=True)
class TrainingRun:
    """A finished training run: the bundle written, and what to print."""

    bundle: Bundle
    path: Path
    trained: TrainedModel
    evaluation: Mapping[str, Any]
    table: str  # the evaluation, the model and the baselines side by side, and the gap to the best


class TrainingDataError(ValueError):
    """The source cannot be trained on as configured; the message says what to change."""


def train_from_source(
    settings: Settings,
    inputs: TrainingInput,
    *,
    version: int,
    bundle_dir: Path,
    on_epoch_end: EpochHook | None = None,
) -> TrainingRun:
    """Train `settings.train.kind` on `inputs` and write bundle `version` into `bundle_dir`:
    prepare -> fit -> evaluate -> export.

    Args:
        settings: the whole configuration (train and ray sections are used).
        inputs: the source, its columns, the feature set and any analysts' verdicts.
        version: the model version the registry will give this bundle.
        bundle_dir: where to write the bundle (must not exist).
        on_epoch_end: called on every Ray Train worker after each epoch's checkpoint
            (see training.trainer.fit_model); tests pass one to kill a worker.
    """
    candidate = train_candidate(settings, inputs, version=version, on_epoch_end=on_epoch_end)
    return export(settings, candidate, version=version, bundle_dir=bundle_dir)


def train_candidate(
    settings: Settings, inputs: TrainingInput, *, version: int, on_epoch_end: EpochHook | None = None
) -> Candidate:
    """Prepare, fit and evaluate: everything but the bundle."""
    clock = _Clock()
    data = prepare_datasets(settings, inputs)
    clock.lap("read, features, preprocessing fitted and applied; split counts %s", data.counts)
    fitted = fit(settings, data, version=version, on_epoch_end=on_epoch_end)
    clock.lap("Ray Train: %d epochs", len(fitted.trained.history))
    evaluation = evaluate(settings, data, fitted)
    clock.lap("baselines (%s) fitted on %d rows; validation and test scored",
              ", ".join(B.in_report(evaluation.report["test"])), len(evaluation.sample))
    if inputs.label_overrides:
        evaluation = dataclasses.replace(evaluation, report={**evaluation.report, "feedback_labels": len(inputs.label_overrides)})
    return Candidate(inputs, data, fitted, evaluation)


def fit(settings: Settings, data: "PreparedData", *, version: int, on_epoch_end: EpochHook | None = None) -> FittedModel:
    """Train the model on the prepared training split with Ray Train, early-stopping on validation."""
    t = settings.train
    counts = data.counts[TRAIN]
    pos_weight, loss_scale = None, 1.0
    if t.kind == MLP:
        # The weight the whole split calls for (capped), times the rate: kept normals then count
        # 1/rate each relative to the anomalies, as the whole split's normals would (the loss is
        # scaled by the rate overall, which Adam does not see). The train_loss reported is the
        # loss per row of the whole split: the kept rows' sum / rate / the split's rows.
        rate = t.negative_sample_rate
        pos_weight = float(min((counts["rows"] - counts["anomalies"]) / counts["anomalies"], t.max_pos_weight)) * rate
        loss_scale = data.trained_rows / (rate * counts["rows"])
    architecture = make_architecture(t.kind, len(data.features), t)
    run_name = f"{t.model_name}-v{version}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
    trained = fit_model(
        data.train_xy,
        data.validation_xy,
        architecture=architecture,
        settings=settings,
        run_name=run_name,
        pos_weight=pos_weight,
        on_epoch_end=on_epoch_end,
        supervised=data.supervised,
        train_loss_scale=loss_scale,
    )
    return FittedModel(trained, architecture, pos_weight, run_name, checkpoint_storage(settings))


def evaluate(settings: Settings, data: "PreparedData", fitted: FittedModel) -> Evaluation:
    """Score validation and test with the model and the baselines (training.baselines: fitted on
    a bounded sample of the same training split) into fine score histograms, choose each one's
    threshold on validation's by the same policy, evaluate on test's (training.score_histograms:
    every estimated figure comes with the bound on its error). Validation and test are whole:
    negative downsampling touches the training split only, so these figures need no correction."""
    t = settings.train
    features = data.features
    sample, labels = sample_matrix(data.featured, features, data.preprocessing, TRAIN, data.sample_rows, t.sample_rows,
                                   t.seed, uniform=t.negative_sample_rate < 1.0)
    baselines = B.fit_baselines(sample, labels, kind=fitted.architecture["kind"], supervised=data.supervised, seed=t.seed)
    scorers = (MODEL, *baselines.names)
    weights = {k: v.numpy() for k, v in fitted.trained.state_dict.items()}
    policy, target = _threshold_policy(settings, data.supervised)
    fixed = [target] if policy == FIXED else []
    bins = {MODEL: H.ScoreBins.for_kind(fitted.architecture["kind"]).with_thresholds(fixed),
            **{name: H.ScoreBins.of(b.scale).with_thresholds(fixed) for name, b in baselines.fitted.items()}}
    window_rows = sum(int(c.get("rows", 0)) for c in data.counts.values())
    histograms = score_splits(data.featured, (VALIDATION, TEST), features, data.preprocessing, fitted.architecture,
                              weights, baselines.fitted, bins, in_process=window_rows <= t.evaluate_in_process_rows)
    val = {m: histograms[(VALIDATION, m)] for m in scorers}
    test = {m: histograms[(TEST, m)] for m in scorers}
    thresholds = {m: choose_threshold_binned(policy, target, val[m]) for m in scorers}
    if (policy, target) != (t.threshold_policy, t.threshold_value):
        note = (f"no label to reach a {t.threshold_policy} of {t.threshold_value} with: flagged the top {target:g} of "
                "validation rows instead (set train.threshold_policy=alert_rate and threshold_value to choose)")
        log.warning(note)
        thresholds = {m: dataclasses.replace(th, fallback=note) for m, th in thresholds.items()}
    if not data.supervised:
        return _unlabelled_evaluation(thresholds, histograms, sample, baselines.skipped)
    values = {m: th.value for m, th in thresholds.items()}
    report = {
        "test": {m: H.evaluate(test[m], values[m], t.precision_at_k) for m in scorers},
        "validation": {m: H.evaluate(val[m], values[m], t.precision_at_k) for m in scorers},
        "test_by_anomaly_type": {m: H.by_type(test[m], values[m]) for m in scorers},
        **_baseline_thresholds(thresholds),
        "binning": _binning(bins),
    }
    report["baselines"] = B.summary(report["test"], MODEL, baselines.skipped)
    figures, versus = report["test"][MODEL], report["baselines"]
    log.info("test AUCPR %.4f (+- %.2g), AUCROC %.4f (+- %.2g) from score histograms; %+.2f AUCPR points over the best "
             "baseline (%s)", figures["aucpr"], figures["aucpr_error"], figures["aucroc"], figures["aucroc_error"],
             versus["gap_aucpr_points"], versus["best"])
    return Evaluation(report=report, threshold=thresholds[MODEL], histograms=histograms, sample=sample)


def _baseline_thresholds(thresholds: Mapping[str, Threshold]) -> dict[str, Any]:
    """The report's baseline thresholds: the IsolationForest's as `baseline_threshold` (where
    readers of older reports find it), every baseline's under `baseline_thresholds`."""
    return {
        "baseline_threshold": thresholds[BASELINE].to_manifest(),
        "baseline_thresholds": {m: th.to_manifest() for m, th in thresholds.items() if m != MODEL},
    }


def _binning(bins: Mapping[str, H.ScoreBins]) -> dict[str, Any]:
    """How the evaluation's scores were binned, for the manifest."""
    return {
        "method": "fine score histograms: AUCPR, AUCROC and precision@k treat a bin as tied scores, "
                  "each with the bound on its error (*_error); counts at the threshold are exact",
        **{m: {"scale": b.scale, "bins": b.size} for m, b in bins.items()},
    }


def _threshold_policy(settings: Settings, supervised: bool) -> tuple[str, float]:
    """The threshold policy and target to apply: the configured ones, except that without a label
    a target precision cannot be measured and the alert rate UNSUPERVISED_ALERT_RATE is used."""
    t = settings.train
    if not supervised and t.threshold_policy not in (ALERT_RATE, FIXED):
        return ALERT_RATE, UNSUPERVISED_ALERT_RATE
    return t.threshold_policy, t.threshold_value


def _unlabelled_evaluation(
    thresholds: Mapping[str, Threshold],
    histograms: Mapping[tuple[str, str], H.Histograms],
    sample: np.ndarray,
    skipped: Mapping[str, str],
) -> Evaluation:
    """What can be measured without a label: rows, threshold and the share flagged; every metric
    that needs a label (AUCs, precision, recall...) is NaN, None in the manifest, and so is the
    gap to the best baseline."""
    report = {
        "labelled": False,
        "test": {m: H.evaluate_unlabelled(histograms[(TEST, m)], th.value) for m, th in thresholds.items()},
        "validation": {m: H.evaluate_unlabelled(histograms[(VALIDATION, m)], th.value) for m, th in thresholds.items()},
        "test_by_anomaly_type": {m: {} for m in thresholds},
        **_baseline_thresholds(thresholds),
    }
    report["baselines"] = B.summary(report["test"], MODEL, skipped)
    return Evaluation(report=report, threshold=thresholds[MODEL], histograms=histograms, sample=sample)


def export(
    settings: Settings,
    candidate: Candidate,
    *,
    version: int,
    bundle_dir: Path,
    lineage_extra: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Write the candidate's bundle: weights, manifest, reference histograms and plots.

    `lineage_extra`: more lineage for the manifest (retraining: the feedback table version read).
    """
    t = settings.train
    inputs, data, fitted, evaluation = candidate.inputs, candidate.data, candidate.fitted, candidate.evaluation
    features, trained, threshold = data.features, fitted.trained, evaluation.threshold
    histograms, sample = evaluation.histograms, evaluation.sample
    report = evaluation.report
    label = f"{t.model_name} v{version} ({t.kind}) on {inputs.source.name}, test split"
    names = B.in_report(report["test"])
    test = {m: histograms[(TEST, m)] for m in (MODEL, *names)}
    extra_files = {
        PR_CURVE_PNG: E.plot_pr_curve_binned({t.kind: test[MODEL], **{n: test[n] for n in names}}, label),
        SCORE_HISTOGRAM_PNG: E.plot_score_histogram_binned(test[MODEL], threshold.value, label),
    }
    reference = {
        "features": {f: drift.reference_histogram(sample[:, i]) for i, f in enumerate(features)},
        "score": H.reference_histogram(histograms[(VALIDATION, MODEL)], drift.DEFAULT_BINS),
        "rows": int(len(sample)),
    }
    manifest = build_manifest(settings, candidate, version=version)
    if lineage_extra:
        manifest = dataclasses.replace(manifest, lineage=manifest.lineage.with_extra(lineage_extra))
    bundle = write_bundle(bundle_dir, manifest, trained.state_dict, reference, extra_files)
    log.info("bundle written to %s", bundle_dir)
    table = evaluation_table(t.kind, report)
    return TrainingRun(bundle=bundle, path=bundle_dir, trained=trained, evaluation=report, table=table)


def evaluation_table(kind: str, report: Mapping[str, Any]) -> str:
    """The test figures of the model (headed by its kind) and of each baseline side by side, and
    under them the model's gap to the best baseline in AUCPR points."""
    test = report["test"]
    table = E.format_table({kind: test[MODEL], **{n: test[n] for n in B.in_report(test)}})
    return f"{table}\n{B.gap_line(test, MODEL)}"


@dataclass(frozen=True)
class PreparedData:
    """The source read, featurised and split, with the preprocessing fitted on its training split."""

    featured: "ray.data.Dataset"  # every row in the window: features, label, split, type (materialized)
    counts: Mapping[str, Mapping[str, int]]  # rows and anomalies per split
    plan: SplitPlan
    preprocessing: Preprocessing
    statistics: Mapping[str, Any]
    train_xy: "ray.data.Dataset"  # {"x", "y"} the workers train on (autoencoder: normal rows only; downsampled)
    validation_xy: "ray.data.Dataset"  # {"x", "y"} for early stopping
    features: tuple[str, ...]  # the model's features, in input order
    feature_set: FeatureSet  # the spec fitted on the training split: what the bundle records
    supervised: bool = True  # False: the spec has no label (every row counts as normal)
    trained_rows: int = 0  # rows of train_xy: after the autoencoder's filter and negative downsampling
    # Rows of the training split's uniform sample in `featured` (UNIFORM_COLUMN; all of the split
    # without negative downsampling): what the preprocessing and the baseline's sample draw from.
    sample_rows: int = 0


def prepare_datasets(settings: Settings, inputs: TrainingInput) -> PreparedData:
    """Read the training window, split it as the spec says, learn the spec's vocabularies on the
    training split, compute the features, fit the preprocessing on the training split and build
    the materialized datasets the workers iterate."""
    t = settings.train
    source, spec, label_overrides = inputs.source, inputs.spec, dict(inputs.label_overrides or {})
    if label_overrides and not spec.keys:
        raise TrainingDataError(
            f"{source.name}: analysts' verdicts are joined on the spec's `keys`, but spec {spec.name} lists none; "
            "name the column(s) that identify a row in `keys`"
        )
    plan = _split_plan(settings, source, spec)
    row_kwargs = {"plan": plan, "label": spec.label, "label_overrides": label_overrides, **verdict_keys(settings, spec, label_overrides)}
    feature_set = fit_spec(source, spec, row_kwargs)
    features = feature_set.features
    read_columns = list(dict.fromkeys([*feature_set.inputs, *plan.columns, *([spec.label] if spec.label else []),
                                       *(spec.keys if label_overrides else ())]))
    if S.ANOMALY_TYPE in inputs.columns and S.ANOMALY_TYPE not in read_columns:
        read_columns.append(S.ANOMALY_TYPE)

    # The only full read of the source: features, label, split and type per row, kept in Ray's
    # object store (distributed) for the passes below. In the source's order: Ray Data otherwise
    # emits blocks as its tasks finish, so the batches the workers train on, and the model, changed
    # from run to run (a shuttle MLP's test AUCPR ranged from 0.945 to 0.9997 over runs); ordered,
    # the same table version and seed train the same model.
    rows = read_rows(source, read_columns, plan.partitions)
    rows.context.execution_options.preserve_order = True  # the dataset's own copy of the context
    # Verdicts are few (written by people): shipped to every batch as a small dict.
    featured = rows.map_batches(features_batch, fn_kwargs={"feature_set": feature_set, **row_kwargs}, batch_format="pandas")
    rate = t.negative_sample_rate
    if rate < 1.0:
        # Negative downsampling before anything is kept: the object store holds the training
        # split's kept rows (every anomaly, a `rate` of the normals) and the whole validation and
        # test splits, so a window of any size costs its evaluation splits plus rate x its
        # training split. The rows of the training split whose draw is below `rate`, anomalies
        # included, are marked (UNIFORM_COLUMN): a uniform sample of the split, which the
        # preprocessing and the baseline's sample are fitted on. The split's counts come from a
        # narrow pass over the source (split and label columns only).
        featured = featured.map_batches(
            downsample_training_split, fn_kwargs={"features": features, "rate": rate, "seed": t.seed}, batch_format="pandas"
        ).materialize()
        counts = source_split_counts(source, spec, row_kwargs)
    else:
        featured = featured.materialize()
        counts = split_counts(featured)
    _check_counts(counts, t.kind, plan, supervised=inputs.supervised)

    fitted_on = _select(featured, TRAIN, uniform=rate < 1.0)
    fit_rows = fitted_on.count() if rate < 1.0 else counts[TRAIN]["rows"]
    preprocessing, statistics = fit_preprocessing(
        fitted_on,
        features,
        (t.clip_low_quantile, t.clip_high_quantile),
        t.clip_margin,
        rows=fit_rows,
    )
    if rate < 1.0:
        log.info("preprocessing fitted on a uniform sample of the training split: %d of %d rows", fit_rows,
                 counts[TRAIN]["rows"])

    # What the workers iterate every epoch: materialized, so no Ray Data task competes with them.
    # Validation stays whole; the training split is already downsampled above.
    only_normal = t.kind == AUTOENCODER
    train_xy = _preprocessed(featured, features, preprocessing, TRAIN, only_normal=only_normal).materialize()
    validation_xy = _preprocessed(featured, features, preprocessing, VALIDATION).materialize()
    trained_rows = train_xy.count()  # from the materialized blocks' metadata
    if rate < 1.0:
        log.info("negative downsampling at %g: %d of %d training rows kept, every anomaly among them",
                 rate, trained_rows, counts[TRAIN]["rows"])
    return PreparedData(
        featured, counts, plan, preprocessing, statistics, train_xy, validation_xy, features, feature_set,
        inputs.supervised, trained_rows, fit_rows,
    )


def verdict_keys(settings: Settings, spec: SourceSpec, label_overrides: Mapping[str, bool]) -> dict[str, Any]:
    """How training builds the record key that verdicts name (the `keys`, `hashed_keys` and
    `hash_key` of training.feature_batches.label_and_split): as `flagged` writes it, with the
    spec's and score.sensitive_columns' key columns hashed under score.hash_key (or dropped, as
    score.sensitive_action says). The key then travels to the Ray tasks with the verdicts, as it
    travels to Spark's executors with the scoring UDF."""
    score = settings.score
    keys, hashed = verdict_key_columns(spec.keys, (*spec.sensitive, *score.sensitive_columns), score.sensitive_action)
    if label_overrides and not keys:
        raise TrainingDataError(
            f"every key column of spec {spec.name} ({', '.join(spec.keys)}) is sensitive and dropped from flagged "
            "(score.sensitive_action=drop), so no verdict can name a row; hash them instead (score.sensitive_action=hash)"
        )
    if label_overrides and hashed and not score.hash_key:
        raise TrainingDataError(
            f"key column(s) {', '.join(hashed)} of spec {spec.name} are sensitive: verdicts name their keyed hash, "
            "but the hash key is empty; set LAKESCORE_HASH_KEY (or score.hash_key_file) to the key the nightly job uses"
        )
    return {"keys": keys, "hashed_keys": hashed, "hash_key": score.hash_key if hashed else ""}


def fit_spec(source: SourceLike, spec: SourceSpec, row_kwargs: Mapping[str, Any]) -> FeatureSet:
    """The spec fitted on its whole training split: the vocabularies' top values counted where the
    rows live, never collected (`vocabulary_counts`). Exact counts, ties broken by value, so the
    same table version learns the same vocabularies. Reads only the learned columns and those the
    split needs; a spec that learns nothing reads nothing."""
    learned = {f.columns[0]: f.top_n or DEFAULT_TOP_N for f in spec.features if f.learns}
    if not learned:
        return spec.fit().feature_set()
    plan = row_kwargs["plan"]
    columns = list(dict.fromkeys([*learned, *plan.columns, *([spec.label] if spec.label else []),
                                  *(spec.keys if row_kwargs.get("label_overrides") else ())]))
    rows = read_rows(source, columns, plan.partitions).map_batches(
        training_rows, fn_kwargs={"columns": list(learned), **row_kwargs}, batch_format="pandas"
    )
    counts, total = vocabulary_counts(rows, learned)
    fitted = spec.fit_counts(counts, total)
    log.info("spec %s fitted on %d training rows: %s", spec.name, total, {k: len(v) for k, v in fitted.vocabularies.items()})
    return fitted.feature_set()


_ROWS = ""  # the `column` of the row counts in vocabulary_counts' partial counts (no source column is named "")


def vocabulary_counts(rows: "ray.data.Dataset", top_n: Mapping[str, int]) -> tuple[dict[str, dict[str, int]], int]:
    """({column: {value: rows}} of the `top_n[column]` most frequent text values of each column,
    ties broken by value; the rows counted), distributed:

    1. each block counts its own values (at most its rows);
    2. a Ray Data groupby sums the counts per (column, value): every value ends in one block;
    3. each of those blocks keeps its top_n per column: a value in a column's overall top_n is in
       its block's top_n, so these few rows, brought here, hold the exact answer.

    This process holds at most blocks x sum(top_n) values, whatever the rows or distinct values."""
    from ray.data.context import ShuffleStrategy

    def count(batch: pd.DataFrame) -> pd.DataFrame:
        parts = [pd.DataFrame({"column": [_ROWS], "value": [""], "count": [len(batch)]})]
        for column in top_n:
            values = batch[column]
            counted = values[values.map(lambda v: isinstance(v, str))].value_counts()
            parts.append(pd.DataFrame({"column": column, "value": counted.index.astype(str), "count": counted.to_numpy()}))
        return pd.concat(parts, ignore_index=True).astype({"column": str, "value": str, "count": "int64"})

    def top(batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.rename(columns={"sum(count)": "count"})
        ranked = batch.sort_values(["column", "count", "value"], ascending=[True, False, True])
        rank = ranked.groupby("column").cumcount()
        keep = (ranked["column"] == _ROWS) | (rank < ranked["column"].map(lambda c: top_n.get(c, 0)))
        return ranked[keep]

    partial = rows.map_batches(count, batch_format="pandas")
    # A small groupby: sort-based shuffle in plain tasks (the hash shuffle starts actors, a fixed
    # cost; see feature_batches.fit_preprocessing).
    partial.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    summed = partial.groupby(["column", "value"]).sum("count").map_batches(top, batch_format="pandas").to_pandas()
    if summed.empty:  # no training row at all
        return {column: {} for column in top_n}, 0
    total = int(summed.loc[summed["column"] == _ROWS, "count"].sum())
    counts: dict[str, dict[str, int]] = {}
    for column, n in top_n.items():
        mine = summed[summed["column"] == column].sort_values(["count", "value"], ascending=[False, True]).head(n)
        counts[column] = {str(v): int(c) for v, c in zip(mine["value"], mine["count"])}
    return counts, total


# --- steps ----------------------------------------------------------------------------------


class _Clock:
    """Logs each stage with its duration."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self, message: str, *args: Any) -> None:
        now = time.perf_counter()
        log.info(message + " (%.1fs)", *args, now - self.last)
        self.last = now


def _split_plan(settings: Settings, source: SourceLike, spec: SourceSpec) -> SplitPlan:
    """In time by the spec's date column (a partition column), else stratified by its keys."""
    t = settings.train
    if spec.date_column is not None:
        column = spec.date_column
        dates = source_dates(source, column)
        if not dates:
            raise TrainingDataError(
                f"{source.name}: the spec's `date_column` {column!r} is no partition column of the table; write the "
                f"table partitioned by {column} (as `lakescore generate` does) so the time split can read its dates, "
                "or drop `date_column` from the spec to split by its keys"
            )
        try:
            mapping = date_splits(dates, t.validation_days, t.test_days, t.first_date, t.last_date)
        except ValueError as exc:
            raise TrainingDataError(f"{source.name}: {exc}") from None
        return SplitPlan(dated=True, date_to_split=mapping, date_column=column)
    if spec.keys:
        return SplitPlan(dated=False, validation_fraction=t.validation_fraction, test_fraction=t.test_fraction,
                         seed=t.seed, keys=tuple(spec.keys))
    raise TrainingDataError(
        f"{source.name}: spec {spec.name} has neither `date_column` (a time split) nor `keys` (a stratified split); "
        "add one of them to the spec"
    )


def split_counts(featured: "ray.data.Dataset") -> dict[str, dict[str, int]]:
    """Rows and anomalies per split: partial counts per block, summed here (a few numbers per block)."""

    def count(batch: pd.DataFrame) -> pd.DataFrame:
        grouped = batch.groupby(SPLIT_COLUMN)[LABEL_COLUMN].agg(["size", "sum"]).reset_index()
        return grouped.rename(columns={SPLIT_COLUMN: "split", "size": "rows", "sum": "anomalies"})

    return _summed_counts(featured.map_batches(count, batch_format="pandas").to_pandas())


def _summed_counts(partial: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {"rows", "anomalies"}} from per-block partial counts (split, rows, anomalies)."""
    out = {s: {"rows": 0, "anomalies": 0} for s in SPLITS}
    for row in partial.itertuples():
        out[row.split]["rows"] += int(row.rows)
        out[row.split]["anomalies"] += int(row.anomalies)
    return out


def _check_counts(counts: Mapping[str, Mapping[str, int]], kind: str, plan: SplitPlan, *, supervised: bool = True) -> None:
    how = "train.first_date/last_date, validation_days, test_days" if plan.dated else "train.validation_fraction/test_fraction"
    for split in SPLITS:
        if counts[split]["rows"] == 0:
            raise TrainingDataError(f"the {split} split has no rows; adjust {how}")
    if not supervised:
        return
    if counts[VALIDATION]["anomalies"] == 0 or counts[TEST]["anomalies"] == 0:
        raise TrainingDataError(
            f"the validation or test split holds no labelled anomaly ({counts}); early stopping, the threshold and "
            f"the evaluation need some: adjust {how}"
        )
    if kind == MLP and counts[TRAIN]["anomalies"] == 0:
        raise TrainingDataError("the training split holds no labelled anomaly; the mlp needs some (or use kind=autoencoder)")
    if kind == AUTOENCODER and counts[TRAIN]["anomalies"] == counts[TRAIN]["rows"]:
        raise TrainingDataError("the training split holds no row labelled normal; the autoencoder trains on those")


def _select(featured: "ray.data.Dataset", split: str, *, uniform: bool = False) -> "ray.data.Dataset":
    """The rows of one split; `uniform`: only those marked as the split's uniform sample
    (`downsample_training_split`)."""

    def select(batch: pd.DataFrame) -> pd.DataFrame:
        keep = batch[SPLIT_COLUMN] == split
        if uniform:
            keep &= batch[UNIFORM_COLUMN].astype(bool)
        return batch[keep]

    return featured.map_batches(select, batch_format="pandas")


def source_split_counts(source: SourceLike, spec: SourceSpec, row_kwargs: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Rows and anomalies per split of the whole source, from a read of the columns that label and
    split it (not the features): partial counts per block, summed here."""
    plan = row_kwargs["plan"]
    columns = list(dict.fromkeys([*plan.columns, *([spec.label] if spec.label else []),
                                  *(spec.keys if row_kwargs.get("label_overrides") else ())]))
    tallies = read_rows(source, columns, plan.partitions).map_batches(split_tally, fn_kwargs=dict(row_kwargs), batch_format="pandas")
    return _summed_counts(tallies.to_pandas())


def _preprocessed(
    featured: "ray.data.Dataset",
    features: Sequence[str],
    preprocessing: Preprocessing,
    split: str,
    only_normal: bool = False,
    uniform: bool = False,
) -> "ray.data.Dataset":
    """{"x", "y"} of one split, ready for `iter_torch_batches`; `only_normal`: the rows labelled
    normal; `uniform`: the split's uniform sample only (see `_select`)."""

    def run(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        keep = (batch[SPLIT_COLUMN] == split).to_numpy()
        if uniform:
            keep &= batch[UNIFORM_COLUMN].to_numpy(dtype=bool)
        out = preprocess_batch(batch[keep], features, preprocessing)
        rows = out[Y] == 0 if only_normal else slice(None)
        return {X: out[X][rows], Y: out[Y][rows]}

    return featured.map_batches(run, batch_format="pandas")


def negative_sample(batch: pd.DataFrame, features: Sequence[str], rate: float, seed: int) -> np.ndarray:
    """Which rows of a features batch negative downsampling keeps: every anomaly, and a normal row
    when a uniform drawn from a hash of its feature values and label (salted with `seed`) is below
    `rate`. Deterministic per row: the same table version keeps the same rows on every run,
    machine and partitioning (rows with equal features and label are kept or dropped together)."""
    if not len(batch):
        return np.zeros(0, dtype=bool)
    return batch[LABEL_COLUMN].to_numpy(dtype=bool) | (_row_draw(batch, features, seed) < rate)


def _row_draw(batch: pd.DataFrame, features: Sequence[str], seed: int) -> np.ndarray:
    """A uniform in [0, 1) per row of a features batch, from a hash of its feature values and label."""
    hashed = pd.util.hash_pandas_object(batch[[*features, LABEL_COLUMN]], index=False).to_numpy()
    return hash_uniform(hashed, seed)


UNIFORM_COLUMN = "__uniform"  # a training row drawn below the sampling rate: the split's uniform sample


def downsample_training_split(batch: pd.DataFrame, features: Sequence[str], rate: float, seed: int) -> pd.DataFrame:
    """Ray Data batch function on a features batch: every row of the validation and test splits,
    and of the training split the rows `negative_sample` keeps, with UNIFORM_COLUMN true where
    the row's draw is below `rate` (whatever its label: a uniform sample of the split), and true
    on the other splits' rows."""
    if not len(batch):
        return batch.assign(**{UNIFORM_COLUMN: np.zeros(0, dtype=bool)})
    training = (batch[SPLIT_COLUMN] == TRAIN).to_numpy()
    drawn = _row_draw(batch, features, seed) < rate
    keep = ~training | batch[LABEL_COLUMN].to_numpy(dtype=bool) | drawn
    return batch.assign(**{UNIFORM_COLUMN: ~training | drawn})[keep].reset_index(drop=True)


def sample_matrix(
    featured: "ray.data.Dataset",
    features: Sequence[str],
    preprocessing: Preprocessing,
    split: str,
    split_rows: int,
    max_rows: int,
    seed: int,
    *,
    uniform: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels): a random sample of at most about `max_rows` preprocessed rows of `split`
    (`uniform`: of its uniform sample, `split_rows` rows) and their labels, in this process.
    Drawn whatever the label, so its share of anomalies is the split's: what the supervised
    baselines learn from, and with negative downsampling still the whole split's (`uniform`)."""
    ds = _preprocessed(featured, features, preprocessing, split, uniform=uniform)
    if split_rows > max_rows:
        ds = ds.random_sample(max_rows / split_rows, seed=seed)
    blocks = [b for b in ds.iter_batches(batch_format="numpy", batch_size=None) if len(b[X])]
    if not blocks:
        return np.empty((0, len(features)), np.float32), np.empty(0, bool)
    x = np.concatenate([b[X] for b in blocks])[:max_rows]
    y = np.concatenate([b[Y] for b in blocks])[:max_rows].astype(bool)
    return x, y


def score_splits(
    featured: "ray.data.Dataset",
    splits: Sequence[str],
    features: Sequence[str],
    preprocessing: Preprocessing,
    architecture: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    baselines: Mapping[str, B.Baseline],
    bins: Mapping[str, H.ScoreBins],
    *,
    in_process: bool = False,
) -> dict[tuple[str, str], H.Histograms]:
    """Score the rows of `splits` with the model (`lakescore.models.score_batch`, as the nightly job
    does) and each of `baselines`, distributed, into score histograms per (split, MODEL or a
    baseline's name) with `bins` {MODEL: ..., name: ...}.

    Each block returns its counts per (split, scorer, label, type, bin), at most one row per
    occupied bin, and they are summed here as they stream in: this process holds the histograms
    (a few megabytes), never a score per row, however large the window.

    `in_process`: score here, block by block of the materialized rows (the batches the pool's
    workers get: whole blocks), with the same scorer, instead of in a pool of Ray Data actors.
    For a small window (`train.evaluate_in_process_rows`) the pool's start (actors spawned, the
    model and baselines shipped to each) costs more than the scoring; the counts are the same.

    Eight arguments: the model is built in each Ray Data worker from its parts (architecture,
    weights, preprocessing, features), and the rows, the baseline and the bins come with them."""
    scorer_kwargs = {
        "splits": tuple(splits),
        "features": tuple(features),
        "preprocessing": preprocessing,
        "architecture": dict(architecture),
        "weights": dict(weights),
        "baselines": dict(baselines),
        "bins": dict(bins),
    }
    if in_process:
        scorer = _SplitScorer(**scorer_kwargs)
        parts = (scorer(b) for b in featured.iter_batches(batch_format="pandas", batch_size=None))
    else:
        counts = featured.map_batches(_SplitScorer, fn_constructor_kwargs=scorer_kwargs, batch_format="pandas")
        parts = counts.iter_batches(batch_format="numpy", batch_size=None)
    merged = H.merge_counts(parts, bins)
    for split in splits:  # a split without rows still has (empty) histograms
        for name, b in bins.items():
            merged.setdefault((split, name), H.Histograms.empty(b))
    return merged


class _SplitScorer:
    """A Ray Data worker's scorer: the model is built once when the worker starts, not per batch."""

    def __init__(self, *, splits, features, preprocessing, architecture, weights, baselines, bins) -> None:
        self.splits, self.features, self.preprocessing, self.baselines = splits, features, preprocessing, baselines
        self.bins = bins
        self.kind = architecture["kind"]
        self.model = build_model(architecture)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        self.model.eval()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch[batch[SPLIT_COLUMN].isin(self.splits)]
        x, _ = self.preprocessing.apply(feature_matrix(batch, self.features))
        split = batch[SPLIT_COLUMN].to_numpy(dtype=object)
        labels = batch[LABEL_COLUMN].to_numpy(dtype=bool)
        types = batch[TYPE_COLUMN].fillna("").to_numpy(dtype=object)
        parts = [
            H.sparse_counts(split, MODEL, labels, types, self.bins[MODEL].index(score_batch(self.model, self.kind, x))),
            *(H.sparse_counts(split, name, labels, types, self.bins[name].index(b.scores(x)))
              for name, b in self.baselines.items()),
        ]
        return pd.concat([pd.DataFrame(p) for p in parts], ignore_index=True)


# --- the manifest ---------------------------------------------------------------------------


def build_manifest(settings: Settings, candidate: Candidate, *, version: int) -> Manifest:
    """Everything DESIGN.md lists for manifest.json except format_version and files (added on
    write), from the settings and what the run read, fitted and evaluated.

    Long on purpose: every field a bundle records is filled here, in one place, in manifest order."""
    source, feature_set = candidate.inputs.source, candidate.data.feature_set
    data, trained = candidate.data, candidate.fitted.trained
    pos_weight, run_name = candidate.fitted.pos_weight, candidate.fitted.run_name
    threshold, evaluation = candidate.evaluation.threshold, candidate.evaluation.report
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
        # The IsolationForest's, under the names older readers know; every baseline's below.
        "baseline_test_aucpr": test[BASELINE]["aucpr"],
        "baseline_test_aucroc": test[BASELINE]["aucroc"],
        "threshold": threshold.value,
        **baseline_metrics(test),
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
            split=data.plan.describe(),
            date_window=data.plan.window(),
            counts=_finite(data.counts),
        ),
        training=TrainingRecord(
            epochs_run=len(trained.history),
            best_epoch=trained.best_epoch,
            best_validation_aucpr=_finite(trained.best_validation_aucpr) if data.supervised else None,
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
            worker_cache_mb=t.worker_cache_mb,
            whole_read_mb=t.whole_read_mb,
            precision_at_k=t.precision_at_k,
            sample_rows=t.sample_rows,
            negative_sample_rate=t.negative_sample_rate,
            trained_rows=data.trained_rows,
            ray_run=run_name,
            checkpoint=trained.checkpoint_path,
        ),
        code_version=code_version(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def baseline_metrics(test: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The manifest's (and so the registry's) figures of every baseline on test, and the best
    one's AUCPR. Numbers only, as the metrics entry holds: the best baseline's name is in the
    evaluation report (`baselines.best`), and the gap is test_aucpr - best_baseline_test_aucpr."""
    names = B.in_report(test)
    _, best = B.best_baseline(test, names)
    out = {}
    for name in names:
        out[f"baseline_{name}_test_aucpr"] = test[name]["aucpr"]
        out[f"baseline_{name}_test_aucroc"] = test[name]["aucroc"]
    out["best_baseline_test_aucpr"] = best
    return out


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
