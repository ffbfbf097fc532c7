"""A scoring run's totals: the counts and score sums every batch adds to one mergeable `RunTotals`.

`udfs.scorer.score_rows` counts each batch (`batch_totals`); the scoring UDF adds every batch's
`RunTotals` to a Spark accumulator; the driver reads the sum back by name through the bundle's
`RunTotalsLayout` (`udfs.metrics.metric_records`). What is counted, in one int64 vector: rows,
flagged rows, rows with an invalid value, invalid values per feature, reference-histogram bin
counts per feature and for the score, and a fine score histogram (`ScoreGrid`) for quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lakescore.bundle import Bundle
from lakescore.models import MLP

# Score histogram edges when the bundle's reference.json has no score histogram: a probability
# lies in [0, 1]; a reconstruction error is spread over decades.
_PROBABILITY_EDGES = tuple(np.linspace(0.0, 1.0, 11).tolist())
_ERROR_EDGES = tuple([0.0] + np.logspace(-4, 2, 13).tolist())


@dataclass(frozen=True)
class ScoreGrid:
    """A fine, fixed histogram of scores from which quantiles are read with a bounded error.

    Bins have a fixed width on a scale that spreads the scores: the logit for probabilities
    (mlp; width 0.01, so p99.9 = 0.9990 is read to about +-0.000005), the natural log for
    reconstruction errors (autoencoder; width 0.005, about +-0.25% of the value). Mergeable by
    adding counts, so batches and tasks combine exactly. Values beyond the range fall into an
    under- or overflow bin and read as the range's end.
    """

    logit: bool
    low: float
    high: float
    step: float

    @classmethod
    def for_kind(cls, kind: str) -> "ScoreGrid":
        return cls(logit=True, low=-35.0, high=35.0, step=0.01) if kind == MLP else cls(False, -35.0, 15.0, 0.005)

    @property
    def bins(self) -> int:
        return int(round((self.high - self.low) / self.step)) + 2  # + underflow and overflow

    def _scale(self, scores: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.logit:
                p = np.clip(scores, 1e-300, 1.0)
                return np.log(p) - np.log1p(-p)
            return np.log(scores)

    def index(self, scores: np.ndarray) -> np.ndarray:
        scaled = self._scale(np.asarray(scores, dtype=np.float64))
        index = np.floor((scaled - self.low) / self.step) + 1
        index = np.where(np.isnan(index), 0, index)
        return np.clip(index, 0, self.bins - 1).astype(np.int64)

    def value(self, index: int) -> float:
        """The score a bin stands for: its midpoint on the scale (range ends for the outer bins)."""
        if index <= 0:
            scaled = self.low
        elif index >= self.bins - 1:
            scaled = self.high
        else:
            scaled = self.low + (index - 0.5) * self.step
        return float(1.0 / (1.0 + math.exp(-scaled))) if self.logit else float(math.exp(scaled))

    def quantile(self, counts: np.ndarray, q: float) -> float | None:
        """The q-quantile (inverted CDF: the ceil(q*n)-th smallest score) of the counted scores."""
        total = int(counts.sum())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        return self.value(int(np.searchsorted(np.cumsum(counts), rank)))


# A feature with more interior edges than this is binned by sorting its column once and looking the
# edges up in it; one with fewer by comparing the column with each edge (binary features: one edge).
_COMPARED_EDGES = 2


@dataclass(frozen=True)
class _Binning:
    """Per binned feature: (its column in x, its interior edges as float32, its first bin in the
    feature-bin counts, its row among the sorted columns or -1 if it is compared instead)."""

    features: tuple[tuple[int, np.ndarray, int, int], ...]
    sorted_columns: np.ndarray  # the columns of x that are sorted, in row order
    total: int  # bins of all binned features


@dataclass(frozen=True)
class RunTotalsLayout:
    """How a `RunTotals` count vector is laid out, and the edges its histograms count with.

    The vector is: [rows, rows_flagged, rows_with_invalid, invalid values per feature (F),
    bin counts of each feature that has a reference histogram (in `binned` order), score bin
    counts (reference edges), score grid counts (`ScoreGrid`, for quantiles)]. The driver
    rebuilds the same layout from the bundle to read the sums back.
    """

    features: tuple[str, ...]
    binned: tuple[str, ...]  # features with reference edges, in model order
    feature_edges: tuple[tuple[float, ...], ...]  # one per `binned` feature
    score_edges: tuple[float, ...]
    grid: ScoreGrid

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "RunTotalsLayout":
        features = bundle.manifest.feature_set.features
        reference = bundle.reference.get("features", {})
        binned = tuple(f for f in features if f in reference)
        score_reference = bundle.reference.get("score")
        if score_reference:
            score_edges = tuple(float(e) for e in score_reference["edges"])
        else:
            score_edges = _PROBABILITY_EDGES if bundle.kind == MLP else _ERROR_EDGES
        return cls(
            features=features,
            binned=binned,
            feature_edges=tuple(tuple(float(e) for e in reference[f]["edges"]) for f in binned),
            score_edges=score_edges,
            grid=ScoreGrid.for_kind(bundle.kind),
        )

    @property
    def size(self) -> int:
        histograms = sum(len(e) - 1 for e in self.feature_edges) + len(self.score_edges) - 1
        return 3 + len(self.features) + histograms + self.grid.bins

    @cached_property
    def _binning(self) -> "_Binning":
        """How `count_batch` bins every feature of a batch (see `_Binning`)."""
        column = {name: i for i, name in enumerate(self.features)}
        features, at, sorted_rows = [], 0, 0
        for name, edges in zip(self.binned, self.feature_edges):
            # Preprocessed features are float32: for a float32 v, v >= e exactly when v >= the
            # smallest float32 at or above e, so comparing in float32 against edges rounded up
            # keeps lakescore.drift.bin_index's bins without converting the batch to float64.
            exact = np.asarray(edges[1:-1], dtype=np.float64)
            edges32 = exact.astype(np.float32)
            low = edges32 < exact
            edges32[low] = np.nextafter(edges32[low], np.float32(np.inf))
            row = -1
            if len(edges32) > _COMPARED_EDGES:
                row, sorted_rows = sorted_rows, sorted_rows + 1
            features.append((column[name], edges32, at, row))
            at += len(edges) - 1
        sorted_columns = np.array([c for c, _, _, row in features if row >= 0], dtype=np.int64)
        return _Binning(tuple(features), sorted_columns, at)

    @cached_property
    def _score_inner_edges(self) -> np.ndarray:
        return np.asarray(self.score_edges[1:-1], dtype=np.float64)

    def split(self, vector: np.ndarray) -> "RunTotalsParts":
        """Read a (summed) count vector back into named parts."""
        vector = np.asarray(vector, dtype=np.int64)
        if vector.shape != (self.size,):
            raise ValueError(f"count vector has shape {vector.shape}, this layout expects ({self.size},)")
        f = len(self.features)
        at = 3 + f
        bins = {}
        for name, edges in zip(self.binned, self.feature_edges):
            bins[name] = vector[at : at + len(edges) - 1]
            at += len(edges) - 1
        score_bins = len(self.score_edges) - 1
        return RunTotalsParts(
            rows=int(vector[0]),
            rows_flagged=int(vector[1]),
            rows_with_invalid=int(vector[2]),
            invalid=dict(zip(self.features, vector[3 : 3 + f].tolist())),
            feature_bins=bins,
            score_bins=vector[at : at + score_bins],
            score_grid=vector[at + score_bins :],
        )


@dataclass(frozen=True)
class RunTotalsParts:
    """A `RunTotals` count vector read back by name (`RunTotalsLayout.split`)."""

    rows: int
    rows_flagged: int
    rows_with_invalid: int
    invalid: dict[str, int]
    feature_bins: dict[str, np.ndarray]
    score_bins: np.ndarray
    score_grid: np.ndarray


class RunTotals:
    """What a run adds up over its batches: the count vector of a `RunTotalsLayout`, and the sum,
    minimum and maximum of the scores. Picklable and mergeable (the value of a Spark accumulator,
    see `udfs.metrics.RunTotalsParam`)."""

    def __init__(self, size: int):
        self.counts = np.zeros(size, dtype=np.int64)
        self.score_sum = 0.0
        self.score_min = math.inf
        self.score_max = -math.inf

    def add(self, other: "RunTotals") -> "RunTotals":
        """Merge `other` into this one (in place) and return it."""
        self.counts += other.counts
        self.score_sum += other.score_sum
        self.score_min = min(self.score_min, other.score_min)
        self.score_max = max(self.score_max, other.score_max)
        return self

    @property
    def rows(self) -> int:
        return int(self.counts[0])


def batch_totals(
    layout: RunTotalsLayout,
    x: np.ndarray,
    raw_features: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    invalid_counts: np.ndarray,
) -> RunTotals:
    """What one batch adds to its run's totals: `count_batch`'s vector and the scores' sum,
    minimum and maximum."""
    totals = RunTotals(layout.size)
    totals.counts = count_batch(layout, x, raw_features, scores, flagged, invalid_counts)
    if len(scores):
        totals.score_sum, totals.score_min, totals.score_max = float(scores.sum()), float(scores.min()), float(scores.max())
    return totals


def count_batch(
    layout: RunTotalsLayout,
    x: np.ndarray,
    raw_features: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    invalid_counts: np.ndarray,
) -> np.ndarray:
    """The batch's count vector (see `RunTotalsLayout`); histograms are over preprocessed `x`."""
    # Rows with any invalid value: only the features that counted one are looked at.
    with_invalid = np.zeros(len(scores), dtype=bool)
    for j in np.flatnonzero(np.asarray(invalid_counts)):
        with_invalid |= ~np.isfinite(raw_features[:, j])
    rows_with_invalid = int(with_invalid.sum())
    header = [len(scores), int(flagged.sum()), rows_with_invalid]
    score_bins = np.zeros(len(layout.score_edges) - 1, dtype=np.int64)
    if len(scores):
        _bins_of_sorted(np.sort(scores), layout._score_inner_edges, score_bins)
    score_grid = np.bincount(layout.grid.index(scores), minlength=layout.grid.bins)
    return np.concatenate(
        [
            np.array(header, dtype=np.int64),
            np.asarray(invalid_counts, dtype=np.int64),
            _feature_bins(layout, x),
            score_bins,
            score_grid,
        ]
    ).astype(np.int64)


def _feature_bins(layout: RunTotalsLayout, x: np.ndarray) -> np.ndarray:
    """Bin counts of every binned feature of `x`, in layout order, with the bins of
    lakescore.drift.bin_index (below the first edge -> first bin, from the last edge up -> last
    bin, NaN -> first bin). A column with several edges is sorted once and the edges are looked up
    in it (a few binary searches instead of comparing every value with every edge); one with a
    single edge (a binary feature) is compared with it."""
    binning = layout._binning
    counts = np.zeros(binning.total, dtype=np.int64)
    n = len(x)
    if not binning.total or not n:
        return counts
    x = np.asarray(x, dtype=np.float32)
    ordered = x.T[binning.sorted_columns]  # a copy, one feature per row
    ordered.sort(axis=1)  # NaN sorts last
    for column, edges, at, row in binning.features:
        if row >= 0:
            _bins_of_sorted(ordered[row], edges, counts[at : at + len(edges) + 1])
        else:
            _bins_by_comparing(x[:, column], edges, counts[at : at + len(edges) + 1])
    return counts


def _bins_of_sorted(values: np.ndarray, inner_edges: np.ndarray, out: np.ndarray) -> None:
    """Write into `out` the bin counts of sorted, non-empty `values` (NaN last) for these interior edges."""
    valid = len(values) if not np.isnan(values[-1]) else int(values.searchsorted(values.dtype.type(np.inf), side="right"))
    _fill_bins(valid - values.searchsorted(inner_edges, side="left"), len(values), out)  # NaN is never below


def _bins_by_comparing(values: np.ndarray, inner_edges: np.ndarray, out: np.ndarray) -> None:
    """`_bins_of_sorted` for unsorted `values` with few edges: one comparison per value and edge."""
    _fill_bins(np.array([np.count_nonzero(values >= e) for e in inner_edges], dtype=np.int64), len(values), out)


def _fill_bins(at_least: np.ndarray, n: int, out: np.ndarray) -> None:
    """Bins of n values from how many are at or above each interior edge (NaN never is): what is
    below the first edge, NaN included, is the first bin."""
    out[0] = n
    out[1:] = at_least
    out[:-1] -= at_least
