"""Champion against challenger on the same holdout, and the promotion decision.

The challenger is trained by the ordinary pipeline's steps (training/pipeline.py: prepare -> fit ->
evaluate) on labelled history whose labels analysts' verdicts override; pipelines/retrain.py adds
the champion's evaluation before the export. The challenger's test window is the holdout: the
champion is scored on exactly those rows, with its own feature set, preprocessing and threshold
(from its bundle), against the same labels. Like the challenger's, its figures come from score
histograms summed from the blocks (training.score_histograms), never from scores collected per row. `decide` turns the two evaluations into a decision with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from lakescore.bundle import Bundle, verify_files
from lakescore.models import model_from_bundle, score_batch
from training import score_histograms as H
from training.data import LABEL_COLUMN, SPLIT_COLUMN, TYPE_COLUMN
from training.feature_batches import feature_matrix

if TYPE_CHECKING:
    import ray.data


class ChampionMismatchError(ValueError):
    """The champion cannot be scored on the challenger's holdout."""


def score_bundle_on_split(featured: "ray.data.Dataset", split: str, bundle: Bundle) -> H.Histograms:
    """Score `bundle` on the rows of `split` (distributed) into score histograms, with the
    bundle's own threshold as a bin edge (so its counts at that threshold are exact): each block
    returns counts per bin, never a score per row (training.score_histograms).

    `featured` holds the features of the challenger's feature set; the champion must use the same
    features (any order), else ChampionMismatchError says so.
    """
    features = bundle.feature_set.features
    available = set(featured.schema().names)
    missing = [f for f in features if f not in available]
    if missing:
        raise ChampionMismatchError(
            f"champion {bundle.label} uses features the challenger's table lacks ({', '.join(missing)}); "
            "compare models trained on the same feature set, or promote by hand with `lakescore promote`"
        )
    bins = H.ScoreBins.for_kind(bundle.kind).with_thresholds([bundle.threshold])
    counts = featured.map_batches(
        _BundleScorer,
        fn_constructor_kwargs={"files": dict(bundle.files), "split": split, "bins": bins},
        batch_format="pandas",
    )
    merged = H.merge_counts(counts.iter_batches(batch_format="numpy", batch_size=None), {CHAMPION_SCORER: bins})
    return merged.get((split, CHAMPION_SCORER), H.Histograms.empty(bins))


CHAMPION_SCORER = "champion"


class _BundleScorer:
    """A Ray Data worker's copy of a bundle: verified and built once when the worker starts."""

    def __init__(self, *, files: Mapping[str, bytes], split: str, bins: H.ScoreBins) -> None:
        bundle = verify_files(files, "champion bundle")
        self.split, self.bins = split, bins
        self.kind = bundle.kind
        self.features = bundle.feature_set.features
        self.preprocessing = bundle.manifest.preprocessing.steps
        self.model = model_from_bundle(bundle)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch[batch[SPLIT_COLUMN] == self.split]
        x, _ = self.preprocessing.apply(feature_matrix(batch, self.features))
        index = self.bins.index(score_batch(self.model, self.kind, x))
        return pd.DataFrame(H.sparse_counts(
            batch[SPLIT_COLUMN].to_numpy(dtype=object), CHAMPION_SCORER, batch[LABEL_COLUMN].to_numpy(dtype=bool),
            batch[TYPE_COLUMN].fillna("").to_numpy(dtype=object), index,
        ))


def evaluate_champion(histograms: H.Histograms, bundle: Bundle, k: int) -> dict[str, float]:
    """The champion's holdout figures at its own recorded threshold (an edge of `histograms`)."""
    return H.evaluate(histograms, bundle.threshold, k)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    figures: Mapping[str, float]

    def note(self) -> str:
        return ("promoted: " if self.promote else "kept out: ") + self.reason


def decide(
    challenger: Mapping[str, Any],
    champion: Mapping[str, Any],
    *,
    min_aucpr_gain: float,
    precision_tolerance: float,
) -> Decision:
    """Promote only if the challenger beats the champion's holdout AUCPR by `min_aucpr_gain`
    without lowering precision at its threshold (by more than `precision_tolerance`).

    Both mappings are training.evaluation.evaluate outputs on the same holdout rows.
    """
    figures = {
        "holdout_aucpr": float(challenger["aucpr"]),
        "holdout_precision": float(challenger["precision"]),
        "holdout_recall": float(challenger["recall"]),
        "champion_holdout_aucpr": float(champion["aucpr"]),
        "champion_holdout_precision": float(champion["precision"]),
        "champion_holdout_recall": float(champion["recall"]),
        "holdout_rows": float(challenger["rows"]),
        "min_aucpr_gain": float(min_aucpr_gain),
    }
    if any(math.isnan(figures[k]) for k in ("holdout_aucpr", "champion_holdout_aucpr")):
        return Decision(False, "the holdout has a single class, so AUCPR cannot compare the models", figures)
    gain = figures["holdout_aucpr"] - figures["champion_holdout_aucpr"]
    precision_change = figures["holdout_precision"] - figures["champion_holdout_precision"]
    figures["aucpr_gain"] = gain
    figures["precision_change"] = precision_change
    summary = (
        f"holdout AUCPR {figures['holdout_aucpr']:.4f} vs champion {figures['champion_holdout_aucpr']:.4f} "
        f"(gain {gain:+.4f}, needed {min_aucpr_gain:+.4f}); precision at threshold "
        f"{figures['holdout_precision']:.4f} vs {figures['champion_holdout_precision']:.4f}"
    )
    if gain < min_aucpr_gain:
        return Decision(False, f"AUCPR gain too small: {summary}", figures)
    if precision_change < -precision_tolerance:
        return Decision(False, f"precision at threshold would drop: {summary}", figures)
    return Decision(True, summary, figures)


def metrics_match(original: Mapping[str, float], again: Mapping[str, float], tolerance: float) -> dict[str, Any]:
    """Compare the headline metrics of a reproduction with the original's."""
    keys = sorted(k for k in original if k in again and isinstance(original[k], (int, float)))
    diffs = {k: float(again[k]) - float(original[k]) for k in keys}
    worst = max((abs(d) for d in diffs.values() if not np.isnan(d)), default=0.0)
    return {"match": worst <= tolerance, "max_abs_difference": worst, "tolerance": tolerance, "differences": diffs}
