"""Evaluation metrics from fine score histograms: memory bounded by the bins, whatever the rows.

Scoring runs distributed; each Ray Data block (or Ray Train worker) returns the counts of its
rows per (label, anomaly type, bin) instead of the rows, and the counts are summed: the driver
holds `bins` numbers per histogram, never a number per row.

Bins (`ScoreBins`) are fixed before scoring, so every block bins alike:

- `logit`: an mlp's probability, uniform in logit space over [-20, 20] (fine near 0 and near 1,
  where a good model's scores crowd), with 1.0 (a saturated float32 sigmoid) alone in the top bin;
- `unit`: IsolationForest's score, uniform over [0, 1];
- `log`: an autoencoder's reconstruction error, uniform in log10 over [1e-12, 1e8], with an
  underflow and an overflow bin;
- any threshold that must be applied exactly (a fixed one, a champion's) is inserted as an edge.

A row is in bin i when edges[i-1] <= score < edges[i] (bin 0: below edges[0], and NaN, which
`score >= threshold` never flags). A threshold chosen from a histogram is a bin's lower edge, so
`score >= threshold` flags exactly the bins from there up: precision, recall, F1 and the
confusion matrix at the threshold are exact.

What a histogram cannot know is the order of rows inside one bin: AUCPR, AUCROC and precision@k
treat a bin as tied scores (as scikit-learn treats equal scores), and each comes with a bound on
its error, computed from the counts and recorded beside it (`aucpr_error`, `aucroc_error`,
`precision_at_k_error`): the exact figure on the unbinned scores lies within value +- error.

- AUCROC: only pairs (anomaly, normal) inside one bin can change order, each worth 1/(P*N); ties
  count half, so |error| <= sum_b pos_b * neg_b / (2 * P * N).
- AUCPR (average precision, step-wise as scikit-learn computes it): each anomaly contributes its
  precision / P; inside bin b that precision lies between (TP_above + 1) / (TP_above + FP_above +
  1 + neg_b) and (TP_above + pos_b) / (TP_above + FP_above + pos_b) (1 when nothing is above), so
  |error| <= sum_b pos_b / P * (that range).
- precision@k: the bin where the k-th row falls is taken pro rata; its anomalies among the k could
  be anywhere from max(0, taken - neg_b) to min(pos_b, taken).

Bins that hold one value only (the logit scale's top bin: exactly 1.0) add no error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

# Bins per scale (plus the few edge bins): 2^16 keeps a histogram at half a megabyte of int64
# counts while the error bounds on the project's data stay small (docs/measurements.md, "Training").
FINE_BINS = 1 << 16
LOGIT_RANGE = 20.0  # logit(p) in [-20, 20]: p from 2e-9 to 1 - 2e-9
LOG10_RANGE = (-12.0, 8.0)  # reconstruction errors from 1e-12 to 1e8

LOGIT, UNIT, LOG = "logit", "unit", "log"


@dataclass(frozen=True, eq=False)
class ScoreBins:
    """Increasing bin edges in score space (see the module docstring); picklable and small."""

    scale: str
    edges: np.ndarray  # float64, strictly increasing
    floor: float = 0.0  # the threshold that flags every bin (bin 0's lower bound: scores are >= 0)
    point_top: bool = False  # the top bin holds a single value (no order to lose inside it)

    @classmethod
    def of(cls, scale: str, bins: int = FINE_BINS) -> "ScoreBins":
        """The fixed bins of a scale: LOGIT (probabilities), UNIT ([0, 1]) or LOG (errors >= 0)."""
        if scale == LOGIT:
            z = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins + 1)
            return cls(LOGIT, np.append(1.0 / (1.0 + np.exp(-z)), 1.0), point_top=True)
        if scale == UNIT:
            return cls(UNIT, np.linspace(0.0, 1.0, bins + 1)[1:])
        if scale == LOG:
            return cls(LOG, np.logspace(*LOG10_RANGE, bins + 1))
        raise ValueError(f"unknown score scale {scale!r}; use {LOGIT}, {UNIT} or {LOG}")

    @classmethod
    def for_kind(cls, kind: str, bins: int = FINE_BINS) -> "ScoreBins":
        """The bins of a model kind's score: an mlp's probability, an autoencoder's error."""
        from lakescore.models import MLP

        return cls.of(LOGIT if kind == MLP else LOG, bins)

    @property
    def size(self) -> int:
        return len(self.edges) + 1

    def with_thresholds(self, values: Iterable[float]) -> "ScoreBins":
        """These bins with `values` (finite thresholds to apply exactly) inserted as edges."""
        extra = [float(v) for v in values if v is not None and math.isfinite(v) and v > self.floor]
        if not extra:
            return self
        edges = np.union1d(self.edges, np.asarray(extra, dtype=np.float64))
        # Inserting below the top edge splits no point bin; a value above it gets its own bin.
        return ScoreBins(self.scale, edges, self.floor, self.point_top and edges[-1] == self.edges[-1])

    def index(self, scores: np.ndarray) -> np.ndarray:
        """The bin of each score; NaN in bin 0."""
        scores = np.asarray(scores, dtype=np.float64)
        out = np.searchsorted(self.edges, scores, side="right")
        out[np.isnan(scores)] = 0
        return out

    def lower(self, b: int) -> float:
        """The threshold that flags bins b and up: bin b's lower edge."""
        return float(self.floor if b <= 0 else self.edges[b - 1])

    def counts(self, scores: np.ndarray) -> np.ndarray:
        """int64 counts per bin of `scores`."""
        return np.bincount(self.index(scores), minlength=self.size).astype(np.int64)


@dataclass
class Histograms:
    """Counts per bin of one scorer's scores on one window: normal rows, and anomalous rows per
    anomaly type ("" for an anomaly without one). Sum two with `add`."""

    bins: ScoreBins
    normal: np.ndarray
    anomalous: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, bins: ScoreBins) -> "Histograms":
        return cls(bins, np.zeros(bins.size, np.int64))

    @classmethod
    def of(cls, bins: ScoreBins, scores: np.ndarray, labels: np.ndarray, types: Sequence[str] | None = None) -> "Histograms":
        """The histograms of scores in hand (tests, small windows)."""
        out = cls.empty(bins)
        labels = np.asarray(labels).astype(bool)
        index = bins.index(scores)
        types = np.full(len(labels), "", dtype=object) if types is None else np.asarray(types, dtype=object)
        out.add_counts("", False, np.bincount(index[~labels], minlength=bins.size))
        for name in sorted(set(types[labels].tolist())):
            mine = labels & (types == name)
            out.add_counts(name, True, np.bincount(index[mine], minlength=bins.size))
        return out

    def add_counts(self, anomaly_type: str | None, anomalous: bool, counts: np.ndarray) -> None:
        if not anomalous:
            self.normal += counts
            return
        key = anomaly_type or ""
        if key not in self.anomalous:
            self.anomalous[key] = np.zeros(self.bins.size, np.int64)
        self.anomalous[key] += counts

    def add(self, other: "Histograms") -> "Histograms":
        self.normal += other.normal
        for name, counts in other.anomalous.items():
            self.add_counts(name, True, counts)
        return self

    @property
    def positive(self) -> np.ndarray:
        """Anomalous rows per bin, every type together."""
        total = np.zeros(self.bins.size, np.int64)
        for counts in self.anomalous.values():
            total += counts
        return total

    @property
    def total(self) -> np.ndarray:
        return self.normal + self.positive

    @property
    def rows(self) -> int:
        return int(self.total.sum())


# --- metrics ---------------------------------------------------------------------------------


def average_precision(pos: np.ndarray, neg: np.ndarray, point_top: bool = False) -> tuple[float, float]:
    """(AUCPR, bound on its error) from counts per bin, bins in increasing score order."""
    pos, neg = np.asarray(pos, np.float64)[::-1], np.asarray(neg, np.float64)[::-1]
    total = pos.sum()
    if total == 0 or neg.sum() == 0:
        return math.nan, math.nan
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    tp_above, fp_above = tp - pos, fp - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(np.sum(np.where(pos > 0, pos * tp / (tp + fp), 0.0)) / total)
        high = np.where(tp_above + fp_above > 0, (tp_above + pos) / (tp_above + fp_above + pos), 1.0)
        low = (tp_above + 1) / (tp_above + fp_above + 1 + neg)
    spread = np.where(pos > 0, pos * (high - low), 0.0)
    if point_top:
        spread[0] = 0.0  # reversed: the top bin is first
    return value, float(np.sum(spread) / total)


def roc_auc(pos: np.ndarray, neg: np.ndarray, point_top: bool = False) -> tuple[float, float]:
    """(AUCROC, bound on its error) from counts per bin; ties inside a bin count half."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return math.nan, math.nan
    pos_above = p - np.cumsum(pos)  # anomalies in higher bins
    value = float(np.sum(neg * (pos_above + pos / 2.0)) / (p * n))
    ties = pos * neg
    if point_top:
        ties[-1] = 0.0
    return value, float(np.sum(ties) / (2.0 * p * n))


def precision_at_k(pos: np.ndarray, neg: np.ndarray, k: int) -> tuple[float, float]:
    """(precision among the k highest scores, bound on its error); the bin of the k-th row is
    taken pro rata."""
    pos, neg = np.asarray(pos, np.float64)[::-1], np.asarray(neg, np.float64)[::-1]
    total = pos + neg
    if k <= 0 or total.sum() == 0:
        return math.nan, math.nan
    cumulative = np.cumsum(total)
    b = int(np.searchsorted(cumulative, k))  # the bin holding the k-th row
    above = cumulative[b] - total[b]
    taken = k - above
    tp_above = pos[:b].sum()
    share = pos[b] / total[b] if total[b] else 0.0
    low = tp_above + max(0.0, taken - neg[b])
    high = tp_above + min(pos[b], taken)
    return float((tp_above + taken * share) / k), float(max(high - (tp_above + taken * share), (tp_above + taken * share) - low) / k)


def evaluate(histograms: Histograms, threshold: float, k: int) -> dict[str, float]:
    """training.evaluation.evaluate's figures from histograms, each estimated figure with the
    bound on its error beside it. `threshold` must be an edge of the histograms' bins (chosen
    from them, or inserted with `ScoreBins.with_thresholds`) for the counts at it to be exact."""
    bins = histograms.bins
    pos, neg = histograms.positive, histograms.normal
    flagged_from = _first_flagged_bin(bins, threshold)
    tp, fp = int(pos[flagged_from:].sum()), int(neg[flagged_from:].sum())
    fn, tn = int(pos[:flagged_from].sum()), int(neg[:flagged_from].sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rows = int(pos.sum() + neg.sum())
    k = min(k, rows)
    aucpr, aucpr_error = average_precision(pos, neg, bins.point_top)
    aucroc, aucroc_error = roc_auc(pos, neg, bins.point_top)
    at_k, at_k_error = precision_at_k(pos, neg, k)
    return {
        "rows": rows,
        "anomalies": int(pos.sum()),
        "aucpr": aucpr,
        "aucroc": aucroc,
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "k": k,
        "precision_at_k": at_k,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "aucpr_error": aucpr_error,
        "aucroc_error": aucroc_error,
        "precision_at_k_error": at_k_error,
    }


def evaluate_unlabelled(histograms: Histograms, threshold: float) -> dict[str, float]:
    """training.evaluation.evaluate_unlabelled from histograms (exact: the threshold is an edge)."""
    from training.evaluation import METRICS

    total = histograms.total
    rows = int(total.sum())
    flagged = int(total[_first_flagged_bin(histograms.bins, threshold):].sum())
    out: dict[str, float] = {m: math.nan for m in METRICS}
    out.update(rows=rows, anomalies=math.nan, threshold=float(threshold), flagged=flagged,
               flag_rate=flagged / rows if rows else math.nan)
    return out


def by_type(histograms: Histograms, threshold: float) -> dict[str, dict[str, float]]:
    """Per anomaly type: rows, recall at the threshold (exact), and AUCPR of that type against
    the normal rows (with its error bound)."""
    start = _first_flagged_bin(histograms.bins, threshold)
    out = {}
    for name in sorted(set(histograms.anomalous) - {""}):
        counts = histograms.anomalous[name]
        rows = int(counts.sum())
        aucpr, error = average_precision(counts, histograms.normal, histograms.bins.point_top)
        out[name] = {
            "rows": rows,
            "recall": float(counts[start:].sum() / rows) if rows else math.nan,
            "aucpr": aucpr,
            "aucpr_error": error,
        }
    return out


def _first_flagged_bin(bins: ScoreBins, threshold: float) -> int:
    """The first bin whose rows all satisfy `score >= threshold` when `threshold` is an edge."""
    if threshold <= bins.floor:
        return 0
    return int(np.searchsorted(bins.edges, threshold, side="left")) + 1


# --- thresholds, plots, drift ----------------------------------------------------------------


def candidates(histograms: Histograms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first bin, threshold, precision, recall) of `score >= threshold` at the lower edge of
    every non-empty bin, in increasing threshold order: the histogram's distinct thresholds."""
    pos, neg = histograms.positive.astype(np.float64), histograms.normal.astype(np.float64)
    tp, fp = np.cumsum(pos[::-1])[::-1], np.cumsum(neg[::-1])[::-1]  # rows in this bin and above
    occupied = np.flatnonzero(pos + neg > 0)
    tp, fp = tp[occupied], fp[occupied]
    precision = tp / (tp + fp)
    recall = tp / max(pos.sum(), 1.0)
    thresholds = np.array([histograms.bins.lower(b) for b in occupied])
    return occupied, thresholds, precision, recall


def top_rows_threshold(histograms: Histograms, rows: int) -> float:
    """The highest bin edge at or above which at least `rows` rows lie (the lowest edge if fewer)."""
    total = histograms.total
    above = np.cumsum(total[::-1])[::-1]  # rows in bin b and higher
    reached = np.flatnonzero(above >= rows)
    return histograms.bins.lower(int(reached[-1]) if reached.size else 0)


def reference_histogram(histograms: Histograms, bins: int) -> dict[str, list[float]]:
    """lakescore.drift.reference_histogram's layout from counts: at most `bins` bins with edges at
    fine-bin edges near the quantiles, and the exact fraction of rows between them."""
    total = histograms.total.astype(np.float64)
    rows = total.sum()
    occupied = np.flatnonzero(total)
    if rows == 0:
        return {"edges": [0.0, 1.0], "fractions": [1.0]}
    fine = histograms.bins
    first, last = int(occupied[0]), int(occupied[-1])
    cumulative = np.cumsum(total)
    # Cut after the fine bin where the cumulative share crosses each quantile.
    cuts = {int(np.searchsorted(cumulative, rows * q / bins, side="left")) + 1 for q in range(1, bins)}
    cuts = sorted(c for c in cuts if first < c <= last)
    low = fine.lower(first)
    high = float(fine.edges[last]) if last < len(fine.edges) else float(np.nextafter(fine.edges[-1], np.inf))
    if high <= low:
        high = low + 1.0
    edges = [low, *(fine.lower(c) for c in cuts), high]
    bounds = [first, *cuts, last + 1]
    counts = [total[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])]
    return {"edges": [float(e) for e in edges], "fractions": [float(c / rows) for c in counts]}


def display_counts(histograms: Histograms, bins: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, normal counts, anomalous counts) regrouped into `bins` equal-width display bins over
    the occupied score range, for a plot."""
    fine = histograms.bins
    total = histograms.total
    occupied = np.flatnonzero(total)
    if not occupied.size:
        return np.linspace(0.0, 1.0, bins + 1), np.zeros(bins), np.zeros(bins)
    lows = np.array([fine.lower(b) for b in range(fine.size)])
    lo, hi = lows[occupied[0]], lows[occupied[-1]]
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    normal, _ = np.histogram(lows, bins=edges, weights=histograms.normal)
    anomalous, _ = np.histogram(lows, bins=edges, weights=histograms.positive)
    return edges, normal, anomalous


def merge_counts(
    parts: "Iterable[Mapping[str, np.ndarray] | pd.DataFrame]", bins: Mapping[str, ScoreBins]
) -> dict[tuple[str, str], Histograms]:
    """Sum sparse partial counts (batches with `HISTOGRAM_COLUMNS`, from `sparse_counts`: numpy
    batches or frames) into one Histograms per (split, scorer): memory is the histograms',
    however many rows were counted."""
    import pandas as pd

    out: dict[tuple[str, str], Histograms] = {}
    for part in parts:
        frame = pd.DataFrame({c: part[c] for c in HISTOGRAM_COLUMNS})
        for (split, scorer, label, kind), group in frame.groupby(["split", "scorer", "label", "type"], sort=False):
            key = (str(split), str(scorer))
            if key not in out:
                out[key] = Histograms.empty(bins[key[1]])
            counts = np.bincount(group["bin"].to_numpy(np.int64), weights=group["count"].to_numpy(np.float64),
                                 minlength=out[key].bins.size)
            out[key].add_counts(str(kind), bool(label), np.rint(counts).astype(np.int64))
    return out


HISTOGRAM_COLUMNS = ("split", "scorer", "label", "type", "bin", "count")


def sparse_counts(split: np.ndarray, scorer: str, labels: np.ndarray, types: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """A block's rows as counts per (split, label, type, bin): at most one row per distinct
    combination (so at most the block's rows, and at most bins x types whatever the block)."""
    frame = {"split": np.asarray(split, dtype=object), "label": np.asarray(labels, dtype=bool),
             "type": np.where(np.asarray(labels, dtype=bool), np.asarray(types, dtype=object), ""), "bin": index}
    import pandas as pd

    grouped = pd.DataFrame(frame).groupby(["split", "label", "type", "bin"], sort=False).size().reset_index(name="count")
    return {
        "split": grouped["split"].to_numpy(dtype=object),
        "scorer": np.full(len(grouped), scorer, dtype=object),
        "label": grouped["label"].to_numpy(dtype=bool),
        "type": grouped["type"].to_numpy(dtype=object),
        "bin": grouped["bin"].to_numpy(dtype=np.int64),
        "count": grouped["count"].to_numpy(dtype=np.int64),
    }
