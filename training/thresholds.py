"""Threshold policies, applied to validation scores; a row is flagged when score >= threshold.

- `target_precision`: the lowest threshold whose precision on validation reaches the target
  (the most recall for that precision). If no threshold reaches it, fall back to the threshold
  of best F1, say so in the log and record it (`fallback`) in the manifest.
- `alert_rate`: flag the top x of rows (x a fraction, e.g. 0.01 = 1%).
- `fixed`: the given value.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from lakescore.schemas import ALERT_RATE, TARGET_PRECISION
from lakescore.schemas import FIXED_THRESHOLD as FIXED
from lakescore.schemas import THRESHOLD_POLICIES as POLICIES

log = logging.getLogger(__name__)

FLAG_RULE = "score >= threshold"


@dataclass(frozen=True)
class Threshold:
    policy: str
    target: float
    value: float
    # Why the policy could not be met as asked, and what was done instead; None if it was.
    fallback: str | None = None

    def to_manifest(self) -> dict:
        return {**asdict(self), "flag_rule": FLAG_RULE}


def _candidates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds in increasing order with precision and recall of `score >= t`."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.float64)
    tp = np.cumsum(y)
    fp = np.cumsum(1.0 - y)
    # The last position of each distinct score: flagging `>= s` includes every tie.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    thresholds, tp, fp = s[last], tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / max(y.sum(), 1.0)
    return thresholds[::-1], precision[::-1], recall[::-1]


def choose_threshold(policy: str, value: float, scores: np.ndarray, labels: np.ndarray) -> Threshold:
    """The threshold for `policy` with `value` on validation `scores` and `labels` (0/1)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if policy == FIXED:
        return Threshold(FIXED, value, float(value))
    if len(scores) == 0:
        raise ValueError(f"the {policy} threshold needs validation scores, but the validation split is empty")
    if policy == ALERT_RATE:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"alert_rate {value} must be a fraction in (0, 1], e.g. 0.01 for 1%")
        k = max(1, math.ceil(value * len(scores)))
        return Threshold(ALERT_RATE, value, float(np.sort(scores)[::-1][k - 1]))
    if policy == TARGET_PRECISION:
        thresholds, precision, recall = _candidates(scores, labels)
        reached = np.flatnonzero(precision >= value)
        if reached.size and labels.any():
            return Threshold(TARGET_PRECISION, value, float(thresholds[reached[0]]))
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        best = int(np.argmax(f1))
        note = (
            f"no threshold reaches precision {value} on validation (best {precision.max():.3f}); "
            f"used the threshold of best F1 ({f1[best]:.3f}) instead"
        )
        log.warning(note)
        return Threshold(TARGET_PRECISION, value, float(thresholds[best]), fallback=note)
    raise ValueError(f"unknown threshold policy {policy!r}; use one of {', '.join(POLICIES)}")


def choose_threshold_binned(policy: str, value: float, histograms) -> Threshold:
    """`choose_threshold` on validation score histograms (training.score_histograms.Histograms):
    the same policies, with the threshold at a bin's lower edge, so `score >= threshold` flags
    whole bins and its precision and recall on validation are exact.

    - alert_rate: the highest edge with at least ceil(value * rows) rows at or above it (as
      `choose_threshold` flags the k-th highest score with its ties);
    - target_precision: the lowest edge whose precision reaches the target, else the edge of best F1.
    """
    from training import score_histograms as H

    if policy == FIXED:
        return Threshold(FIXED, value, float(value))
    rows = histograms.rows
    if rows == 0:
        raise ValueError(f"the {policy} threshold needs validation scores, but the validation split is empty")
    if policy == ALERT_RATE:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"alert_rate {value} must be a fraction in (0, 1], e.g. 0.01 for 1%")
        return Threshold(ALERT_RATE, value, H.top_rows_threshold(histograms, max(1, math.ceil(value * rows))))
    if policy == TARGET_PRECISION:
        _, thresholds, precision, recall = H.candidates(histograms)
        reached = np.flatnonzero(precision >= value)
        if reached.size and histograms.positive.any():
            return Threshold(TARGET_PRECISION, value, float(thresholds[reached[0]]))
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        best = int(np.argmax(f1))
        note = (
            f"no threshold reaches precision {value} on validation (best {precision.max():.3f}); "
            f"used the threshold of best F1 ({f1[best]:.3f}) instead"
        )
        log.warning(note)
        return Threshold(TARGET_PRECISION, value, float(thresholds[best]), fallback=note)
    raise ValueError(f"unknown threshold policy {policy!r}; use one of {', '.join(POLICIES)}")
