"""Scoring one batch of raw source rows: scores, flags, the flagged rows' reasons and the batch's totals.

Plain numpy/torch: the Arrow UDF in `udfs.scoring` calls `score_rows` once per Arrow batch (and
encodes the result with `udfs.arrow_output`), and the tests call it directly. Everything a batch
needs is built once per Python worker into a `ScoringModel` (see `udfs.broadcast` for the
per-worker cache).

Per batch:
    raw columns --FeatureSet.transform--> raw features (NaN for null/NaN/inf/unknown values)
                --Preprocessing.apply--> model input (imputed, clipped, centred, scaled)
                --score_batch--> score; flagged = score >= threshold
                --explain_batch (flagged rows only)--> top-k reasons
and what the batch adds to the run's metrics as a `RunTotals` (see `udfs.run_totals`): the UDF
adds it to a Spark accumulator, so the run's metrics come from the same pass that writes the
flagged rows, and the model runs once per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

import numpy as np
from torch import nn

from lakescore import schemas as S
from lakescore.bundle import Bundle
from lakescore.features import FeatureSet, RawRows
from lakescore.models import explain_batch, model_from_bundle, score_batch
from lakescore.preprocess import Preprocessing
from udfs.run_totals import RunTotals, RunTotalsLayout, batch_totals


@dataclass(frozen=True)
class ScoringModel:
    """Everything needed to score raw rows, built once per Python worker from a verified bundle."""

    sha256: str
    name: str
    version: int
    kind: str
    threshold: float
    feature_set: FeatureSet
    preprocessing: Preprocessing
    model: nn.Module
    layout: RunTotalsLayout


def build_scoring_model(bundle: Bundle) -> ScoringModel:
    """Build the model (CPU, eval mode) and its feature/preprocessing steps from a verified bundle.

    Raises ValueError if the bundle's feature set and preprocessing disagree.
    """
    manifest = bundle.manifest
    feature_set = bundle.feature_set
    preprocessing = manifest.preprocessing.steps
    if preprocessing.features != feature_set.features:
        raise ValueError(
            f"bundle {bundle.label}: preprocessing lists features {list(preprocessing.features)}, "
            f"the feature set {feature_set.name} builds {list(feature_set.features)}; re-export the model"
        )
    return ScoringModel(
        sha256=bundle.sha256,
        name=bundle.name,
        version=bundle.version,
        kind=bundle.kind,
        threshold=bundle.threshold,
        feature_set=feature_set,
        preprocessing=preprocessing,
        model=model_from_bundle(bundle),
        layout=RunTotalsLayout.from_bundle(bundle),
    )


@dataclass(frozen=True)
class ScoredBatch:
    """What `score_rows` returns for one batch of n rows, m of them flagged.

    Reasons are kept compact (m x k arrays, for the flagged rows only); `reasons` gives them as
    Python lists of dicts, `udfs.arrow_output` as the Arrow structs the UDF returns.
    """

    scores: np.ndarray  # float64 (n,)
    flagged: np.ndarray  # bool (n,)
    explained: np.ndarray  # int64 (m,): the flagged rows, ascending
    reason_features: np.ndarray  # int64 (m, k): feature index, largest contribution first
    reason_contributions: np.ndarray  # float64 (m, k)
    reason_values: np.ndarray  # float64 (m, k): the raw feature value; NaN where it was invalid or is not shown
    feature_names: tuple[str, ...]
    totals: RunTotals

    @property
    def reasons(self) -> np.ndarray:
        """object (n,): None, or a list of {feature, contribution, value} dicts (value None if invalid or not shown)."""
        reasons = np.full(len(self.scores), None, dtype=object)
        for j, row in enumerate(self.explained.tolist()):
            reasons[row] = [
                {
                    S.REASON_FEATURE: self.feature_names[i],
                    S.REASON_CONTRIBUTION: float(c),
                    S.REASON_VALUE: _finite_or_none(v),
                }
                for i, c, v in zip(
                    self.reason_features[j].tolist(), self.reason_contributions[j].tolist(), self.reason_values[j].tolist()
                )
            ]
        return reasons


def reason_value_mask(feature_set: FeatureSet, sensitive: Collection[str]) -> np.ndarray:
    """bool (features,): whether a reason may show the feature's value, True only where every
    source column the feature reads is not `sensitive`. Computed once per run on the driver and
    passed to `score_rows` (a reason's value for a masked feature is NULL).

    The columns a feature reads come from the bundle's feature spec (`FeatureSpec.columns`); a
    feature set without a spec (numeric pass-through) reads the column of the feature's name.
    """
    sensitive = set(sensitive)
    fitted = feature_set.fitted
    if fitted is None:
        reads = {name: (name,) for name in feature_set.features}
    else:
        reads = {
            name: f.columns
            for f in fitted.spec.features
            for name in f.output_names(fitted.vocabularies.get(f.name, ()))
        }
    return np.array([not (set(reads.get(name, (name,))) & sensitive) for name in feature_set.features], dtype=bool)


def score_rows(
    scoring: ScoringModel, raw: RawRows, *, top_k: int, coded: bool = False, shown: np.ndarray | None = None
) -> ScoredBatch:
    """Score one batch of raw source rows.

    Args:
        scoring: the worker's model (see `build_scoring_model`).
        raw: at least the feature set's input columns: a pandas DataFrame, or an Arrow record
            batch or struct array (what the Spark UDF passes; no pandas conversion).
        top_k: reasons per flagged row.
        coded: an Arrow `raw`'s category inputs hold their codes (see `FeatureSet.transform`).
        shown: `reason_value_mask` for the run's sensitive columns; None shows every value.

    Deterministic: the same rows in the same batch give bit-identical output (CPU, one thread).
    """
    raw_features = scoring.feature_set.transform(raw, coded=coded)
    x, invalid_counts = scoring.preprocessing.apply(raw_features)
    scores = score_batch(scoring.model, scoring.kind, x)
    flagged = scores >= scoring.threshold
    rows = np.flatnonzero(flagged)
    order, contributions = explain_batch(scoring.model, scoring.kind, x[rows], top_k)
    values = raw_features[rows[:, None], order].astype(np.float64)
    if shown is not None:
        values[~shown[order]] = np.nan  # a sensitive column's value never leaves in a reason
    return ScoredBatch(
        scores=scores,
        flagged=flagged,
        explained=rows.astype(np.int64),
        reason_features=order.astype(np.int64),
        reason_contributions=contributions,
        reason_values=values,
        feature_names=scoring.feature_set.features,
        totals=batch_totals(scoring.layout, x, raw_features, scores, flagged, invalid_counts),
    )


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
