"""TEST FIXTURE ONLY: raw transactions_v1 rows, and the tiny bundles trained on them, for the udfs tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lakescore import schemas as S
from lakescore.bundle import Bundle
from lakescore.features import TRANSACTIONS_V1
from scoring_bundles import AUTOENCODER, MLP, build_test_bundle

N_FEATURES = len(TRANSACTIONS_V1.features)
# The bundles' names, per kind.
BUNDLE_NAMES = {MLP: "tx", AUTOENCODER: "tx_ae"}


def raw_transactions(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Raw input columns of transactions_v1; label 1 for big, far-away, new-device payments."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.05).astype(np.int64)
    frame = pd.DataFrame(
        {
            S.AMOUNT: np.round(rng.lognormal(3.0, 0.6, n) * np.where(label, 12.0, 1.0), 2),
            S.ACCOUNT_AVG_AMOUNT: rng.lognormal(3.0, 0.3, n),
            S.HOUR_OF_DAY: rng.integers(0, 24, n).astype(np.int32),
            S.DISTANCE_FROM_HOME_KM: rng.exponential(5.0, n) + label * 800.0,
            S.SECONDS_SINCE_PREV: rng.exponential(20_000.0, n),
            S.KM_FROM_PREV: rng.exponential(3.0, n),
            S.TXN_COUNT_1H: rng.poisson(0.5, n).astype(np.int32),
            S.TXN_COUNT_24H: rng.poisson(3.0, n).astype(np.int32),
            S.NEW_DEVICE: (rng.random(n) < np.where(label, 0.8, 0.03)),
            S.CARD_PRESENT: rng.random(n) < 0.6,
            S.COUNTRY_CHANGED: rng.random(n) < 0.05,
            S.MERCHANT_CATEGORY: rng.choice(S.MERCHANT_CATEGORIES, n),
        }
    )
    return frame, label


def transactions_bundle(directory: Path, kind: str = MLP) -> Bundle:
    """A `kind` bundle trained on 3,000 rows of `raw_transactions` (seed 1), written to `directory`."""
    raw, labels = raw_transactions(3000, seed=1)
    return build_test_bundle(directory, raw, labels, TRANSACTIONS_V1, name=BUNDLE_NAMES[kind], kind=kind)
