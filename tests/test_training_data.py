"""Reading the lake with Ray Data, the distributed preprocessing fit, and the promise that the
training path and the scoring path give a row the same model input."""

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakescore import schemas as S
from lakescore.features import TRANSACTIONS_V1, numeric_feature_set
from training.data import (
    SPLIT_COLUMN,
    TEST,
    TRAIN,
    VALIDATION,
    SplitPlan,
    TableSource,
    UnreadableSourceError,
    check_delta_readable,
    read_rows,
    source_dates,
)
from training.feature_batches import EXACT_FIT_ROWS, X, features_batch, fit_preprocessing, preprocess_batch

NOV = [dt.date(2026, 11, d) for d in range(1, 5)]


def _raw_transactions(n: int, seed: int = 0) -> pd.DataFrame:
    """Raw rows shaped like the transactions table, with nulls, NaN, inf and unknown categories."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            S.AMOUNT: rng.lognormal(3.0, 1.0, n),
            S.ACCOUNT_AVG_AMOUNT: rng.lognormal(3.0, 0.5, n),
            S.HOUR_OF_DAY: rng.integers(0, 24, n),
            S.DISTANCE_FROM_HOME_KM: rng.lognormal(1.5, 1.0, n),
            S.SECONDS_SINCE_PREV: rng.exponential(3600.0, n),
            S.KM_FROM_PREV: rng.lognormal(1.0, 1.0, n),
            S.TXN_COUNT_1H: rng.integers(1, 5, n),
            S.TXN_COUNT_24H: rng.integers(1, 20, n),
            S.NEW_DEVICE: rng.random(n) < 0.05,
            S.CARD_PRESENT: rng.random(n) < 0.5,
            S.COUNTRY_CHANGED: rng.random(n) < 0.05,
            S.MERCHANT_CATEGORY: rng.choice(list(S.MERCHANT_CATEGORIES), n).astype(object),
            S.IS_ANOMALY: rng.random(n) < 0.1,
            S.ANOMALY_TYPE: None,
            S.EVENT_DATE: [NOV[i % 4] for i in range(n)],
        }
    )
    frame.loc[0, S.AMOUNT] = np.nan
    frame.loc[1, S.DISTANCE_FROM_HOME_KM] = None
    frame.loc[2, S.SECONDS_SINCE_PREV] = np.inf
    frame.loc[3, S.MERCHANT_CATEGORY] = "space_tourism"
    frame.loc[4, S.MERCHANT_CATEGORY] = None
    frame.loc[5, S.AMOUNT] = 1e9  # far beyond the clipping quantile
    frame.loc[frame[S.IS_ANOMALY], S.ANOMALY_TYPE] = "amount_spike"
    return frame


def _write_delta(path, frame: pd.DataFrame, mode: str = "overwrite") -> None:
    from deltalake import write_deltalake

    write_deltalake(str(path), pa.Table.from_pandas(frame, preserve_index=False), partition_by=[S.EVENT_DATE], mode=mode)


@pytest.fixture
def ordered(ray_local):
    """Ray Data keeps the order of rows, so two paths can be compared row by row."""
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    yield
    context.execution_options.preserve_order = before


def test_a_delta_table_is_read_at_its_pinned_version_with_its_partition_column(tmp_path, ray_local):
    path = tmp_path / "events"
    _write_delta(path, pd.DataFrame({"a": [1.0, 2.0, 3.0], S.EVENT_DATE: NOV[:3]}))
    _write_delta(path, pd.DataFrame({"a": [4.0], S.EVENT_DATE: [NOV[3]]}), mode="append")

    pinned = TableSource("events", str(path), "delta", version=0)
    rows = read_rows(pinned, ["a", S.EVENT_DATE]).to_pandas().sort_values("a")
    assert rows["a"].tolist() == [1.0, 2.0, 3.0]
    assert [pd.Timestamp(d).date() for d in rows[S.EVENT_DATE]] == NOV[:3]
    assert source_dates(pinned, S.EVENT_DATE) == NOV[:3]
    assert source_dates(TableSource("events", str(path), "delta", version=1), S.EVENT_DATE) == NOV


def test_a_parquet_snapshot_is_read_with_the_dates_from_its_directory_names(tmp_path, ray_local):
    path = tmp_path / "snapshot"
    frame = _raw_transactions(40)
    pq.write_to_dataset(pa.Table.from_pandas(frame.astype({S.EVENT_DATE: str}), preserve_index=False), str(path), partition_cols=[S.EVENT_DATE])
    source = TableSource("snapshot", str(path), "parquet")
    assert source_dates(source, S.EVENT_DATE) == NOV

    plan = SplitPlan(dated=True, date_column=S.EVENT_DATE, date_to_split={NOV[0]: TRAIN, NOV[3]: TEST})
    columns = [*TRANSACTIONS_V1.inputs, S.IS_ANOMALY, S.ANOMALY_TYPE, S.EVENT_DATE]
    featured = read_rows(source, columns).map_batches(
        features_batch, fn_kwargs={"feature_set": TRANSACTIONS_V1, "plan": plan, "label": S.IS_ANOMALY}, batch_format="pandas"
    ).to_pandas()
    # Rows of the two dates outside the plan are dropped; the others carry their split.
    assert featured[SPLIT_COLUMN].value_counts().to_dict() == {TRAIN: 10, TEST: 10}


def _spoil(folder) -> None:
    """Overwrite the Parquet files of a partition folder: a read that opens them fails."""
    files = list(folder.glob("*.parquet"))
    assert files
    for f in files:
        f.write_bytes(b"not parquet")


def test_a_window_reads_only_its_partitions_of_a_long_history(tmp_path, ray_local, monkeypatch):
    from ray.data import DataContext

    monkeypatch.setattr(DataContext.get_current(), "retried_io_errors", [])  # a spoiled file fails at once
    path = tmp_path / "events"
    _write_delta(path, pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0], S.EVENT_DATE: NOV}))
    _spoil(path / f"{S.EVENT_DATE}={NOV[0]}")  # outside the window: never opened
    source = TableSource("events", str(path), "delta", version=0)

    rows = read_rows(source, ["a", S.EVENT_DATE], (S.EVENT_DATE, {NOV[1], NOV[3]})).to_pandas().sort_values(S.EVENT_DATE)
    assert [pd.Timestamp(d).date() for d in rows[S.EVENT_DATE]] == [NOV[1], NOV[3]]
    assert rows["a"].tolist() == [2.0, 4.0]
    # A window with no partition in the table reads nothing; the whole table would hit the spoiled file.
    assert read_rows(source, ["a", S.EVENT_DATE], (S.EVENT_DATE, {dt.date(2027, 1, 1)})).count() == 0
    with pytest.raises(Exception, match="Parquet"):
        read_rows(source, ["a", S.EVENT_DATE]).count()

    snapshot = tmp_path / "snapshot"
    frame = _raw_transactions(40)
    pq.write_to_dataset(pa.Table.from_pandas(frame.astype({S.EVENT_DATE: str}), preserve_index=False), str(snapshot),
                        partition_cols=[S.EVENT_DATE])
    _spoil(snapshot / f"{S.EVENT_DATE}={NOV[2]}")
    parquet = TableSource("snapshot", str(snapshot), "parquet")
    rows = read_rows(parquet, ["amount", S.EVENT_DATE], (S.EVENT_DATE, {NOV[0], NOV[3]})).to_pandas()
    assert sorted(rows[S.EVENT_DATE].astype(str).unique()) == [str(NOV[0]), str(NOV[3])]
    assert len(rows) == 20


def test_the_narrow_count_read_counts_the_splits_as_the_featured_rows_do_with_verdicts_applied(tmp_path, ray_local):
    from lakescore.feedback_keys import record_keys
    from training.pipeline import source_split_counts, split_counts

    path = tmp_path / "events"
    frame = _raw_transactions(400, seed=4)
    frame.insert(0, "txn_id", [f"t{i}" for i in range(len(frame))])
    _write_delta(path, frame.iloc[:200])
    _write_delta(path, frame.iloc[200:], mode="append")
    source = TableSource("events", str(path), "delta", version=1)
    plan = SplitPlan(dated=True, date_column=S.EVENT_DATE, date_to_split={NOV[0]: TRAIN, NOV[1]: TRAIN, NOV[2]: VALIDATION, NOV[3]: TEST})
    # Analysts' verdicts: 30 normals of the training days called anomalous, every anomaly of the
    # test day called normal.
    keys = record_keys(frame, ["txn_id"])
    normals = frame.index[~frame[S.IS_ANOMALY] & frame[S.EVENT_DATE].isin(NOV[:2])][:30]
    cleared = frame.index[frame[S.IS_ANOMALY] & (frame[S.EVENT_DATE] == NOV[3])]
    overrides = {**{keys[i]: True for i in normals}, **{keys[i]: False for i in cleared}}
    row_kwargs = {"plan": plan, "label": S.IS_ANOMALY, "label_overrides": overrides, "keys": ["txn_id"]}

    spec = type("Spec", (), {"label": S.IS_ANOMALY, "keys": ("txn_id",)})()
    narrow = source_split_counts(source, spec, row_kwargs)
    columns = [*TRANSACTIONS_V1.inputs, "txn_id", S.IS_ANOMALY, S.ANOMALY_TYPE, S.EVENT_DATE]
    featured = read_rows(source, columns).map_batches(
        features_batch, fn_kwargs={"feature_set": TRANSACTIONS_V1, **row_kwargs}, batch_format="pandas"
    )
    assert narrow == split_counts(featured)
    assert narrow[TEST]["anomalies"] == 0 and narrow[TRAIN]["rows"] == 200
    expected_train = int((frame[S.IS_ANOMALY] & frame[S.EVENT_DATE].isin(NOV[:2])).sum())
    expected_train += len(normals)
    assert narrow[TRAIN]["anomalies"] == expected_train


def test_a_dated_plan_assigns_splits_by_value_and_leaves_nulls_and_other_dates_out():
    plan = SplitPlan(dated=True, date_column=S.EVENT_DATE, date_to_split={NOV[0]: TRAIN, NOV[1]: VALIDATION, NOV[2]: TEST})
    raw = pd.DataFrame({S.EVENT_DATE: [NOV[2], None, NOV[0], NOV[3], NOV[0], pd.NaT, NOV[1]]})
    assert plan.assign(raw, np.zeros(len(raw), bool)).tolist() == [TEST, "", TRAIN, "", TRAIN, "", VALIDATION]
    text = pd.DataFrame({S.EVENT_DATE: ["2026-11-02", "2026-11-01T00:00:00", None]})  # text and timestamps alike
    assert plan.assign(text, np.zeros(3, bool)).tolist() == [VALIDATION, TRAIN, ""]
    assert plan.partitions == (S.EVENT_DATE, frozenset(NOV[:3]))
    assert SplitPlan(dated=False, keys=("id",)).partitions is None


@pytest.mark.parametrize(
    "properties, feature",
    [
        ("'delta.enableDeletionVectors' = 'true'", "deletion vectors"),
        ("'delta.columnMapping.mode' = 'name', 'delta.minReaderVersion' = '2', 'delta.minWriterVersion' = '5'", "column mapping"),
    ],
)
def test_a_delta_table_the_reader_cannot_honour_is_refused_with_a_parquet_hint(spark, tmp_path, properties, feature):
    path = tmp_path / "unreadable"
    spark.sql(f"CREATE TABLE delta.`{path}` (a DOUBLE, event_date DATE) USING DELTA TBLPROPERTIES ({properties})")
    spark.sql(f"INSERT INTO delta.`{path}` VALUES (1.0, DATE'2026-11-01'), (2.0, DATE'2026-11-02')")
    with pytest.raises(UnreadableSourceError, match=f"uses {feature}.*Write a Parquet snapshot first"):
        check_delta_readable(str(path), None)


@pytest.mark.parametrize("exact_rows", [EXACT_FIT_ROWS, 0], ids=["exact", "sketched"])
def test_the_preprocessing_is_fitted_on_the_training_split_only(ray_local, exact_rows):
    import ray
    from ray.data.expressions import col

    rng = np.random.default_rng(1)
    train = rng.normal(10.0, 2.0, 2000)
    train[:3] = [1e6, -1e6, np.nan]  # tails are clipped before the mean and std, a NaN is skipped
    test = np.full(500, 1e3)  # would move every statistic if it leaked in
    frame = pd.DataFrame({"v": np.r_[train, test], S.IS_ANOMALY: False, S.EVENT_DATE: [NOV[0]] * 2000 + [NOV[3]] * 500})
    plan = SplitPlan(dated=True, date_column=S.EVENT_DATE, date_to_split={NOV[0]: TRAIN, NOV[3]: TEST})
    featured = ray.data.from_pandas(frame).map_batches(
        features_batch, fn_kwargs={"feature_set": numeric_feature_set(["v"]), "plan": plan, "label": S.IS_ANOMALY}, batch_format="pandas"
    )
    train_only = featured.filter(expr=col(SPLIT_COLUMN) == TRAIN).materialize()
    preprocessing, stats = fit_preprocessing(train_only, ["v"], (0.01, 0.99), clip_margin=0.5, exact_rows=exact_rows)

    finite = train[np.isfinite(train)].astype(np.float32).astype(np.float64)  # features are float32
    low, median, high = np.quantile(finite, [0.01, 0.5, 0.99])
    clipped = np.clip(finite, stats["v"]["q_low"], stats["v"]["q_high"])
    if exact_rows:
        # A small split is fitted exactly, so a rerun reproduces it.
        assert (stats["v"]["q_low"], stats["v"]["median"], stats["v"]["q_high"]) == (low, median, high)
        assert fit_preprocessing(train_only, ["v"], (0.01, 0.99), clip_margin=0.5) == (preprocessing, stats)
    # KLL quantiles are approximate: within a fraction of a percent in rank.
    assert stats["v"]["q_low"] == pytest.approx(low, abs=0.3)
    assert stats["v"]["q_high"] == pytest.approx(high, abs=0.3)
    assert stats["v"]["median"] == pytest.approx(median, abs=0.1)
    assert preprocessing.center[0] == pytest.approx(clipped.mean(), rel=1e-5)
    assert preprocessing.scale[0] == pytest.approx(clipped.std(), rel=1e-4)
    assert 1.5 < preprocessing.scale[0] < 2.5  # the +/-1e6 rows did not inflate it
    # The clip bounds lie half a quantile range beyond the quantiles: a value beyond the bulk
    # keeps its distance (up to the bound), an absurd one stays bounded.
    width = stats["v"]["q_high"] - stats["v"]["q_low"]
    assert preprocessing.clip_low[0] == pytest.approx(stats["v"]["q_low"] - 0.5 * width)
    assert preprocessing.clip_high[0] == pytest.approx(stats["v"]["q_high"] + 0.5 * width)
    beyond = stats["v"]["q_high"] + 0.25 * width
    x, _ = preprocessing.apply(np.array([[beyond], [1e6]], dtype=np.float32))
    assert x[0, 0] == pytest.approx((beyond - preprocessing.center[0]) / preprocessing.scale[0], rel=1e-5)
    assert x[1, 0] == pytest.approx((preprocessing.clip_high[0] - preprocessing.center[0]) / preprocessing.scale[0], rel=1e-5)


def test_the_training_path_and_a_direct_call_give_identical_model_inputs(ordered):
    import ray
    from ray.data.expressions import col

    raw = _raw_transactions(400)
    plan = SplitPlan(dated=True, date_column=S.EVENT_DATE, date_to_split={NOV[0]: TRAIN, NOV[1]: TRAIN, NOV[2]: TRAIN, NOV[3]: TEST})
    featured = ray.data.from_pandas(raw).map_batches(
        features_batch, fn_kwargs={"feature_set": TRANSACTIONS_V1, "plan": plan, "label": S.IS_ANOMALY}, batch_format="pandas", batch_size=64
    )
    preprocessing, _ = fit_preprocessing(
        featured.filter(expr=col(SPLIT_COLUMN) == TRAIN).materialize(), TRANSACTIONS_V1.features, (0.01, 0.99)
    )
    # Training path: Ray Data batches, as the workers receive them.
    batches = featured.map_batches(
        preprocess_batch,
        fn_kwargs={"features": TRANSACTIONS_V1.features, "preprocessing": preprocessing},
        batch_format="pandas",
        batch_size=64,
    )
    via_ray = np.concatenate([b[X] for b in batches.iter_batches(batch_format="numpy", batch_size=None)])
    # Scoring path: the feature function and the bundle's preprocessing called directly.
    direct, invalid = preprocessing.apply(TRANSACTIONS_V1.transform(raw))

    assert via_ray.dtype == direct.dtype == np.float32
    assert via_ray.shape == direct.shape == (400, len(TRANSACTIONS_V1.features))
    assert np.array_equal(via_ray, direct)
    assert np.isfinite(direct).all()
    assert invalid.sum() > 0  # the NaN, null, inf and unknown categories were imputed
    # The 1e9 amount was clipped to the training split's high bound, not passed through.
    assert direct[5, 0] == pytest.approx((preprocessing.clip_high[0] - preprocessing.center[0]) / preprocessing.scale[0])


def test_preparing_the_same_source_twice_gives_the_same_training_inputs(tmp_path, settings, ray_local):
    """Reproducible training: the same table version and seed give the same preprocessing and the
    same rows in the same order (Ray Data keeps the source's order; small splits are fitted exactly)."""
    from lakescore.specs import builtin_spec
    from training.pipeline import TrainingInput, prepare_datasets

    path = tmp_path / "events"
    for part in range(6):  # several files: Ray Data reads them in parallel tasks
        frame = _raw_transactions(300, seed=part)
        _write_delta(path, frame, mode="overwrite" if part == 0 else "append")
    source = TableSource("events", str(path), "delta", version=5)
    columns = [*TRANSACTIONS_V1.inputs, S.IS_ANOMALY, S.ANOMALY_TYPE, S.EVENT_DATE]
    run_settings = settings.with_overrides({"train.kind": "mlp"})

    def prepared():
        data = prepare_datasets(run_settings, TrainingInput(source, tuple(columns), builtin_spec("transactions_v1")))
        rows = [b[X] for b in data.train_xy.iter_batches(batch_format="numpy", batch_size=None)]
        return data.preprocessing, np.concatenate(rows)

    (first, rows), (second, again) = prepared(), prepared()
    assert rows.shape[0] > 500 and np.isfinite(rows).all()
    for name in ("impute", "clip_low", "clip_high", "center", "scale"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert np.array_equal(rows, again)
