"""Bundles already in registries keep scoring as they did.

tests/data/bundle_v1 was written before the manifest became a type; tests/data/bundle_v1_scores.json
holds what the scoring code of that time (commit bb1ad43) gave for ROWS: the scores (as float.hex,
so bit for bit), the flags and the run's count vector. The code of today must give the same.
"""

import json
from pathlib import Path

import pandas as pd

from lakescore.bundle import load_bundle
from udfs.scorer import build_scoring_model, score_rows

DATA = Path(__file__).resolve().parent / "data"
NAN, INF = float("nan"), float("inf")
# Nulls, NaN, infinities and an extreme value, as a source delivers them.
ROWS = pd.DataFrame(
    {
        "amount": [12.5, None, NAN, INF, 1e9, -3.0, 0.0, 250.0],
        "hour": [3.0, 23.0, 12.0, None, 0.0, 7.0, -INF, 18.0],
        "velocity": [0.0, 5.0, 1.0, 2.0, 40.0, None, 3.0, 0.5],
    }
)


def test_a_bundle_written_before_the_restructure_scores_bit_for_bit_as_it_did():
    bundle = load_bundle(DATA / "bundle_v1")
    then = json.loads((DATA / "bundle_v1_scores.json").read_text())
    assert bundle.sha256 == then["bundle_sha256"]

    batch = score_rows(build_scoring_model(bundle), ROWS, top_k=2)

    assert [float(s).hex() for s in batch.scores] == then["scores_hex"]
    assert batch.flagged.tolist() == then["flagged"]
    assert batch.totals.counts.tolist() == then["counts"]
    assert batch.totals.counts[0] == len(ROWS)
