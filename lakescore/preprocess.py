"""Preprocessing stored in the bundle and applied by training and scoring through this code.

The parameters are fitted on the training split only (training/preprocessing.py computes them
with Ray Data aggregations); this module holds their format and the one `apply` function.

Per feature, in order: values that are null, NaN or +/-inf are replaced by `impute`; then
clipped to [clip_low, clip_high] (quantiles of the training data: heavy tails cannot dominate);
then centred and scaled: (x - center) / scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    features: tuple[str, ...]
    impute: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.features)
        for name in ("impute", "clip_low", "clip_high", "center", "scale"):
            values = getattr(self, name)
            if values.shape != (n,):
                raise ValueError(f"preprocessing {name} has shape {values.shape}, expected ({n},)")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"preprocessing {name} holds non-finite values; refit the preprocessing")
        if np.any(self.scale <= 0):
            raise ValueError("preprocessing scale must be positive for every feature")

    def apply(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Transform raw features (rows x features, float) for the model.

        Returns:
            (float32 array of the same shape, per-feature counts of invalid values imputed).
        """
        x = np.array(x, dtype=np.float32, copy=True)
        invalid = ~np.isfinite(x)
        counts = invalid.sum(axis=0)
        if counts.any():
            x[invalid] = np.broadcast_to(self.impute.astype(np.float32), x.shape)[invalid]
        np.clip(x, self.clip_low.astype(np.float32), self.clip_high.astype(np.float32), out=x)
        x -= self.center.astype(np.float32)
        x /= self.scale.astype(np.float32)
        return x, counts

    def to_manifest(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "impute": self.impute.tolist(),
            "clip_low": self.clip_low.tolist(),
            "clip_high": self.clip_high.tolist(),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "order": ["impute null/NaN/inf", "clip", "center", "scale"],
        }

    @classmethod
    def from_manifest(cls, spec: Mapping[str, Any]) -> "Preprocessing":
        return cls(
            features=tuple(spec["features"]),
            impute=np.asarray(spec["impute"], dtype=np.float64),
            clip_low=np.asarray(spec["clip_low"], dtype=np.float64),
            clip_high=np.asarray(spec["clip_high"], dtype=np.float64),
            center=np.asarray(spec["center"], dtype=np.float64),
            scale=np.asarray(spec["scale"], dtype=np.float64),
        )

    @classmethod
    def from_statistics(
        cls,
        features: Sequence[str],
        median: np.ndarray,
        q_low: np.ndarray,
        q_high: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
    ) -> "Preprocessing":
        """Build from training-split statistics; a constant or all-missing feature gets scale 1."""
        median = np.where(np.isfinite(median), median, 0.0)
        q_low = np.where(np.isfinite(q_low), q_low, median)
        q_high = np.where(np.isfinite(q_high), q_high, median)
        mean = np.clip(np.where(np.isfinite(mean), mean, median), q_low, q_high)
        std = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
        return cls(tuple(features), median, q_low, np.maximum(q_high, q_low), mean, std)
