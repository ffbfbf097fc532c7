"""Small real anomaly benchmarks that ship inside PyPI packages (no download at run time).

Each loader returns a pandas DataFrame shaped like any undated source table: a `record_id`
key, numeric feature columns, and the `is_anomaly` label. `jobs/load_benchmarks.py` writes them
to the lake as Delta tables, and training and scoring treat them like any other table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lakescore import schemas as S


def load_shuttle() -> pd.DataFrame:
    """river's bundled Statlog Shuttle set (ODDS variant): 49,097 rows, 9 features, ~7.15% anomalies."""
    from river.datasets import Shuttle

    raw = pd.read_csv(Shuttle().path)
    target = "anomaly" if "anomaly" in raw.columns else raw.columns[-1]
    features = [c for c in raw.columns if c != target]
    frame = raw[features].astype("float64")
    frame.insert(0, S.RECORD_ID, np.arange(len(raw), dtype=np.int64))
    frame[S.IS_ANOMALY] = raw[target].astype(int).astype(bool)
    return frame


def load_breast_cancer() -> pd.DataFrame:
    """scikit-learn's Wisconsin breast-cancer set: 569 rows, 30 features, malignant as the anomaly."""
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load(as_frame=True)
    frame = bunch.data.copy()
    # Spark column names: lower case, underscores instead of spaces.
    frame.columns = [c.strip().lower().replace(" ", "_") for c in frame.columns]
    frame = frame.astype("float64")
    frame.insert(0, S.RECORD_ID, np.arange(len(frame), dtype=np.int64))
    # In sklearn's encoding 0 is malignant.
    frame[S.IS_ANOMALY] = bunch.target.to_numpy() == 0
    return frame


BENCHMARKS = {S.SHUTTLE: load_shuttle, S.BREAST_CANCER: load_breast_cancer}
