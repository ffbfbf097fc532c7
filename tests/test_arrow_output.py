"""udfs.arrow_output: a scored batch encoded as the Arrow structs the scoring UDF returns, without Spark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakescore import schemas as S
from transactions_rows import raw_transactions
from udfs.arrow_output import FLAGGED_ARROW_TYPE, SCORED_ARROW_TYPE, to_arrow, to_arrow_flagged
from udfs.scorer import build_scoring_model, score_rows


def test_arrow_rows_score_bit_identically_to_pandas_rows_and_the_arrow_result_holds_the_same_reasons(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(600, seed=9)
    raw[S.DISTANCE_FROM_HOME_KM] = raw[S.DISTANCE_FROM_HOME_KM].where(np.arange(600) % 7 != 0)  # nulls
    raw.loc[3, S.MERCHANT_CATEGORY] = None
    from_pandas = score_rows(scoring, raw, top_k=3)
    batch = pa.RecordBatch.from_pandas(raw, preserve_index=False)
    # As the Spark UDF gets them: one array per input column, assembled into a record batch.
    columns = [batch.column(c) for c in scoring.feature_set.inputs]
    from_arrow = score_rows(scoring, pa.RecordBatch.from_arrays(columns, names=list(scoring.feature_set.inputs)), top_k=3)
    assert from_arrow.scores.tobytes() == from_pandas.scores.tobytes()
    np.testing.assert_array_equal(from_arrow.totals.counts, from_pandas.totals.counts)
    assert 0 < from_arrow.flagged.sum() < 600

    result = to_arrow(from_arrow)
    assert result.type == SCORED_ARROW_TYPE and len(result) == 600
    rows = result.to_pylist()
    assert [r[S.SCORE] for r in rows] == from_arrow.scores.tolist()
    assert [r[S.IS_FLAGGED] for r in rows] == from_arrow.flagged.tolist()
    assert [r[S.REASONS] for r in rows] == list(from_pandas.reasons)  # None for rows not flagged
    assert result.field(S.REASONS).null_count == 600 - from_arrow.flagged.sum()
    empty = to_arrow(score_rows(scoring, batch.slice(0, 0), top_k=3))
    assert len(empty) == 0 and empty.type == SCORED_ARROW_TYPE


def test_the_flagged_only_result_is_null_where_not_flagged_and_the_full_result_where_flagged(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(600, seed=9)
    raw.loc[5, S.AMOUNT] = float("nan")
    batch = score_rows(scoring, raw, top_k=3)
    flagged = batch.flagged.tolist()
    assert 0 < sum(flagged) < 600

    result = to_arrow_flagged(batch)
    assert result.type == FLAGGED_ARROW_TYPE and len(result) == 600
    assert result.null_count == 600 - sum(flagged)
    full = to_arrow(batch).to_pylist()
    expected = [{S.SCORE: r[S.SCORE], S.REASONS: r[S.REASONS]} if f else None for r, f in zip(full, flagged)]
    assert result.to_pylist() == expected
    assert all(len(r[S.REASONS]) == 3 for r in result.to_pylist() if r is not None)

    # Every row flagged (no mask at all), and no row.
    every = to_arrow_flagged(score_rows(scoring, raw[batch.flagged].reset_index(drop=True), top_k=3))
    assert every.null_count == 0 and len(every) == sum(flagged)
    none = to_arrow_flagged(score_rows(scoring, raw[~batch.flagged].reset_index(drop=True), top_k=3))
    assert none.null_count == len(none) == 600 - sum(flagged)
    empty = to_arrow_flagged(score_rows(scoring, pa.RecordBatch.from_pandas(raw.head(0), preserve_index=False), top_k=3))
    assert len(empty) == 0 and empty.type == FLAGGED_ARROW_TYPE
