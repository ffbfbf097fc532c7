"""TEST FIXTURE ONLY: tiny model bundles for the scoring tests, built in-process with numpy/torch.

Not the training pipeline (that is training/, on Ray): just enough to produce a bundle with the
manifest keys scoring relies on (architecture, feature_set, preprocessing, threshold, kind, name,
version) and a reference.json in lakescore.drift's layout, in a second or two, with fixed seeds.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lakescore.bundle import Bundle, write_bundle
from lakescore.drift import reference_histogram
from lakescore.features import FeatureSet
from lakescore.manifest import Architecture, FeatureSetSpec, Lineage, Manifest, PreprocessingRecord, ScoreDefinition, ThresholdRecord
from lakescore.models import AUTOENCODER, MLP, build_model, score_batch
from lakescore.preprocess import Preprocessing

# The fixture flags about this fraction of its training rows (alert_rate threshold).
ALERT_RATE = 0.02


def fit_preprocessing(feature_set: FeatureSet, raw: pd.DataFrame) -> Preprocessing:
    x = feature_set.transform(raw).astype(np.float64)
    x[~np.isfinite(x)] = np.nan
    with np.errstate(all="ignore"):
        return Preprocessing.from_statistics(
            feature_set.features,
            median=np.nanmedian(x, axis=0),
            q_low=np.nanquantile(x, 0.001, axis=0),
            q_high=np.nanquantile(x, 0.999, axis=0),
            mean=np.nanmean(x, axis=0),
            std=np.nanstd(x, axis=0),
        )


def build_test_bundle(
    directory: Path,
    raw: pd.DataFrame,
    labels: np.ndarray,
    feature_set: FeatureSet,
    *,
    name: str,
    version: int = 1,
    kind: str = MLP,
    epochs: int = 60,
    seed: int = 0,
) -> Bundle:
    """Fit preprocessing, train a tiny model full-batch, and write a verified bundle."""
    preprocessing = fit_preprocessing(feature_set, raw)
    x, _ = preprocessing.apply(feature_set.transform(raw))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    hidden = [16, 8] if kind == MLP else [8, 3]
    architecture = {"kind": kind, "n_features": x.shape[1], "hidden": hidden, "dropout": 0.0}
    torch.manual_seed(seed)
    model = build_model(architecture)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt = torch.from_numpy(x)
    normal = xt[y == 0]
    for _ in range(epochs):
        optimiser.zero_grad()
        if kind == MLP:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt), y, pos_weight=torch.tensor(10.0))
        else:
            loss = ((model(normal) - normal) ** 2).mean()
        loss.backward()
        optimiser.step()
    model.eval()
    scores = score_batch(model, kind, x)
    threshold = float(np.quantile(scores, 1.0 - ALERT_RATE))
    manifest = Manifest(
        name=name,
        version=version,
        kind=kind,
        architecture=Architecture.from_json(architecture),
        feature_set=FeatureSetSpec.of(feature_set),
        preprocessing=PreprocessingRecord(preprocessing),
        score=ScoreDefinition.for_kind(kind),
        threshold=ThresholdRecord("alert_rate", ALERT_RATE, threshold),
        metrics={},
        lineage=Lineage(source_table="test fixture", extra={"rows": len(raw)}),
        created_at=dt.datetime(2026, 1, 1).isoformat(),
        note="test fixture (tests/scoring_bundles.py), not a trained model",
    )
    reference = {
        "features": {f: reference_histogram(x[:, i]) for i, f in enumerate(feature_set.features)},
        "score": reference_histogram(scores),
        "rows": len(raw),
    }
    return write_bundle(directory, manifest, model.state_dict(), reference)


__all__ = ["ALERT_RATE", "AUTOENCODER", "MLP", "build_test_bundle", "fit_preprocessing"]
