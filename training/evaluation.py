"""Evaluation of scores on a held-out window, the IsolationForest baseline, and the plots.

The training pipeline evaluates from score histograms (training.score_histograms: counts per
fine bin, never a score per row) and draws its plots from them (`*_binned`). The functions on
numpy arrays of scores (`evaluate`, `by_type`, `plot_pr_curve`, ...) are the exact reference the
histograms are tested against, and serve windows small enough to hold. The IsolationForest is
fitted on a bounded sample of the training split, beside the other baselines (training.baselines).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from training.score_histograms import Histograms

# Metrics printed side by side, in this order.
METRICS = ("aucpr", "aucroc", "precision", "recall", "f1", "precision_at_k", "tp", "fp", "fn", "tn")


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float, k: int) -> dict[str, float]:
    """AUCPR (average precision), AUCROC, precision/recall/F1 of `score >= threshold`,
    precision among the k highest scores, and the confusion matrix (tp, fp, fn, tn).

    AUCPR/AUCROC are NaN when the window holds only one class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    both = labels.any() and not labels.all()
    flagged = scores >= threshold
    tp = int(np.sum(flagged & labels))
    fp = int(np.sum(flagged & ~labels))
    fn = int(np.sum(~flagged & labels))
    tn = int(np.sum(~flagged & ~labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    k = min(k, len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
    return {
        "rows": int(len(scores)),
        "anomalies": int(labels.sum()),
        "aucpr": float(average_precision_score(labels, scores)) if both else math.nan,
        "aucroc": float(roc_auc_score(labels, scores)) if both else math.nan,
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "k": k,
        "precision_at_k": float(labels[top].mean()) if k else math.nan,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def evaluate_unlabelled(scores: np.ndarray, threshold: float) -> dict[str, float]:
    """What a window without labels shows: its rows, the threshold, the rows at or above it and
    their share. Every metric `evaluate` computes from labels is NaN (undefined, not zero)."""
    scores = np.asarray(scores, dtype=np.float64)
    flagged = int(np.sum(scores >= threshold))
    out: dict[str, float] = {m: math.nan for m in METRICS}
    out.update(
        rows=int(len(scores)),
        anomalies=math.nan,
        threshold=float(threshold),
        flagged=flagged,
        flag_rate=flagged / len(scores) if len(scores) else math.nan,
    )
    return out


def by_type(scores: np.ndarray, labels: np.ndarray, types: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """Per anomaly type: count, recall at the threshold, and AUCPR of that type against the normal rows."""
    from sklearn.metrics import average_precision_score

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    types = np.asarray(types).astype(str)
    out = {}
    for name in sorted(set(types[labels]) - {""}):
        mine = labels & (types == name)
        keep = mine | ~labels
        out[name] = {
            "rows": int(mine.sum()),
            "recall": float(np.mean(scores[mine] >= threshold)),
            "aucpr": float(average_precision_score(mine[keep], scores[keep])) if (~labels).any() else math.nan,
        }
    return out


def fit_isolation_forest(x_train: np.ndarray, seed: int, n_estimators: int = 200):
    """The baseline: scikit-learn's IsolationForest on (a sample of) the preprocessed training
    features, labels unused. Score with `isolation_forest_scores` (higher = more anomalous)."""
    from sklearn.ensemble import IsolationForest

    return IsolationForest(n_estimators=n_estimators, random_state=seed, n_jobs=1).fit(x_train)


def isolation_forest_scores(forest, x: np.ndarray) -> np.ndarray:
    return -forest.score_samples(x) if len(x) else np.empty(0)


def format_table(columns: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = METRICS) -> str:
    """Metrics as rows, one column per model: `{"mlp": {...}, "isolation_forest": {...}}`; a
    column is wide enough for its name (at least 18 characters)."""
    names = list(columns)
    width = max(len(m) for m in metrics) + 2
    widths = [max(18, len(n) + 2) for n in names]
    lines = ["metric".ljust(width) + "".join(n.rjust(w) for n, w in zip(names, widths))]
    for metric in metrics:
        cells = []
        for name, w in zip(names, widths):
            value = columns[name].get(metric, math.nan)
            cells.append((f"{value:d}" if isinstance(value, int) else f"{value:.4f}").rjust(w))
        lines.append(metric.ljust(width) + "".join(cells))
    return "\n".join(lines)


def plot_pr_curve(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
    """PNG of precision-recall curves, one per model: {name: (scores, labels)}."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, (scores, labels) in curves.items():
        if np.any(labels) and not np.all(labels):
            precision, recall, _ = precision_recall_curve(labels, scores)
            ax.step(recall, precision, where="post", label=f"{name} (AP {average_precision_score(labels, scores):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # no curve without both classes (an unlabelled window)
        ax.legend(loc="lower left")
    return _png(plt, fig)


def plot_score_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float, title: str) -> bytes:
    """PNG of the score distribution of normal and anomalous rows, log-scaled counts, with the threshold."""
    plt = _pyplot()
    labels = np.asarray(labels).astype(bool)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    finite = scores[np.isfinite(scores)]
    bins = np.linspace(finite.min(), finite.max(), 50) if finite.size and finite.min() < finite.max() else 10
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"normal ({int((~labels).sum())})", log=True)
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"anomalous ({int(labels.sum())})", log=True)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("score")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend()
    return _png(plt, fig)


def plot_pr_curve_binned(curves: Mapping[str, "Histograms"], title: str) -> bytes:
    """PNG of precision-recall curves from score histograms, one per model: {name: Histograms}."""
    from training import score_histograms as H

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, histograms in curves.items():
        if histograms.positive.any() and histograms.normal.any():
            _, _, precision, recall = H.candidates(histograms)
            ap, _ = H.average_precision(histograms.positive, histograms.normal, histograms.bins.point_top)
            # Highest threshold first, from recall 0 as scikit-learn's curve starts.
            ax.step(np.r_[0.0, recall[::-1]], np.r_[1.0, precision[::-1]], where="post", label=f"{name} (AP {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")
    return _png(plt, fig)


def plot_score_histogram_binned(histograms: "Histograms", threshold: float, title: str) -> bytes:
    """PNG of the score distribution of normal and anomalous rows from score histograms
    (regrouped into 50 display bins), log-scaled counts, with the threshold."""
    from training import score_histograms as H

    plt = _pyplot()
    edges, normal, anomalous = H.display_counts(histograms)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    ax.stairs(normal, edges, fill=True, alpha=0.6, label=f"normal ({int(histograms.normal.sum())})")
    ax.stairs(anomalous, edges, fill=True, alpha=0.6, label=f"anomalous ({int(histograms.positive.sum())})")
    if normal.any() or anomalous.any():
        ax.set_yscale("log")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("score")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend()
    return _png(plt, fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    # No timestamp in the PNG metadata: the same evaluation gives the same bytes.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()
