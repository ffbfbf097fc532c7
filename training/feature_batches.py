"""Raw rows -> features -> preprocessed model inputs, as Ray Data batch functions, and the
distributed fit of the preprocessing statistics on the training split.

The per-batch functions call the very code scoring calls: `FeatureSet.transform` (the one feature
function) and `Preprocessing.apply` (the bundle's preprocessing), so a row gets the same model
input on both paths (tests/test_training_data.py checks it value for value).

The statistics (median for imputation, low/high quantiles for clipping, mean and standard
deviation for scaling) of a training split of up to a million rows are computed exactly in the
driver, so a rerun reproduces them. A larger split's come from Ray Data aggregations: each block
is summarised where it lives and only the summaries meet, so the table is never collected to one
process; its quantiles are approximate (a KLL sketch, datasketches), which is plenty for clipping.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from lakescore import schemas as S
from lakescore.features import FeatureSet
from lakescore.preprocess import Preprocessing
from lakescore.feedback_keys import record_keys
from training.data import LABEL_COLUMN, SPLIT_COLUMN, TRAIN, TYPE_COLUMN, SplitPlan, labels_of

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

X = "x"  # preprocessed features, rows x features, float32
Y = "y"  # label, float32 0/1


def features_batch(
    raw: pd.DataFrame,
    feature_set: FeatureSet,
    plan: SplitPlan,
    label: str | None = None,
    label_overrides: Mapping[str, bool] | None = None,
    keys: Sequence[str] = (),
    hashed_keys: Sequence[str] = (),
    hash_key: str = "",
) -> pa.Table:
    """Ray Data batch function: raw source rows -> one column per feature (null where the value
    is null/NaN/inf), the label, the split name and the anomaly type; rows outside the window
    are dropped.

    `label` is the spec's label column (None: unsupervised, every row normal), read as
    `training.data.labels_of` reads it. `label_overrides` ({record key: is_anomaly}, analysts'
    verdicts) replace it for the rows whose record key (`lakescore.feedback_keys.record_keys` of
    the `keys` columns, `hashed_keys` of them under `hash_key` as `flagged` hashes them) they
    name, before the split is assigned.
    """
    labels, split = label_and_split(raw, plan, label, label_overrides, keys, hashed_keys, hash_key)
    keep = split != ""
    x = feature_set.transform(raw.loc[keep].reset_index(drop=True))
    columns = {
        # A null in Arrow, so that the aggregations skip it; it comes back as NaN for `apply`.
        name: pa.array(x[:, i], type=pa.float32(), mask=~np.isfinite(x[:, i]))
        for i, name in enumerate(feature_set.features)
    }
    columns[LABEL_COLUMN] = pa.array(labels[keep])
    columns[SPLIT_COLUMN] = pa.array(split[keep].astype(str))
    types = raw[S.ANOMALY_TYPE].loc[keep] if S.ANOMALY_TYPE in raw.columns else pd.Series([None] * int(keep.sum()))
    columns[TYPE_COLUMN] = pa.array(types.astype(object).where(types.notna(), None).tolist(), type=pa.string())
    return pa.table(columns)


def label_and_split(
    raw: pd.DataFrame,
    plan: SplitPlan,
    label: str | None = None,
    label_overrides: Mapping[str, bool] | None = None,
    keys: Sequence[str] = (),
    hashed_keys: Sequence[str] = (),
    hash_key: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(label as bool, split name) of every raw row; '' for rows outside a dated window."""
    if not len(raw):
        return np.zeros(0, bool), np.zeros(0, dtype=object)
    labels = labels_of(raw[label] if label is not None else None, len(raw))
    if label_overrides and keys:
        verdicts = record_keys(raw, keys, hashed=hashed_keys, hash_key=hash_key).map(label_overrides)
        known = verdicts.notna().to_numpy()
        labels = labels.copy()
        labels[known] = verdicts[known].astype(bool).to_numpy()
    return labels, plan.assign(raw, labels)


def training_rows(
    raw: pd.DataFrame,
    plan: SplitPlan,
    columns: Sequence[str],
    label: str | None = None,
    label_overrides: Mapping[str, bool] | None = None,
    keys: Sequence[str] = (),
    hashed_keys: Sequence[str] = (),
    hash_key: str = "",
) -> pd.DataFrame:
    """Ray Data batch function: the `columns` of the raw rows that fall in the training split
    (what a feature spec learns its vocabularies from)."""
    _, split = label_and_split(raw, plan, label, label_overrides, keys, hashed_keys, hash_key)
    return raw.loc[split == TRAIN, list(columns)].reset_index(drop=True)


def split_tally(
    raw: pd.DataFrame,
    plan: SplitPlan,
    label: str | None = None,
    label_overrides: Mapping[str, bool] | None = None,
    keys: Sequence[str] = (),
    hashed_keys: Sequence[str] = (),
    hash_key: str = "",
) -> pd.DataFrame:
    """Ray Data batch function: rows and anomalies per split of the raw rows (one row per split
    present), labelled and split as `features_batch` does; rows outside the window are not counted."""
    labels, split = label_and_split(raw, plan, label, label_overrides, keys, hashed_keys, hash_key)
    frame = pd.DataFrame({"split": split.astype(str), "label": labels.astype(np.int64)})
    frame = frame[frame["split"] != ""]
    grouped = frame.groupby("split")["label"].agg(["size", "sum"]).reset_index()
    return grouped.rename(columns={"size": "rows", "sum": "anomalies"}).astype({"split": str, "rows": "int64", "anomalies": "int64"})


def feature_matrix(batch: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """The feature columns of a features batch as float32 rows x features (null -> NaN)."""
    return np.stack([batch[f].to_numpy(dtype=np.float32, na_value=np.nan) for f in features], axis=1) if len(
        batch
    ) else np.empty((0, len(features)), dtype=np.float32)


def preprocess_batch(
    batch: pd.DataFrame, features: Sequence[str], preprocessing: Preprocessing, split: str | None = None
) -> dict[str, np.ndarray]:
    """Ray Data batch function: features batch -> {"x": model input, "y": label, "type": anomaly
    type}, keeping only `split` (all rows if None)."""
    if split is not None:
        batch = batch[batch[SPLIT_COLUMN] == split]
    x, _ = preprocessing.apply(feature_matrix(batch, features))
    return {
        X: x,
        Y: batch[LABEL_COLUMN].to_numpy(dtype=np.float32),
        "type": batch[TYPE_COLUMN].fillna("").to_numpy(dtype=object).astype(str),
    }


# Training splits up to this many rows are fitted exactly, in this process (21 float32 features:
# 84 MB); larger ones with Ray Data aggregations and a KLL sketch per feature.
EXACT_FIT_ROWS = 1_000_000


def fit_preprocessing(
    train_features: "ray.data.Dataset",
    features: Sequence[str],
    clip_quantiles: tuple[float, float],
    clip_margin: float = 0.0,
    exact_rows: int = EXACT_FIT_ROWS,
    rows: int | None = None,
) -> tuple[Preprocessing, dict[str, dict[str, float]]]:
    """Fit imputation, clipping and scaling on the training split.

    Args:
        train_features: the training split's features dataset (`features_batch` output); it
            is read twice, so it should come from a materialized dataset.
        features: the feature columns, in model order.
        clip_quantiles: (low, high) quantiles the scale is computed within.
        clip_margin: the clip bounds lie this many quantile ranges beyond the quantiles
            (see lakescore.preprocess).
        exact_rows: a split of at most this many rows is fitted exactly (see below).
        rows: the split's rows, if the caller knows them (else they are counted: a pass).

    Returns:
        (Preprocessing, the statistics per feature, for the manifest).

    The median and the clipping quantiles, then the mean and standard deviation of the values
    clipped at those quantiles, so that a heavy tail cannot inflate the scale. A split of up to
    `exact_rows` rows is gathered here and fitted exactly: the same rows give the same
    preprocessing, so a retraining run reproduces its model. A larger split takes two
    distributed aggregations over all features, (1) a KLL sketch per feature for the quantiles
    (approximate, and randomised: its extreme quantiles vary a little from run to run) and (2)
    the mean and standard deviation.
    """
    from ray.data.aggregate import ApproximateQuantile, Count, Mean, Std
    from ray.data.context import ShuffleStrategy

    if rows is None:
        rows = train_features.count()
    if not rows:
        raise ValueError("the training split has no rows; check the training window and the split settings")
    if rows <= exact_rows:
        return _fit_exactly(train_features, features, clip_quantiles, clip_margin)

    # A global aggregation (no key) ends in one partition: plain tasks do it. Ray 2.60's default
    # hash shuffle first starts aggregator actors, a fixed cost per pass however small the split
    # (docs/measurements.md, "Training").
    train_features.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    low, high = clip_quantiles
    first = train_features.aggregate(
        Count(alias_name="rows"),
        *[ApproximateQuantile(f, quantiles=[low, 0.5, high], alias_name=f"q|{f}") for f in features],
    )
    if not first or not first.get("rows"):
        raise ValueError("the training split has no rows; check the training window and the split settings")
    quantiles = np.array([_three(first.get(f"q|{f}")) for f in features], dtype=np.float64).reshape(len(features), 3)
    q_low = np.where(np.isfinite(quantiles[:, 0]), quantiles[:, 0], -np.inf)
    q_high = np.where(np.isfinite(quantiles[:, 2]), quantiles[:, 2], np.inf)

    def clip(batch: pd.DataFrame) -> pa.Table:
        x = np.clip(feature_matrix(batch, features), q_low, q_high)
        return pa.table({f: pa.array(x[:, i], mask=~np.isfinite(x[:, i])) for i, f in enumerate(features)})

    second = train_features.map_batches(clip, batch_format="pandas").aggregate(
        *[Mean(f, ignore_nulls=True, alias_name=f"mean|{f}") for f in features],
        *[Std(f, ddof=0, ignore_nulls=True, alias_name=f"std|{f}") for f in features],
    )
    stats = {
        f: {
            "q_low": float(quantiles[i, 0]),
            "median": float(quantiles[i, 1]),
            "q_high": float(quantiles[i, 2]),
            "mean": _number(second.get(f"mean|{f}")),
            "std": _number(second.get(f"std|{f}")),
        }
        for i, f in enumerate(features)
    }
    return _from_statistics(features, stats, clip_margin), stats


def _fit_exactly(
    train_features: "ray.data.Dataset",
    features: Sequence[str],
    clip_quantiles: tuple[float, float],
    clip_margin: float,
) -> tuple[Preprocessing, dict[str, dict[str, float]]]:
    """`fit_preprocessing` of a split small enough to hold here: exact quantiles, mean and std."""
    parts = [feature_matrix(batch, features) for batch in train_features.iter_batches(batch_format="pandas", batch_size=None)]
    x = np.concatenate(parts).astype(np.float64)
    x[~np.isfinite(x)] = np.nan  # null, NaN and +/-inf are imputed, not fitted
    low, high = clip_quantiles
    stats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing feature: NaN statistics
        for i, f in enumerate(features):
            q_low, median, q_high = np.nanquantile(x[:, i], [low, 0.5, high])
            clipped = np.clip(x[:, i], q_low, q_high)
            stats[f] = {
                "q_low": float(q_low),
                "median": float(median),
                "q_high": float(q_high),
                "mean": float(np.nanmean(clipped)),
                "std": float(np.nanstd(clipped)),
            }
    return _from_statistics(features, stats, clip_margin), stats


def _from_statistics(features: Sequence[str], stats: Mapping[str, Mapping[str, float]], clip_margin: float) -> Preprocessing:
    """The preprocessing from per-feature statistics (q_low, median, q_high, mean, std)."""
    column = lambda key: np.array([stats[f][key] for f in features], dtype=np.float64)  # noqa: E731
    return Preprocessing.from_statistics(
        features, column("median"), column("q_low"), column("q_high"), column("mean"), column("std"), clip_margin
    )


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _three(values) -> list[float]:
    """Three quantiles from a sketch result; NaN when the feature had no value at all."""
    if values is None or len(values) != 3:
        return [float("nan")] * 3
    return [_number(v) for v in values]
