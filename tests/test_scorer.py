"""udfs.scorer: scores, flags, reasons and invalid-value counts of a batch of raw rows, without Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakescore import schemas as S
from lakescore.features import TRANSACTIONS_V1
from lakescore.models import explain_batch, score_batch
from scoring_bundles import MLP
from transactions_rows import N_FEATURES, raw_transactions
from udfs.scorer import build_scoring_model, score_rows


def test_scores_are_the_models_scores_of_the_preprocessed_features_and_flags_are_score_at_or_above_threshold(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(500, seed=2)
    batch = score_rows(scoring, raw, top_k=3)
    x, _ = scoring.preprocessing.apply(TRANSACTIONS_V1.transform(raw))
    np.testing.assert_array_equal(batch.scores, score_batch(scoring.model, MLP, x))
    np.testing.assert_array_equal(batch.flagged, batch.scores >= mlp_bundle.threshold)
    assert 0 < batch.flagged.sum() < 100  # the fixture's threshold flags a few percent


def test_the_same_batch_scores_bit_identically_twice(mlp_bundle):
    raw, _ = raw_transactions(400, seed=3)
    first = score_rows(build_scoring_model(mlp_bundle), raw, top_k=3)
    second = score_rows(build_scoring_model(mlp_bundle), raw, top_k=3)
    assert first.scores.tobytes() == second.scores.tobytes()
    assert list(first.reasons) == list(second.reasons)


def test_reasons_are_the_top_k_contributions_of_flagged_rows_only_with_raw_feature_values(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(500, seed=4)
    batch = score_rows(scoring, raw, top_k=3)
    features = TRANSACTIONS_V1.transform(raw)
    x, _ = scoring.preprocessing.apply(features)
    flagged = np.flatnonzero(batch.flagged)
    assert all(batch.reasons[i] is None for i in np.flatnonzero(~batch.flagged))
    order, contributions = explain_batch(scoring.model, MLP, x[flagged], 3)
    for j, row in enumerate(flagged):
        reasons = batch.reasons[row]
        assert [r[S.REASON_FEATURE] for r in reasons] == [TRANSACTIONS_V1.features[i] for i in order[j]]
        assert [r[S.REASON_CONTRIBUTION] for r in reasons] == pytest.approx(contributions[j].tolist())
        assert [r[S.REASON_CONTRIBUTION] for r in reasons] == sorted((r[S.REASON_CONTRIBUTION] for r in reasons), reverse=True)
        assert [r[S.REASON_VALUE] for r in reasons] == pytest.approx([float(features[row, i]) for i in order[j]])


def test_autoencoder_contributions_over_all_features_add_up_to_the_score(ae_bundle):
    scoring = build_scoring_model(ae_bundle)
    raw, _ = raw_transactions(300, seed=5)
    batch = score_rows(scoring, raw, top_k=N_FEATURES)
    flagged = np.flatnonzero(batch.flagged)
    assert flagged.size > 0
    for row in flagged:
        total = sum(r[S.REASON_CONTRIBUTION] for r in batch.reasons[row])
        assert total == pytest.approx(batch.scores[row], rel=1e-5)


def test_null_nan_inf_and_unknown_values_are_imputed_and_counted_per_feature(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(6, seed=6)
    raw[S.AMOUNT] = [None, np.nan, np.inf, 5.0, 10.0, -np.inf]  # -inf clips to 0 before the log: valid
    raw[S.MERCHANT_CATEGORY] = [None, "spaceships", "grocery", "fuel", "online", "travel"]
    raw[S.NEW_DEVICE] = pd.array([True, None, False, False, True, False], dtype="boolean")
    batch = score_rows(scoring, raw, top_k=3)
    parts = scoring.layout.split(batch.totals.counts)
    assert np.isfinite(batch.scores).all()
    assert parts.invalid["log_amount"] == 3
    assert parts.invalid["log_amount_vs_account"] == 3
    assert parts.invalid["new_device"] == 1
    assert all(parts.invalid[f"category_{c}"] == 2 for c in S.MERCHANT_CATEGORIES)
    assert parts.invalid["hour_sin"] == 0
    assert parts.rows == 6 and parts.rows_with_invalid == 3  # rows 0, 1, 2


def test_an_empty_batch_scores_nothing_and_counts_zero(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(5, seed=8)
    batch = score_rows(scoring, raw.iloc[:0], top_k=3)
    assert batch.scores.shape == (0,) and len(batch.reasons) == 0
    assert not batch.totals.counts.any() and batch.totals.counts.shape == (scoring.layout.size,)


def test_models_scored_in_one_pass_get_categories_as_codes_only_when_every_model_codes_them_alike():
    import dataclasses

    from lakescore.features import TRANSACTIONS_V1, numeric_feature_set
    from udfs.scoring import shared_inputs

    numeric = numeric_feature_set(["amount", "record_weight"])
    inputs, codes = shared_inputs([TRANSACTIONS_V1, numeric])
    assert inputs == [*TRANSACTIONS_V1.inputs, "record_weight"]
    assert codes == dict(TRANSACTIONS_V1.categories)
    fewer = dict(TRANSACTIONS_V1.categories)
    column = next(iter(fewer))
    fewer[column] = fewer[column][:-1]
    other = dataclasses.replace(TRANSACTIONS_V1, categories=fewer)
    assert shared_inputs([TRANSACTIONS_V1, other]) == (list(TRANSACTIONS_V1.inputs), None)


def test_a_reason_shows_no_value_for_a_feature_that_reads_a_sensitive_column():
    import pandas as pd

    from lakescore.specs import parse_spec
    from udfs.scorer import reason_value_mask

    spec = parse_spec(
        """
name = "masks_v1"
version = 1
keys = ["id"]
sensitive = ["site"]
[[features]]
name = "temp_c"
kind = "numeric"
column = "Temp C"
[[features]]
name = "site"
kind = "categorical"
column = "site"
[[features]]
name = "temp_vs_load"
kind = "numeric"
columns = ["Temp C", "load"]
transform = "ratio"
"""
    )
    feature_set = spec.fit(pd.DataFrame({"site": ["Plant-7", "Plant-2", None]})).feature_set()
    assert feature_set.features == ("temp_c", "site=Plant-2", "site=Plant-7", "site=(other)", "temp_vs_load")
    assert reason_value_mask(feature_set, {"site"}).tolist() == [True, False, False, False, True]
    assert reason_value_mask(feature_set, {"load", "operator"}).tolist() == [True, True, True, True, False]
    assert reason_value_mask(feature_set, ()).all()


def test_masked_reason_values_are_none_and_every_other_value_and_contribution_is_unchanged(mlp_bundle):
    from udfs.scorer import reason_value_mask

    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(500, seed=4)
    shown = reason_value_mask(scoring.feature_set, {S.AMOUNT})
    assert 0 < shown.sum() < len(shown)  # amount feeds some features, not all
    plain, masked = score_rows(scoring, raw, top_k=3), score_rows(scoring, raw, top_k=3, shown=shown)
    names = dict(zip(scoring.feature_set.features, shown))
    checked = 0
    for row in np.flatnonzero(plain.flagged):
        for before, after in zip(plain.reasons[row], masked.reasons[row]):
            assert after[S.REASON_FEATURE] == before[S.REASON_FEATURE]
            assert after[S.REASON_CONTRIBUTION] == before[S.REASON_CONTRIBUTION]
            expected = before[S.REASON_VALUE] if names[before[S.REASON_FEATURE]] else None
            assert after[S.REASON_VALUE] == expected
            checked += not names[before[S.REASON_FEATURE]]
    assert checked > 0  # some flagged row's reason reads amount
