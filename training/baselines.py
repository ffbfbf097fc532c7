"""Baselines evaluated beside the model, on the same split, exactly as the model is.

A learned model is worth its cost only by its gap to what a classical method reaches on the same
rows, so every training run fits these on the same bounded sample of the training split
(`train.sample_rows` preprocessed rows, training.pipeline.sample_matrix) and scores validation and
test with them into the same fine score histograms, with the same threshold policy on validation:

- `isolation_forest`, always: scikit-learn's IsolationForest, labels unused (the baseline older
  bundles record as `baseline_test_*`);
- supervised runs (kind `mlp`, a label): scikit-learn's `HistGradientBoostingClassifier` (the
  gradient-boosted trees a tabular model is usually held against) and `MLPClassifier` (the plain
  MLP floor), both with scikit-learn's defaults and the run's seed, scored by the probability of
  the anomalous class;
- the autoencoder (labels unused, as it is): `ecod`, per-feature empirical tail probabilities
  (`ECOD`), a second classical detector beside the IsolationForest.

The supervised baselines learn from the sample's labels. With negative downsampling the sample is
drawn from the training split's uniform sample (training.pipeline.downsample_training_split), not
from the kept rows, so its labels are the split's, unbiased.

Every baseline's score is higher for a more anomalous row; `Baseline.scale` names the bins
(training.score_histograms) its scores need: `logit` for a probability, `unit` for a score in [0, 1].
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from lakescore.models import AUTOENCODER, MLP
from training import evaluation as E
from training import score_histograms as H

log = logging.getLogger(__name__)

ISOLATION_FOREST = "isolation_forest"
HIST_GRADIENT_BOOSTING = "hist_gradient_boosting"
MLP_CLASSIFIER = "mlp_classifier"
ECOD_DETECTOR = "ecod"
# Every baseline, in the order tables show them.
ALL = (ISOLATION_FOREST, HIST_GRADIENT_BOOSTING, MLP_CLASSIFIER, ECOD_DETECTOR)
SUPERVISED = (HIST_GRADIENT_BOOSTING, MLP_CLASSIFIER)


@dataclass(frozen=True, eq=False)
class ECOD:
    """ECOD (Li et al., "ECOD: Unsupervised Outlier Detection Using Empirical Cumulative
    Distribution Functions", TKDE 2022), fitted on a sample: the sample's values of each feature,
    sorted, so that scoring a block is one `searchsorted` per feature and needs no second pass.

    A row's left (right) tail probability in feature j is the share of the sample at or below
    (at or above) its value, counting the row itself as the reference implementation (pyod) does
    by scoring the sample and the rows together: (count + 1) / (n + 1). Never 0, so every score is
    finite, even for a value beyond the sample's range. Its score is the largest of three sums
    over the features of -log(tail probability): the left tails, the right tails, and each
    feature's tail on the side its sample skewness points to (the left for a negative skewness,
    else the right), as the paper's algorithm 1 states. (pyod instead takes the largest of the
    three per feature and sums those; the paper's form is kept here.)

    Inputs are preprocessed rows (imputed: no NaN); a NaN that reaches `tail_probabilities`
    anyway counts as no evidence (probability 1 on both sides), not as an outlier.
    """

    sorted_columns: np.ndarray  # (rows, features) float64, each column sorted ascending
    left_skewed: np.ndarray  # (features,) bool: the sample's skewness is negative

    @classmethod
    def fit(cls, x: np.ndarray) -> "ECOD":
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0:
            raise ValueError(f"ECOD is fitted on a matrix of rows x features with at least one of each, got shape {x.shape}; "
                             "raise train.sample_rows or check that the training split has rows")
        if np.isnan(x).any():
            raise ValueError("ECOD is fitted on preprocessed (imputed) rows, but the sample holds NaN; "
                             "fit it on the output of the bundle's preprocessing")
        return cls(np.sort(x, axis=0), _skewness(x) < 0)

    @property
    def features(self) -> int:
        return int(self.sorted_columns.shape[1])

    def tail_probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(left, right): per row and feature, the sample's share at or below / at or above the
        row's value, with the row itself counted: (count + 1) / (n + 1)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.features)
        n = len(self.sorted_columns)
        below = np.empty(x.shape)
        above = np.empty(x.shape)
        for j in range(self.features):
            column = self.sorted_columns[:, j]
            below[:, j] = np.searchsorted(column, x[:, j], side="right")
            above[:, j] = n - np.searchsorted(column, x[:, j], side="left")
        left, right = (below + 1.0) / (n + 1.0), (above + 1.0) / (n + 1.0)
        missing = np.isnan(x)
        left[missing] = right[missing] = 1.0
        return left, right

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """The paper's outlier score: max(sum -log left, sum -log right, sum -log skew-side tail);
        0 or more, unbounded above (at most features x log(n + 1))."""
        left, right = self.tail_probabilities(x)
        u_left, u_right = -np.log(left), -np.log(right)
        u_auto = np.where(self.left_skewed, u_left, u_right)
        return np.maximum(np.maximum(u_left.sum(axis=1), u_right.sum(axis=1)), u_auto.sum(axis=1))

    def scores(self, x: np.ndarray) -> np.ndarray:
        """`raw_scores` mapped into [0, 1) by r / (r + features), so that ECOD shares the
        IsolationForest's `unit` bins (training.score_histograms) and its threshold is a number in
        [0, 1), as the IsolationForest's is. The map is strictly increasing, so every order-based
        figure (AUCPR, AUCROC, precision@k) is the raw score's. `features` sets its middle: a row at
        a typical tail probability of 1/e in every feature maps near 0.5, where the unit bins are
        finest in raw units; a unit bin of width w covers w (r + features)^2 / features raw units,
        so bins widen towards the top (r up to features x log(n + 1)), where rows are few."""
        raw = self.raw_scores(x)
        return raw / (raw + self.features)


def _skewness(x: np.ndarray) -> np.ndarray:
    """Sample skewness per column (the biased moment estimator, as scipy.stats.skew); 0 for a
    constant column."""
    centred = x - x.mean(axis=0)
    m2 = np.mean(centred**2, axis=0)
    m3 = np.mean(centred**3, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m2 > 0, m3 / np.where(m2 > 0, m2, 1.0) ** 1.5, 0.0)


@dataclass(frozen=True, eq=False)
class Baseline:
    """A fitted baseline: its name, the fitted estimator and the bins its scores need. Picklable:
    Ray Data's scoring workers receive it once, when they start."""

    name: str
    estimator: Any
    scale: str  # training.score_histograms.UNIT or LOGIT

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Higher for a more anomalous row: the IsolationForest's (unit interval), ECOD's mapped
        score, or a classifier's probability of the anomalous class."""
        if not len(x):
            return np.empty(0)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # a Ray worker holds one CPU (see fit_baselines)
            return self._scores(x)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        if self.name == ISOLATION_FOREST:
            return E.isolation_forest_scores(self.estimator, x)
        if self.name == ECOD_DETECTOR:
            return self.estimator.scores(x)
        return self.estimator.predict_proba(x)[:, 1]


@dataclass(frozen=True)
class FittedBaselines:
    """The baselines fitted for a run, by name in `ALL`'s order, and those that could not be
    fitted with the reason (recorded in the evaluation report)."""

    fitted: Mapping[str, Baseline]
    skipped: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fitted)


def baseline_names(kind: str, supervised: bool) -> tuple[str, ...]:
    """The baselines a run of `kind` evaluates: the IsolationForest always; the supervised
    classifiers for an mlp with a label; ECOD for the autoencoder."""
    names = [ISOLATION_FOREST]
    if kind == MLP and supervised:
        names += SUPERVISED
    if kind == AUTOENCODER:
        names.append(ECOD_DETECTOR)
    return tuple(names)


def fit_baselines(x: np.ndarray, y: np.ndarray | None, *, kind: str, supervised: bool, seed: int) -> FittedBaselines:
    """Fit `baseline_names(kind, supervised)` on the training sample `x` (preprocessed rows) with
    labels `y` (the supervised baselines only). A supervised baseline is skipped, with the reason,
    when the sample holds a single class: it could learn nothing (a larger train.sample_rows, or
    more labelled anomalies in the training split, gives it both)."""
    from threadpoolctl import threadpool_limits

    fitted: dict[str, Baseline] = {}
    skipped: dict[str, str] = {}
    labels = None if y is None else np.asarray(y).astype(bool)
    for name in baseline_names(kind, supervised):
        if name in SUPERVISED:
            if labels is None or len(labels) != len(x) or labels.all() or not labels.any():
                anomalies = "no labels" if labels is None else f"{int(labels.sum())} anomalies"
                skipped[name] = (f"the training sample of {len(x)} rows holds a single class ({anomalies}); "
                                 "raise train.sample_rows to give it both")
                log.warning("baseline %s skipped: %s", name, skipped[name])
                continue
        # One thread: this process shares its cores with Ray's workers, and OpenMP's threads
        # spin-wait on busy cores (a fit many times slower; docs/measurements.md, "Baselines").
        # The sample is bounded (train.sample_rows), so one thread fits in bounded time.
        with threadpool_limits(limits=1):
            fitted[name] = _fit(name, x, labels, seed)
    return FittedBaselines(fitted, skipped)


def _fit(name: str, x: np.ndarray, y: np.ndarray | None, seed: int) -> Baseline:
    if name == ISOLATION_FOREST:
        return Baseline(name, E.fit_isolation_forest(x, seed), H.UNIT)
    if name == ECOD_DETECTOR:
        return Baseline(name, ECOD.fit(x), H.UNIT)
    from sklearn.exceptions import ConvergenceWarning

    if name == HIST_GRADIENT_BOOSTING:
        from sklearn.ensemble import HistGradientBoostingClassifier

        estimator = HistGradientBoostingClassifier(random_state=seed)
    elif name == MLP_CLASSIFIER:
        from sklearn.neural_network import MLPClassifier

        estimator = MLPClassifier(random_state=seed)
    else:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(ALL)}")
    # Defaults on purpose (the reference points): an MLPClassifier that stops at its
    # max_iter is still the floor it stands for, so its warning is logged, not raised.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(x, y)
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            log.info("baseline %s: %s", name, warning.message)
    return Baseline(name, estimator, H.LOGIT)


# --- the report -------------------------------------------------------------------------------


def in_report(test: Mapping[str, Any]) -> tuple[str, ...]:
    """The baselines whose figures an evaluation report's `test` entry holds, in `ALL`'s order
    (reports written before there were several hold the IsolationForest only)."""
    return tuple(name for name in ALL if name in test)


def best_baseline(test: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> tuple[str | None, float]:
    """(name, test AUCPR) of the baseline with the highest test AUCPR among `names` (the first on
    a tie); (None, NaN) when none has one (a window without labels)."""
    best, value = None, math.nan
    for name in names:
        aucpr = test[name].get("aucpr", math.nan)
        if aucpr is not None and math.isfinite(aucpr) and (best is None or aucpr > value):
            best, value = name, float(aucpr)
    return best, value


def gap_points(model_aucpr: float | None, best_aucpr: float) -> float:
    """The model's test AUCPR minus the best baseline's, in points (x100); NaN without either."""
    if model_aucpr is None or not math.isfinite(model_aucpr) or not math.isfinite(best_aucpr):
        return math.nan
    return 100.0 * (float(model_aucpr) - best_aucpr)


def summary(test: Mapping[str, Mapping[str, float]], model: str, skipped: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The report's `baselines` entry: which ran, the best by test AUCPR, the model's gap to it in
    AUCPR points, and the baselines skipped with why."""
    names = in_report(test)
    best, value = best_baseline(test, names)
    return {
        "names": list(names),
        "best": best,
        "best_test_aucpr": value,
        "gap_aucpr_points": gap_points(test[model].get("aucpr"), value),
        "skipped": dict(skipped or {}),
    }


def gap_line(test: Mapping[str, Mapping[str, float]], model: str) -> str:
    """One line under the evaluation table: the model's gap to the best baseline."""
    names = in_report(test)
    best, value = best_baseline(test, names)
    if best is None:
        return "gap to the best baseline: no AUCPR without labels"
    gap = gap_points(test[model].get("aucpr"), value)
    return f"gap to the best baseline ({best}, AUCPR {value:.4f}): {gap:+.2f} AUCPR points"
