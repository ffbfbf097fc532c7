"""The scoring core, the per-worker model cache and the metric summary, without Spark."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc

import numpy as np
import pandas as pd
import pytest
import torch

from lakescore import schemas as S
from lakescore.bundle import WEIGHTS, BundleError
from lakescore.config import ScoreSettings
from lakescore.drift import bin_index, psi
from lakescore.features import TRANSACTIONS_V1
from lakescore.models import explain_batch, score_batch
from scoring_bundles import AUTOENCODER, MLP, build_test_bundle
from udfs.broadcast import bundle_from_files, load_scoring_model
from udfs.core import MetricLayout, RunTotals, ScoreGrid, build_scoring_model, count_batch, score_rows
from udfs.flagged import choose_output_columns
from udfs.metrics import RunIdentity, RunTotalsParam, metric_records
from udfs.model_cache import ModelCache

N_FEATURES = len(TRANSACTIONS_V1.features)


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


@pytest.fixture(scope="module")
def train_rows():
    return raw_transactions(3000, seed=1)


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory, train_rows):
    raw, labels = train_rows
    return build_test_bundle(tmp_path_factory.mktemp("b") / "mlp", raw, labels, TRANSACTIONS_V1, name="tx")


@pytest.fixture(scope="module")
def ae_bundle(tmp_path_factory, train_rows):
    raw, labels = train_rows
    return build_test_bundle(
        tmp_path_factory.mktemp("b") / "ae", raw, labels, TRANSACTIONS_V1, name="tx_ae", kind=AUTOENCODER
    )


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
    counts = scoring.layout.split(batch.totals.counts)
    assert np.isfinite(batch.scores).all()
    assert counts.invalid["log_amount"] == 3
    assert counts.invalid["log_amount_vs_account"] == 3
    assert counts.invalid["new_device"] == 1
    assert all(counts.invalid[f"category_{c}"] == 2 for c in S.MERCHANT_CATEGORIES)
    assert counts.invalid["hour_sin"] == 0
    assert counts.rows == 6 and counts.rows_with_invalid == 3  # rows 0, 1, 2


def test_batch_totals_add_up_to_the_totals_of_the_whole_and_every_histogram_counts_every_row(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(700, seed=7)
    whole = score_rows(scoring, raw, top_k=3)
    parts = RunTotalsParam().zero(whole.totals)
    for piece in (raw.iloc[:300], raw.iloc[300:]):
        parts = RunTotalsParam().addInPlace(parts, score_rows(scoring, piece, top_k=3).totals)
    np.testing.assert_array_equal(whole.totals.counts, parts.counts)
    assert parts.score_sum == pytest.approx(whole.scores.sum())
    assert (parts.score_min, parts.score_max) == (whole.scores.min(), whole.scores.max())
    counts = scoring.layout.split(parts.counts)
    assert counts.rows == parts.rows == 700
    assert set(counts.feature_bins) == set(TRANSACTIONS_V1.features)
    assert all(bins.sum() == 700 for bins in counts.feature_bins.values())
    assert counts.score_bins.sum() == counts.score_grid.sum() == 700


@pytest.mark.parametrize("kind", [MLP, AUTOENCODER])
def test_score_quantiles_read_from_the_grid_are_within_half_a_bin_of_the_exact_ones(kind):
    grid = ScoreGrid.for_kind(kind)
    rng = np.random.default_rng(11)
    scores = rng.beta(0.3, 8.0, 20_000) if kind == MLP else rng.lognormal(-3.0, 1.5, 20_000)
    counts = np.bincount(grid.index(scores), minlength=grid.bins)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = np.quantile(scores, q, method="inverted_cdf")
        approx = grid.quantile(counts, q)
        if kind == MLP:
            assert abs(np.log(approx / (1 - approx)) - np.log(exact / (1 - exact))) <= grid.step / 2 + 1e-9
        else:
            assert abs(np.log(approx) - np.log(exact)) <= grid.step / 2 + 1e-9
    assert grid.quantile(np.zeros(grid.bins, dtype=np.int64), 0.5) is None


def test_all_features_are_binned_at_once_exactly_as_drift_bin_index_bins_each(mlp_bundle):
    layout = MetricLayout.from_bundle(mlp_bundle)
    rng = np.random.default_rng(10)
    x = rng.normal(0.0, 2.0, size=(500, N_FEATURES)).astype(np.float32)
    sorted_, compared = [], []
    for i, name in enumerate(layout.binned):
        (sorted_ if len(layout.feature_edges[i]) > 4 else compared).append(layout.features.index(name))
    assert sorted_ and compared  # both ways of binning are checked: continuous features and flags
    for column in (sorted_[0], compared[0]):
        edges = layout.feature_edges[layout.binned.index(layout.features[column])]
        # NaN, below the first edge, exactly on edges (the smallest float32 at or above each), beyond the last.
        on = [_float32_at_or_above(e) for e in edges]
        x[:6, column] = [np.nan, edges[0] - 1.0, on[0], on[1], on[-1], edges[-1] + 5.0]
    scores = rng.random(500)
    counts = layout.split(count_batch(layout, x, x, scores, scores > 0.5, np.zeros(N_FEATURES)))
    for i, name in enumerate(layout.features):
        expected = np.bincount(bin_index(x[:, i], layout.feature_edges[i]), minlength=len(layout.feature_edges[i]) - 1)
        np.testing.assert_array_equal(counts.feature_bins[name], expected)
    np.testing.assert_array_equal(counts.score_bins, np.bincount(bin_index(scores, layout.score_edges), minlength=len(layout.score_edges) - 1))


def _float32_at_or_above(value: float) -> np.float32:
    v = np.float32(value)
    return v if v >= value else np.nextafter(v, np.float32(np.inf))


def test_an_empty_batch_scores_nothing_and_counts_zero(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(5, seed=8)
    batch = score_rows(scoring, raw.iloc[:0], top_k=3)
    assert batch.scores.shape == (0,) and len(batch.reasons) == 0
    assert not batch.totals.counts.any() and batch.totals.counts.shape == (scoring.layout.size,)


@pytest.fixture(autouse=True)
def _collect_as_usual_after_each_test():
    """load_scoring_model freezes the heap, as a Spark worker wants: this test process does not."""
    yield
    gc.unfreeze()


class _FakeBroadcast:
    """Stands in for a pyspark Broadcast on a worker: `.value` holds the files; reads are counted."""

    def __init__(self, files):
        self._files = files
        self.reads = 0

    @property
    def value(self):
        self.reads += 1
        return self._files


def test_a_worker_builds_the_model_once_per_bundle_sha256_and_reuses_it(mlp_bundle, ae_bundle):
    cache = ModelCache()
    broadcast = _FakeBroadcast(mlp_bundle.files)
    first = load_scoring_model(broadcast, mlp_bundle.sha256, cache)
    again = load_scoring_model(broadcast, mlp_bundle.sha256, cache)
    assert again is first and cache.builds == 1 and broadcast.reads == 1
    other = load_scoring_model(_FakeBroadcast(ae_bundle.files), ae_bundle.sha256, cache)
    assert other.kind == AUTOENCODER and cache.builds == 2
    assert torch.get_num_threads() == 1


def test_a_worker_freezes_what_it_holds_once_its_model_is_built(mlp_bundle):
    # PySpark's daemon runs gc.collect() after every task of a reused worker: over torch's objects
    # that is a full pass every task, unless they are frozen (udfs.core.freeze_worker_heap).
    assert gc.get_freeze_count() == 0
    cache = ModelCache()
    scoring = load_scoring_model(_FakeBroadcast(mlp_bundle.files), mlp_bundle.sha256, cache)
    frozen = gc.get_freeze_count()
    assert frozen > 50_000  # torch, pyarrow, pyspark and the model
    assert len(gc.get_objects()) < frozen / 100  # what a collection still walks
    # Frozen objects still score, and a cache hit freezes nothing more: what a task makes after
    # the build (here `later`) stays where a collection sees it. (The frozen count itself may
    # fall: refcounting still frees a frozen object that dies.)
    x = np.zeros((3, len(scoring.feature_set.features)), np.float32)
    assert score_batch(scoring.model, scoring.kind, x).shape == (3,)
    later = [[] for _ in range(10)]
    assert load_scoring_model(_FakeBroadcast(mlp_bundle.files), mlp_bundle.sha256, cache) is scoring
    assert gc.get_freeze_count() <= frozen
    assert any(o is later for o in gc.get_objects())


def test_the_cache_evicts_the_least_recently_used_model_beyond_its_capacity():
    cache = ModelCache()
    for key in ("a", "b", "c"):
        cache.add(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recent
    cache.add("d", "D")
    assert cache.get("b") is None and [cache.get(k) for k in ("a", "c", "d")] == ["A", "C", "D"]


def test_executors_refuse_broadcast_bundle_files_that_fail_verification(mlp_bundle):
    altered = dict(mlp_bundle.files)
    weights = bytearray(altered[WEIGHTS])
    weights[-1] ^= 1
    altered[WEIGHTS] = bytes(weights)
    with pytest.raises(BundleError, match="weights.safetensors has sha256"):
        bundle_from_files(altered, mlp_bundle.sha256)
    with pytest.raises(BundleError, match="the driver loaded"):
        bundle_from_files(mlp_bundle.files, "0" * 64)
    cache = ModelCache()
    with pytest.raises(BundleError):
        load_scoring_model(_FakeBroadcast(altered), mlp_bundle.sha256, cache)
    assert cache.builds == 0


def _run(bundle) -> RunIdentity:
    return RunIdentity("r1", dt.date(2026, 11, 4), bundle.name, bundle.version, bundle.sha256, "lakescore.t", 7, bundle.threshold)


def test_metric_records_hold_counts_rates_quantiles_psi_and_end_with_run_complete(mlp_bundle):
    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(800, seed=9)
    batch = score_rows(scoring, raw, top_k=3)
    counts = scoring.layout.split(batch.totals.counts)
    when = dt.datetime(2026, 11, 5, 3, 0)
    records = metric_records(
        _run(mlp_bundle), scoring.layout, batch.totals, rows_read=800, reference=mlp_bundle.reference,
        scoring_seconds=2.0, duration_seconds=2.5, recorded_at=when,
    )
    by_key = {(r[4], r[5], r[6]): r[7] for r in records}
    assert records[-1][6] == S.RUN_COMPLETE_METRIC and records[-1][7] == 1.0
    assert all(r[:4] == ("r1", dt.date(2026, 11, 4), "tx", 1) and r[8] == when for r in records)
    assert by_key[("run", None, "rows_read")] == by_key[("run", None, "rows_scored")] == 800
    assert by_key[("run", None, "rows_flagged")] == batch.flagged.sum()
    assert by_key[("run", None, "flag_rate")] == pytest.approx(batch.flagged.mean())
    assert by_key[("score", None, "mean")] == pytest.approx(batch.scores.mean())
    assert by_key[("score", None, "max")] == batch.scores.max()
    exact_p99 = np.quantile(batch.scores, 0.99, method="inverted_cdf")
    assert by_key[("score", None, "p99")] == pytest.approx(exact_p99, rel=0.01)
    assert by_key[("source", "lakescore.t", "source_version")] == 7
    assert by_key[("model", mlp_bundle.sha256, "model_sha256")] == 1
    expected_psi = psi(mlp_bundle.reference["features"]["log_amount"]["fractions"], counts.feature_bins["log_amount"])
    assert by_key[("feature", "log_amount", "psi")] == pytest.approx(expected_psi)
    histogram = [r for r in records if r[6] == "histogram_count"]
    assert sum(r[7] for r in histogram) == 800
    assert [r[5] for r in histogram] == sorted(r[5] for r in histogram)


def test_metric_records_of_an_empty_run_count_zero_and_leave_rates_and_quantiles_null(mlp_bundle):
    layout = MetricLayout.from_bundle(mlp_bundle)
    records = metric_records(
        _run(mlp_bundle), layout, RunTotals(layout.size), rows_read=0, reference=mlp_bundle.reference,
        scoring_seconds=0.5, duration_seconds=1.0, recorded_at=dt.datetime(2026, 11, 5),
    )
    by_key = {(r[4], r[5], r[6]): r[7] for r in records}
    assert by_key[("run", None, "rows_read")] == 0 and by_key[("run", None, "rows_scored")] == 0
    assert by_key[("run", None, "flag_rate")] is None
    assert by_key[("score", None, "p50")] is None and by_key[("score", None, "mean")] is None
    assert by_key[("score", None, "min")] is None
    assert by_key[("feature", "log_amount", "psi")] is None
    assert records[-1][6] == S.RUN_COMPLETE_METRIC


def test_flagged_keys_default_to_the_known_key_columns_the_source_has():
    output = choose_output_columns(
        ["amount", "event_date", "transaction_id", "country", "account_id"], ScoreSettings(), "t"
    )
    assert output.keys == ("transaction_id", "account_id", "event_date")
    assert output.allowed == ("amount", "country")  # merchant_category is absent: skipped
    assert output.hashed == ()


def test_sensitive_columns_are_hashed_or_dropped_as_configured():
    columns = ["transaction_id", "account_id", "amount", "country"]
    hashed = ScoreSettings(sensitive_columns=("account_id", "country"), hash_salt="pepper")
    assert choose_output_columns(columns, hashed, "t").hashed == ("account_id", "country")
    dropped = dataclasses.replace(hashed, sensitive_action="drop")
    output = choose_output_columns(columns, dropped, "t")
    assert output.copied == ("transaction_id", "amount") and output.hashed == ()


def test_key_columns_that_the_source_lacks_are_an_error_naming_them():
    with pytest.raises(ValueError, match="lacks key column.*order_id.*Fix score.key_columns"):
        choose_output_columns(["amount"], ScoreSettings(key_columns=("order_id",)), "source t")
    with pytest.raises(ValueError, match="none of the known key columns"):
        choose_output_columns(["amount"], ScoreSettings(), "source t")


def test_arrow_rows_score_bit_identically_to_pandas_rows_and_the_arrow_result_holds_the_same_reasons(mlp_bundle):
    import pyarrow as pa

    from udfs.core import SCORED_ARROW_TYPE

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

    result = from_arrow.to_arrow()
    assert result.type == SCORED_ARROW_TYPE and len(result) == 600
    rows = result.to_pylist()
    assert [r[S.SCORE] for r in rows] == from_arrow.scores.tolist()
    assert [r[S.IS_FLAGGED] for r in rows] == from_arrow.flagged.tolist()
    assert [r[S.REASONS] for r in rows] == list(from_pandas.reasons)  # None for rows not flagged
    assert result.field(S.REASONS).null_count == 600 - from_arrow.flagged.sum()
    empty = score_rows(scoring, batch.slice(0, 0), top_k=3).to_arrow()
    assert len(empty) == 0 and empty.type == SCORED_ARROW_TYPE


def test_the_flagged_only_result_is_null_where_not_flagged_and_the_full_result_where_flagged(mlp_bundle):
    import pyarrow as pa

    from udfs.core import FLAGGED_ARROW_TYPE

    scoring = build_scoring_model(mlp_bundle)
    raw, _ = raw_transactions(600, seed=9)
    raw.loc[5, S.AMOUNT] = float("nan")
    batch = score_rows(scoring, raw, top_k=3)
    flagged = batch.flagged.tolist()
    assert 0 < sum(flagged) < 600

    result = batch.to_arrow_flagged()
    assert result.type == FLAGGED_ARROW_TYPE and len(result) == 600
    assert result.null_count == 600 - sum(flagged)
    full = batch.to_arrow().to_pylist()
    expected = [{S.SCORE: r[S.SCORE], S.REASONS: r[S.REASONS]} if f else None for r, f in zip(full, flagged)]
    assert result.to_pylist() == expected
    assert all(len(r[S.REASONS]) == 3 for r in result.to_pylist() if r is not None)

    # Every row flagged (no mask at all), and no row.
    every = score_rows(scoring, raw[batch.flagged].reset_index(drop=True), top_k=3).to_arrow_flagged()
    assert every.null_count == 0 and len(every) == sum(flagged)
    none = score_rows(scoring, raw[~batch.flagged].reset_index(drop=True), top_k=3).to_arrow_flagged()
    assert none.null_count == len(none) == 600 - sum(flagged)
    empty = score_rows(scoring, pa.RecordBatch.from_pandas(raw.head(0), preserve_index=False), top_k=3).to_arrow_flagged()
    assert len(empty) == 0 and empty.type == FLAGGED_ARROW_TYPE
