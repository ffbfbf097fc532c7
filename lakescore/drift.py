"""Reference histograms (stored in a bundle's reference.json) and the population stability index.

reference.json layout, written by training and read by scoring:
    {
      "features": {"<feature>": {"edges": [e0, ..., ek], "fractions": [f0, ..., f(k-1)]}, ...},
      "score":    {"edges": [...], "fractions": [...]},
      "rows": <training rows the feature histograms were computed on>
    }
Histograms are over *preprocessed* feature values (after imputation and clipping). Edges are
k+1 increasing finite numbers; a value falls in bin i when edges[i] <= v < edges[i+1], and values
below e0 or from ek upwards fall in the first or last bin, so every value is counted.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# Fractions are floored here before the log in PSI: an empty bin would otherwise give infinity.
PSI_EPSILON = 1e-4
DEFAULT_BINS = 10


def reference_histogram(values: np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, list[float]]:
    """Histogram of finite `values` for drift: quantile edges (at most `bins` bins; fewer where
    values repeat), or, for a feature of at most `bins` distinct values (a flag, a one-hot
    category), one bin per value, so that a change in how often each value occurs shows in PSI.
    (Quantile edges alone would give a 0/1 flag the edges [0, 1]: one bin, and a PSI of 0 whatever
    its rate.)"""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"edges": [0.0, 1.0], "fractions": [1.0]}
    distinct = np.unique(values)
    if distinct.size <= bins:
        # Bin i holds distinct[i]: edges at the values, and one past the largest.
        edges = np.append(distinct, distinct[-1] + 1.0)
    else:
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
    counts = np.bincount(bin_index(values, edges), minlength=edges.size - 1)
    return {"edges": edges.tolist(), "fractions": (counts / counts.sum()).tolist()}


def bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin of each value for these edges (see the module docstring); NaN goes to bin 0."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(edges, values, side="right") - 1
    index[np.isnan(values)] = 0
    return np.clip(index, 0, edges.size - 2).astype(np.int64)


def psi(expected_fractions: Sequence[float], actual_counts: Sequence[float]) -> float:
    """Population stability index of observed bin counts against reference fractions.

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift. NaN if no rows.
    """
    expected = np.asarray(expected_fractions, dtype=np.float64)
    actual = np.asarray(actual_counts, dtype=np.float64)
    total = actual.sum()
    if total <= 0:
        return float("nan")
    e = np.maximum(expected, PSI_EPSILON)
    a = np.maximum(actual / total, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_by_feature(reference: Mapping, counts: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """PSI per feature named in both the reference and `counts`."""
    features = reference.get("features", {})
    return {name: psi(features[name]["fractions"], c) for name, c in counts.items() if name in features}
