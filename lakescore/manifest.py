"""The bundle manifest as types: what training records and scoring reads, checked on load.

`Manifest.from_json` turns a manifest.json object into frozen dataclasses and checks every
field's type and value (not just that the key is there): a manifest that a person edited, a
tool truncated or a newer lakescore wrote fails here, naming the field, instead of deep inside
a Spark task. `to_json` gives back the JSON object, in the shape training has always written:
a bundle already in a registry parses and re-serialises to the same bytes
(tests/data/bundle_v1).

Keys that training writes on every bundle are written back even when null; keys that only some
bundles carry (the autoencoder's score explanation, the analyst-feedback lineage of a retrained
model, lineage extras, settings recorded by later versions) are written only when present.
Older manifests lacking a key read it as None (training settings: as the code then behaved).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from lakescore.features import BOOLEAN, NUMERIC, STRING, TIMESTAMP, FeatureSet, feature_set_from_manifest
from lakescore.models import AUTOENCODER, KINDS, MLP
from lakescore.preprocess import Preprocessing
from lakescore.specs import FittedSpec, SourceSpec, SpecError, builtin_spec

FORMAT_VERSION = 1
PROBABILITY = "probability"
RECONSTRUCTION_ERROR = "reconstruction_error"
SCORE_TYPES = (PROBABILITY, RECONSTRUCTION_ERROR)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INPUT_KINDS = (NUMERIC, BOOLEAN, STRING, TIMESTAMP)
_FIX = "re-export the model with this lakescore"


class BundleError(ValueError):
    """A bundle is missing, altered, or of a format this code does not read."""


# --- reading checked JSON ------------------------------------------------------------------


class _Object:
    """One JSON object of the manifest, read key by key; every error names `path.key`."""

    def __init__(self, data: Any, path: str, where: str):
        if not isinstance(data, dict):
            raise BundleError(f"{where}: `{path}` is {_kind_of(data)}, expected a JSON object; {_FIX}")
        self.data, self.path, self.where = data, path, where

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> BundleError:
        return BundleError(f"{self.where}: `{self.name(key)}` {problem}; {_FIX}")

    def get(self, key: str, check: Callable[[Any], str | None], *, required: bool = True, nullable: bool = False) -> Any:
        """The value at `key`, checked: `check` returns what is wrong with it, or None."""
        if key not in self.data:
            if required:
                raise self.fail(key, "is missing")
            return None
        value = self.data[key]
        if value is None and nullable:
            return None
        problem = check(value)
        if problem:
            shown = repr(value)
            raise self.fail(key, f"is {shown if len(shown) <= 60 else shown[:57] + '...'}: {problem}")
        return value

    def child(self, key: str, *, required: bool = True) -> "_Object | None":
        if key not in self.data and not required:
            return None
        if key not in self.data:
            raise self.fail(key, "is missing")
        return _Object(self.data[key], self.name(key), self.where)

    def unknown(self, known: tuple[str, ...]) -> None:
        extra = sorted(set(self.data) - set(known))
        if extra:
            raise self.fail(extra[0], f"is not a manifest field this lakescore knows (known: {', '.join(known)})")


def _kind_of(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({value!r})"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "expected a non-empty string"


def _int(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
        return None if value >= minimum else f"expected an integer >= {minimum}"

    return check


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "expected a number"
    return None if math.isfinite(value) else "expected a finite number"


def _rate(value: Any) -> str | None:
    problem = _number(value)
    return problem or (None if 0 < value <= 1 else "expected a share in (0, 1]")


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else "expected a JSON object"


def _strings(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return "expected a list of strings"
    return None if len(set(value)) == len(value) else "expected distinct names"


def _numbers(value: Any) -> str | None:
    if not isinstance(value, list) or any(_number(v) for v in value):
        return "expected a list of finite numbers"
    return None


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else f"expected one of: {', '.join(choices)}"


def _objects(value: Any) -> str | None:
    return None if isinstance(value, list) and all(isinstance(v, dict) for v in value) else "expected a list of JSON objects"


def _metrics(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "expected a JSON object of metric -> number or null"
    bad = [k for k, v in value.items() if v is not None and _number(v)]
    return f"{bad[0]} is not a number or null" if bad else None


def _optional(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries whose value is not None (keys written only when present)."""
    return {k: v for k, v in values.items() if v is not None}


# --- the sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """What `lakescore.models.build_model` builds: kind, input width, hidden widths, dropout."""

    kind: str
    n_features: int
    hidden: tuple[int, ...]
    dropout: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_features": self.n_features, "hidden": list(self.hidden), "dropout": self.dropout}

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json", path: str = "architecture") -> "Architecture":
        o = _Object(data, path, where)
        o.unknown(("kind", "n_features", "hidden", "dropout"))
        hidden = o.get("hidden", lambda v: None if isinstance(v, list) and v and not any(_int(1)(h) for h in v)
                       else "expected a non-empty list of positive integers")
        dropout = o.get("dropout", _number, required=False)
        if dropout is not None and not 0 <= dropout < 1:
            raise o.fail("dropout", f"is {dropout!r}: expected a number in [0, 1)")
        return cls(
            kind=o.get("kind", _one_of(KINDS)),
            n_features=o.get("n_features", _int(1)),
            hidden=tuple(hidden),
            dropout=0.0 if dropout is None else dropout,
        )


@dataclass(frozen=True)
class FeatureSetSpec:
    """The feature set as the bundle records it (`FeatureSet.to_manifest()`); `build()` rebuilds it.

    Bundles trained from a feature spec also carry the spec and what training learned from it
    (`spec`, `learned`); older bundles name a feature set this code knows (transactions_v1,
    numeric_v1) and have neither.
    """

    name: str
    inputs: Mapping[str, str]  # raw column -> NUMERIC, BOOLEAN, STRING or TIMESTAMP, in order
    features: tuple[str, ...]  # model input order
    spec: SourceSpec | None = None  # the source's feature spec (keys, label, sensitive columns, features)
    learned: Mapping[str, Any] | None = None  # what fitting the spec learned: {"vocabularies": {...}}

    @classmethod
    def of(cls, feature_set: FeatureSet) -> "FeatureSetSpec":
        return cls.from_json(feature_set.to_manifest())

    @property
    def fitted(self) -> FittedSpec | None:
        """The fitted feature spec scoring computes with: the one recorded, else (a bundle from
        before specs) the builtin spec of the same name, else None (numeric_v1)."""
        if self.spec is not None:
            return FittedSpec.from_json({"spec": self.spec.to_json(), "learned": self.learned})
        if self.name == "transactions_v1":
            return builtin_spec(self.name).fit()
        return None

    def build(self) -> FeatureSet:
        """The feature set this lakescore computes for the bundle (ValueError if it knows none)."""
        return feature_set_from_manifest(self.to_json())

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "inputs": dict(self.inputs), "features": list(self.features)}
        if self.spec is not None:
            out["spec"] = self.spec.to_json()
            out["learned"] = _json_copy(self.learned or {})
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json", path: str = "feature_set") -> "FeatureSetSpec":
        o = _Object(data, path, where)
        o.unknown(("name", "inputs", "features", "spec", "learned"))
        inputs = o.get(
            "inputs",
            lambda v: None if isinstance(v, dict) and all(k and x in _INPUT_KINDS for k, x in v.items())
            else f"expected a JSON object of column -> one of {', '.join(_INPUT_KINDS)}",
        )
        spec, learned = None, o.get("learned", _object, required=False)
        if "spec" in o.data:
            try:
                fitted = FittedSpec.from_json({"spec": o.data["spec"], "learned": learned}, f"{where}: `{path}`")
            except SpecError as exc:
                raise BundleError(f"{exc}; {_FIX}") from None
            spec = fitted.spec
        elif learned is not None:
            raise o.fail("learned", "is there without `spec`")
        return cls(
            name=o.get("name", _text),
            inputs=dict(inputs),
            features=tuple(o.get("features", _strings)),
            spec=spec,
            learned=None if spec is None else _json_copy(learned or {}),
        )


def _json_copy(value: Any) -> Any:
    """A deep copy of plain JSON data (the manifest's learned state stays immutable in effect)."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_copy(v) for v in value]
    return value


_PREPROCESSING_ARRAYS = ("impute", "clip_low", "clip_high", "center", "scale")


@dataclass(frozen=True)
class PreprocessingRecord:
    """The preprocessing scoring applies, and how training fitted it (absent from hand-made bundles)."""

    steps: Preprocessing
    fitted_on: str | None = None  # the split it was fitted on
    statistics: Mapping[str, Any] | None = None  # per feature: q_low, median, q_high, mean, std
    clip_quantiles: tuple[float, float] | None = None
    clip_margin: float | None = None

    def to_json(self) -> dict[str, Any]:
        extra = {
            "fitted_on": self.fitted_on,
            "statistics": None if self.statistics is None else dict(self.statistics),
            "clip_quantiles": None if self.clip_quantiles is None else list(self.clip_quantiles),
            "clip_margin": self.clip_margin,
        }
        return {**self.steps.to_manifest(), **_optional(extra)}

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json", path: str = "preprocessing") -> "PreprocessingRecord":
        o = _Object(data, path, where)
        o.unknown(("features", "order", *_PREPROCESSING_ARRAYS, "fitted_on", "statistics", "clip_quantiles", "clip_margin"))
        features = o.get("features", _strings)
        o.get("order", _strings, required=False)  # documentation for people; `apply` is the order
        for key in _PREPROCESSING_ARRAYS:
            values = o.get(key, _numbers)
            if len(values) != len(features):
                raise o.fail(key, f"has {len(values)} values for {len(features)} features")
        try:
            steps = Preprocessing.from_manifest(o.data)
        except ValueError as exc:
            raise BundleError(f"{where}: `{path}` is unusable ({exc}); {_FIX}") from None
        quantiles = o.get("clip_quantiles", lambda v: None if isinstance(v, list) and len(v) == 2 and not _numbers(v)
                          else "expected [low, high]", required=False)
        return cls(
            steps=steps,
            fitted_on=o.get("fitted_on", _text, required=False),
            statistics=o.get("statistics", _object, required=False),
            clip_quantiles=None if quantiles is None else tuple(quantiles),
            clip_margin=o.get("clip_margin", _number, required=False),
        )


@dataclass(frozen=True)
class ScoreDefinition:
    """What a score means. Higher is more anomalous for every kind this lakescore trains."""

    type: str  # PROBABILITY or RECONSTRUCTION_ERROR
    definition: str | None = None
    higher_is_more_anomalous: bool = True
    calibration: Mapping[str, Any] | None = None  # none yet: scores are used as the model gives them
    explanation: str | None = None  # how per-feature reasons add up, where they do

    @classmethod
    def for_kind(cls, kind: str) -> "ScoreDefinition":
        if kind == MLP:
            return cls(PROBABILITY, "sigmoid of the mlp's single logit")
        if kind == AUTOENCODER:
            return cls(
                RECONSTRUCTION_ERROR,
                "mean over features of (reconstruction - input)^2, in the preprocessed space",
                explanation="per-feature squared reconstruction error / number of features",
            )
        raise ValueError(f"unknown model kind {kind!r}; this lakescore scores: {', '.join(KINDS)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "higher_is_more_anomalous": self.higher_is_more_anomalous,
            "calibration": None if self.calibration is None else dict(self.calibration),
            **_optional({"definition": self.definition, "explanation": self.explanation}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json", path: str = "score") -> "ScoreDefinition":
        o = _Object(data, path, where)
        o.unknown(("type", "definition", "higher_is_more_anomalous", "calibration", "explanation"))
        higher = o.get("higher_is_more_anomalous", _bool, required=False)
        return cls(
            type=o.get("type", _one_of(SCORE_TYPES)),
            definition=o.get("definition", _text, required=False),
            higher_is_more_anomalous=True if higher is None else higher,
            calibration=o.get("calibration", _object, required=False, nullable=True),
            explanation=o.get("explanation", _text, required=False),
        )


@dataclass(frozen=True)
class ThresholdRecord:
    """The score at or above which a row is flagged, the policy that chose it and its target."""

    policy: str
    target: float
    value: float
    fallback: str | None = None  # why the policy could not be met as asked, and what was done
    flag_rule: str | None = None  # e.g. "score >= threshold"

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "target": self.target,
            "value": self.value,
            "fallback": self.fallback,
            **_optional({"flag_rule": self.flag_rule}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json", path: str = "threshold") -> "ThresholdRecord":
        o = _Object(data, path, where)
        o.unknown(("policy", "target", "value", "fallback", "flag_rule"))
        return cls(
            policy=o.get("policy", _text),
            target=o.get("target", _number),
            value=o.get("value", _number),
            fallback=o.get("fallback", _text, required=False, nullable=True),
            flag_rule=o.get("flag_rule", _text, required=False),
        )


@dataclass(frozen=True)
class FeedbackLineage:
    """The analyst verdicts a retrained model's labels came from: written flat into `lineage`."""

    table: str
    version: int | None  # the feedback table's Delta version read (None: it had none)
    labels: int  # verdicts used as labels

    def to_json(self) -> dict[str, Any]:
        return {"feedback_table": self.table, "feedback_version": self.version, "feedback_labels": self.labels}


_LINEAGE_FIELDS = ("source_table", "source_path", "source_format", "source_version", "split", "date_window", "counts")
_FEEDBACK_FIELDS = ("feedback_table", "feedback_version", "feedback_labels")


def _counts(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "expected a JSON object of split -> {rows, anomalies}"
    for split, c in value.items():
        if not isinstance(c, dict) or set(c) != {"rows", "anomalies"} or any(_int(0)(c[k]) for k in c):
            return f"{split} is not {{rows, anomalies}} as integers >= 0"
    return None


@dataclass(frozen=True)
class Lineage:
    """Where the training data came from: source, pinned version, split, window and counts."""

    source_table: str | None = None
    source_path: str | None = None
    source_format: str | None = None
    source_version: int | None = None  # the Delta version read (None: a Parquet snapshot)
    split: str | None = None  # "time" or "stratified hash of record_id"
    date_window: Mapping[str, str] | None = None  # first, last, and first..last per split (time split)
    counts: Mapping[str, Mapping[str, int]] | None = None  # split -> rows, anomalies
    feedback: FeedbackLineage | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys a caller added, written back as they were

    def to_json(self) -> dict[str, Any]:
        core = {k: getattr(self, k) for k in _LINEAGE_FIELDS}
        core["date_window"] = None if self.date_window is None else dict(self.date_window)
        core["counts"] = None if self.counts is None else {s: dict(c) for s, c in self.counts.items()}
        return {**core, **(self.feedback.to_json() if self.feedback else {}), **dict(self.extra)}

    def with_extra(self, values: Mapping[str, Any]) -> "Lineage":
        """This lineage with more keys (e.g. the feedback a retraining read), parsed like the rest."""
        return Lineage.from_json({**self.to_json(), **values})

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json", path: str = "lineage") -> "Lineage":
        o = _Object(data, path, where)
        optional = dict(required=False, nullable=True)
        feedback = None
        if any(k in o.data for k in _FEEDBACK_FIELDS):
            feedback = FeedbackLineage(
                table=o.get("feedback_table", _text),
                version=o.get("feedback_version", _int(0), nullable=True),
                labels=o.get("feedback_labels", _int(0)),
            )
        window = o.get(
            "date_window",
            lambda v: None if isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) else "expected a JSON object of strings",
            **optional,
        )
        return cls(
            source_table=o.get("source_table", _text, **optional),
            source_path=o.get("source_path", _text, **optional),
            source_format=o.get("source_format", _text, **optional),
            source_version=o.get("source_version", _int(0), **optional),
            split=o.get("split", _text, **optional),
            date_window=window,
            counts=o.get("counts", _counts, **optional),
            feedback=feedback,
            extra={k: v for k, v in o.data.items() if k not in _LINEAGE_FIELDS + _FEEDBACK_FIELDS},
        )


@dataclass(frozen=True)
class TrainingRecord:
    """How the model was trained: what happened (epochs, history, worker-group starts) and every
    setting that shapes the result, so `train_overrides` can train it again."""

    epochs_run: int
    best_epoch: int
    best_validation_aucpr: float | None  # None: the validation split held one class
    history: tuple[Mapping[str, Any], ...]  # one entry per epoch run
    attempts: tuple[Mapping[str, Any], ...]  # one entry per worker-group start
    num_workers: int
    pos_weight: float | None  # mlp: the positive class's loss weight; None for the autoencoder
    batch_size: int
    learning_rate: float
    weight_decay: float
    epochs: int
    patience: int
    seed: int
    ray_run: str
    checkpoint: str | None
    # Recorded since the keys appeared; None in older manifests (then: the defaults of the day).
    use_gpu: bool | None = None
    validation_days: int | None = None
    test_days: int | None = None
    validation_fraction: float | None = None
    test_fraction: float | None = None
    clip_quantiles: tuple[float, float] | None = None
    clip_margin: float | None = None
    max_pos_weight: float | None = None
    shuffle_buffer_rows: int | None = None
    precision_at_k: int | None = None
    sample_rows: int | None = None
    negative_sample_rate: float | None = None  # normal training rows kept (1.0: all; None: before the setting)
    trained_rows: int | None = None  # training rows after downsampling (what one epoch reads)
    # None: trained before the per-worker cache existed, i.e. streamed every epoch (0).
    worker_cache_mb: int | None = None
    # None: trained before small splits were read whole, i.e. with Ray Data's shards (0).
    whole_read_mb: int | None = None

    _ALWAYS = ("epochs_run", "best_epoch", "best_validation_aucpr", "num_workers", "pos_weight", "batch_size",
               "learning_rate", "weight_decay", "epochs", "patience", "seed", "ray_run", "checkpoint")
    _RECORDED_SINCE = ("use_gpu", "validation_days", "test_days", "validation_fraction", "test_fraction",
                       "clip_margin", "max_pos_weight", "shuffle_buffer_rows", "precision_at_k", "sample_rows",
                       "negative_sample_rate", "trained_rows",
                       "worker_cache_mb", "whole_read_mb")

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._ALWAYS}
        out["history"] = [dict(h) for h in self.history]
        out["attempts"] = [dict(a) for a in self.attempts]
        later = {k: getattr(self, k) for k in self._RECORDED_SINCE}
        later["clip_quantiles"] = None if self.clip_quantiles is None else list(self.clip_quantiles)
        return {**out, **_optional(later)}

    def settings_overrides(self) -> dict[str, Any]:
        """`section.key` settings overrides for what this record holds (keys it lacks are left
        at the settings' values, which then were the defaults)."""
        out: dict[str, Any] = {
            f"train.{k}": getattr(self, k)
            for k in ("epochs", "batch_size", "learning_rate", "weight_decay", "patience", "seed", "validation_days",
                      "test_days", "validation_fraction", "test_fraction", "clip_margin", "max_pos_weight",
                      "shuffle_buffer_rows", "precision_at_k", "sample_rows")
            if getattr(self, k) is not None
        }
        # Before the setting there was no downsampling: a config that downsamples today must not leak in.
        out["train.negative_sample_rate"] = 1.0 if self.negative_sample_rate is None else self.negative_sample_rate
        if self.clip_quantiles is not None:
            out["train.clip_low_quantile"], out["train.clip_high_quantile"] = self.clip_quantiles
        # A bundle that does not record it was trained before the cache: streamed, so stream again.
        out["train.worker_cache_mb"] = 0 if self.worker_cache_mb is None else self.worker_cache_mb
        # Which rows each worker trains on: a bundle from before whole reads took Ray Data's shards.
        out["train.whole_read_mb"] = 0 if self.whole_read_mb is None else self.whole_read_mb
        out["ray.num_workers"] = self.num_workers
        if self.use_gpu is not None:
            out["ray.use_gpu"] = self.use_gpu
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json", path: str = "training") -> "TrainingRecord":
        o = _Object(data, path, where)
        o.unknown(tuple(f.name for f in cls.__dataclass_fields__.values()))
        later = dict(required=False)
        quantiles = o.get("clip_quantiles", lambda v: None if isinstance(v, list) and len(v) == 2 and not _numbers(v)
                          else "expected [low, high]", **later)
        return cls(
            epochs_run=o.get("epochs_run", _int(0)),
            best_epoch=o.get("best_epoch", _int(-1)),
            best_validation_aucpr=o.get("best_validation_aucpr", _number, nullable=True),
            history=tuple(o.get("history", _objects)),
            attempts=tuple(o.get("attempts", _objects)),
            num_workers=o.get("num_workers", _int(1)),
            pos_weight=o.get("pos_weight", _number, nullable=True),
            batch_size=o.get("batch_size", _int(1)),
            learning_rate=o.get("learning_rate", _number),
            weight_decay=o.get("weight_decay", _number),
            epochs=o.get("epochs", _int(1)),
            patience=o.get("patience", _int(1)),
            seed=o.get("seed", _int(0)),
            ray_run=o.get("ray_run", _text),
            checkpoint=o.get("checkpoint", _text, nullable=True),
            use_gpu=o.get("use_gpu", _bool, **later),
            validation_days=o.get("validation_days", _int(0), **later),
            test_days=o.get("test_days", _int(0), **later),
            validation_fraction=o.get("validation_fraction", _number, **later),
            test_fraction=o.get("test_fraction", _number, **later),
            clip_quantiles=None if quantiles is None else tuple(quantiles),
            clip_margin=o.get("clip_margin", _number, **later),
            max_pos_weight=o.get("max_pos_weight", _number, **later),
            shuffle_buffer_rows=o.get("shuffle_buffer_rows", _int(0), **later),
            precision_at_k=o.get("precision_at_k", _int(1), **later),
            sample_rows=o.get("sample_rows", _int(1), **later),
            negative_sample_rate=o.get("negative_sample_rate", _rate, **later),
            trained_rows=o.get("trained_rows", _int(0), **later),
            worker_cache_mb=o.get("worker_cache_mb", _int(0), **later),
            whole_read_mb=o.get("whole_read_mb", _int(0), **later),
        )


# --- the manifest ---------------------------------------------------------------------------


_MANIFEST_FIELDS = (
    "format_version", "name", "version", "kind", "architecture", "feature_set", "preprocessing", "score",
    "threshold", "metrics", "evaluation", "lineage", "training", "code_version", "created_at", "note", "files",
)


@dataclass(frozen=True)
class Manifest:
    """manifest.json: identity, model, features, preprocessing, score, threshold, provenance, file hashes.

    `files` and `format_version` are filled in by `lakescore.bundle.write_bundle`; the sections
    from `metrics` on are absent from hand-made bundles (benchmarks, test fixtures).
    """

    name: str
    version: int  # the registry's version; 0 for a bundle written without registering (a reproduction)
    kind: str  # lakescore.models.MLP or AUTOENCODER
    architecture: Architecture
    feature_set: FeatureSetSpec
    preprocessing: PreprocessingRecord
    score: ScoreDefinition
    threshold: ThresholdRecord
    metrics: Mapping[str, float | None] | None = None  # headline figures; the registry copies them
    evaluation: Mapping[str, Any] | None = None  # the full evaluation report (free-form JSON)
    lineage: Lineage | None = None
    training: TrainingRecord | None = None
    code_version: Mapping[str, str | None] | None = None  # lakescore version and git commit
    created_at: str | None = None  # ISO 8601, UTC
    note: str | None = None  # what a hand-made bundle is
    files: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256 hex
    format_version: int = FORMAT_VERSION

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        sections = {
            "metrics": None if self.metrics is None else dict(self.metrics),
            "evaluation": self.evaluation,
            "lineage": self.lineage and self.lineage.to_json(),
            "training": self.training and self.training.to_json(),
            "code_version": None if self.code_version is None else dict(self.code_version),
            "created_at": self.created_at,
            "note": self.note,
        }
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "architecture": self.architecture.to_json(),
            "feature_set": self.feature_set.to_json(),
            "preprocessing": self.preprocessing.to_json(),
            "score": self.score.to_json(),
            "threshold": self.threshold.to_json(),
            **_optional(sections),
            "files": dict(self.files),
        }

    def train_overrides(self) -> dict[str, Any]:
        """`section.key` settings overrides that train this model again: its source path, kind,
        name, architecture, threshold policy, date window and recorded training settings.

        Raises BundleError if the manifest records no source path or no training (a hand-made bundle).
        """
        if self.lineage is None or self.lineage.source_path is None or self.training is None:
            raise BundleError(f"{self.label} records no source path or training settings; only trained models can be reproduced")
        overrides: dict[str, Any] = {
            "train.table": self.lineage.source_path,
            "train.kind": self.kind,
            "train.model_name": self.name,
            "train.autoencoder_hidden" if self.kind == AUTOENCODER else "train.hidden": self.architecture.hidden,
            "train.dropout": self.architecture.dropout,
            "train.threshold_policy": self.threshold.policy,
            "train.threshold_value": self.threshold.target,
            **self.training.settings_overrides(),
        }
        window = self.lineage.date_window or {}
        if window.get("first"):
            overrides["train.first_date"] = window["first"]
            overrides["train.last_date"] = window["last"]
        return overrides

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json") -> "Manifest":
        """Parse and check a manifest.json object; BundleError names the first bad field and the fix."""
        o = _Object(data, "", where)
        version = o.data.get("format_version")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise BundleError(
                f"{where} has bundle format version {version!r}; this lakescore reads version "
                f"{FORMAT_VERSION}. Re-export the model with this lakescore, or score with the "
                "lakescore version that wrote it"
            )
        o.unknown(_MANIFEST_FIELDS)
        kind = o.get("kind", _one_of(KINDS))
        for key in ("architecture", "feature_set", "preprocessing", "score", "threshold"):
            if key not in o.data:
                raise o.fail(key, "is missing")
        architecture = Architecture.from_json(o.data["architecture"], where)
        if architecture.kind != kind:
            raise o.fail("architecture.kind", f"is {architecture.kind!r} but the manifest's kind is {kind!r}")
        lineage, training = o.child("lineage", required=False), o.child("training", required=False)
        created_at = o.get("created_at", _timestamp, required=False)
        return cls(
            name=o.get("name", _text),
            version=o.get("version", _int(0)),  # 0: an unregistered bundle (a reproduction)
            kind=kind,
            architecture=architecture,
            feature_set=FeatureSetSpec.from_json(o.data["feature_set"], where),
            preprocessing=PreprocessingRecord.from_json(o.data["preprocessing"], where),
            score=ScoreDefinition.from_json(o.data["score"], where),
            threshold=ThresholdRecord.from_json(o.data["threshold"], where),
            metrics=o.get("metrics", _metrics, required=False),
            evaluation=o.get("evaluation", _object, required=False),
            lineage=None if lineage is None else Lineage.from_json(lineage.data, where),
            training=None if training is None else TrainingRecord.from_json(training.data, where),
            code_version=o.get(
                "code_version",
                lambda v: None if isinstance(v, dict) and all(x is None or isinstance(x, str) for x in v.values())
                else "expected a JSON object of strings or nulls",
                required=False,
            ),
            created_at=created_at,
            note=o.get("note", _text, required=False),
            files=o.get("files", _files),
            format_version=version,
        )


def _timestamp(value: Any) -> str | None:
    try:
        dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return "expected an ISO 8601 timestamp"
    return None


def _files(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "expected a JSON object of file name -> sha256"
    for name, digest in value.items():
        if not name or "/" in name:
            return f"{name!r} is not a plain file name"
        if not isinstance(digest, str) or not _SHA256.match(digest):
            return f"the sha256 of {name} is not 64 lowercase hex digits"
    return None
