import numpy as np
import pandas as pd
import pytest

from lakescore import schemas as S
from lakescore.features import TRANSACTIONS_V1, feature_set_for_table, feature_set_from_manifest, numeric_feature_set


def _raw(**overrides):
    row = {
        S.AMOUNT: 100.0,
        S.ACCOUNT_AVG_AMOUNT: 100.0,
        S.HOUR_OF_DAY: 6,
        S.DISTANCE_FROM_HOME_KM: 0.0,
        S.SECONDS_SINCE_PREV: 3600.0,
        S.KM_FROM_PREV: 100.0,
        S.TXN_COUNT_1H: 1,
        S.TXN_COUNT_24H: 3,
        S.NEW_DEVICE: True,
        S.CARD_PRESENT: False,
        S.COUNTRY_CHANGED: False,
        S.MERCHANT_CATEGORY: "fuel",
    }
    row.update(overrides)
    return row


def test_transaction_features_have_known_values():
    x = TRANSACTIONS_V1.transform(pd.DataFrame([_raw()]))
    f = dict(zip(TRANSACTIONS_V1.features, x[0]))
    assert x.dtype == np.float32 and x.shape == (1, len(TRANSACTIONS_V1.features))
    assert f["log_amount"] == pytest.approx(np.log1p(100.0))
    assert f["log_amount_vs_account"] == 0.0
    assert f["hour_sin"] == pytest.approx(1.0) and f["hour_cos"] == pytest.approx(0.0, abs=1e-6)
    assert f["log_speed_kmh"] == pytest.approx(np.log1p(100.0))
    assert f["new_device"] == 1.0 and f["card_present"] == 0.0
    assert f["category_fuel"] == 1.0 and f["category_grocery"] == 0.0


def test_nulls_nan_wrong_values_and_unknown_categories_become_nan_not_errors():
    frame = pd.DataFrame(
        [
            _raw(**{S.AMOUNT: None, S.MERCHANT_CATEGORY: None}),
            _raw(**{S.SECONDS_SINCE_PREV: float("nan"), S.MERCHANT_CATEGORY: "casino"}),
            _raw(**{S.DISTANCE_FROM_HOME_KM: "far"}),
        ]
    )
    x = TRANSACTIONS_V1.transform(frame)
    f = {name: x[:, i] for i, name in enumerate(TRANSACTIONS_V1.features)}
    assert np.isnan(f["log_amount"][0]) and np.isnan(f["category_fuel"][0])
    assert np.isnan(f["log_seconds_since_prev"][1]) and np.isnan(f["category_grocery"][1])
    assert np.isnan(f["log_distance_km"][2])
    assert np.isfinite(f["log_amount"][1:]).all()


def test_an_empty_batch_gives_an_empty_matrix():
    empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in TRANSACTIONS_V1.inputs})
    assert TRANSACTIONS_V1.transform(empty).shape == (0, len(TRANSACTIONS_V1.features))


def test_column_check_names_missing_and_mistyped_columns_and_what_is_expected():
    available = {c: "double" for c in TRANSACTIONS_V1.inputs}
    available[S.NEW_DEVICE] = available[S.CARD_PRESENT] = available[S.COUNTRY_CHANGED] = "boolean"
    available[S.MERCHANT_CATEGORY] = "string"
    TRANSACTIONS_V1.check_columns(available, "t")  # complete: no error
    del available[S.AMOUNT]
    available[S.HOUR_OF_DAY] = "string"
    with pytest.raises(ValueError) as err:
        TRANSACTIONS_V1.check_columns(available, "lakescore.transactions")
    message = str(err.value)
    assert "missing column(s): amount" in message
    assert "hour_of_day is string, expected numeric" in message
    assert "The model expects:" in message


def test_feature_sets_round_trip_through_the_manifest():
    assert feature_set_from_manifest(TRANSACTIONS_V1.to_manifest()) is TRANSACTIONS_V1
    numeric = numeric_feature_set(["f1", "f2"])
    again = feature_set_from_manifest(numeric.to_manifest())
    assert again.features == ("f1", "f2")
    frame = pd.DataFrame({"f1": [1, None], "f2": [2.5, 3.0]})
    np.testing.assert_array_equal(again.transform(frame), numeric.transform(frame))


def test_a_bundle_from_before_feature_specs_gets_the_builtin_transactions_spec_and_an_unknown_name_says_what_to_do():
    then = {k: v for k, v in TRANSACTIONS_V1.to_manifest().items() if k not in ("spec", "learned")}
    assert feature_set_from_manifest(then) is TRANSACTIONS_V1
    assert set(TRANSACTIONS_V1.to_manifest()) == {"name", "inputs", "features", "spec", "learned"}
    with pytest.raises(ValueError, match="retrain the model"):
        feature_set_from_manifest({**then, "features": then["features"][:-1]})
    with pytest.raises(ValueError, match="'sensors_v1' without a feature spec.*upgrade lakescore or retrain"):
        feature_set_from_manifest({**then, "name": "sensors_v1"})


def test_timestamp_and_null_readers_agree_between_pandas_and_arrow():
    import datetime as dt

    import pyarrow as pa

    from lakescore.features import TIMESTAMP, raw_columns, spark_type_kind

    assert [spark_type_kind(t) for t in ("timestamp", "timestamp_ntz", "date")] == [TIMESTAMP] * 3
    frame = pd.DataFrame(
        {
            "ns": pd.to_datetime(["1970-01-01 01:00:00.000001", None, "1969-12-31 23:00:00.000000"]),  # datetime64[ns], naive
            "day": [dt.date(1970, 1, 2), None, dt.date(2026, 3, 2)],
            "text": ["a", None, float("nan")],
        }
    )
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    assert batch.schema.field("ns").type == pa.timestamp("ns") and batch.schema.field("day").type == pa.date32()
    for raw in (raw_columns(frame), raw_columns(batch)):
        np.testing.assert_array_equal(raw.timestamps("ns"), [3_600_000_001.0, np.nan, -3_600_000_000.0])
        np.testing.assert_array_equal(raw.timestamps("day"), [86_400e6, np.nan, 1_772_409_600e6])
        assert raw.missing("text").tolist() == [False, True, True]


def test_undated_tables_use_their_numeric_columns_without_keys_or_labels():
    fs = feature_set_for_table("t", [S.RECORD_ID, "f1", "f2", S.IS_ANOMALY])
    assert fs.features == ("f1", "f2")
    assert feature_set_for_table("t", list(TRANSACTIONS_V1.inputs) + [S.IS_ANOMALY]) is TRANSACTIONS_V1


def _awkward_rows() -> pd.DataFrame:
    """Rows that exercise every conversion: nulls, NaN, +/-inf, unknown and null categories."""
    return pd.DataFrame(
        [
            _raw(),
            _raw(**{S.AMOUNT: None, S.MERCHANT_CATEGORY: None, S.NEW_DEVICE: None}),
            _raw(**{S.SECONDS_SINCE_PREV: float("nan"), S.MERCHANT_CATEGORY: "casino", S.HOUR_OF_DAY: None}),
            _raw(**{S.DISTANCE_FROM_HOME_KM: float("inf"), S.KM_FROM_PREV: -float("inf"), S.TXN_COUNT_24H: None}),
            _raw(**{S.MERCHANT_CATEGORY: "travel", S.CARD_PRESENT: True, S.AMOUNT: 0.0}),
        ]
    ).astype({S.HOUR_OF_DAY: "Int32", S.TXN_COUNT_24H: "Int64", S.NEW_DEVICE: "boolean", S.CARD_PRESENT: "boolean"})


def test_arrow_batches_give_exactly_the_features_pandas_batches_give():
    import pyarrow as pa

    frame = _awkward_rows()
    expected = TRANSACTIONS_V1.transform(frame)
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    assert batch.schema.field(S.HOUR_OF_DAY).type == pa.int32() and batch.column(S.NEW_DEVICE).null_count == 1
    # The Spark UDF assembles its input columns into a record batch like `batch`; a struct of
    # them and a table are read the same way.
    struct = pa.StructArray.from_arrays(batch.columns, names=batch.schema.names)
    for rows in (batch, struct, pa.Table.from_batches([batch])):
        np.testing.assert_array_equal(TRANSACTIONS_V1.transform(rows), expected)
    # Spark may hand over categories dictionary-encoded, and numbers as decimals or strings.
    import decimal

    encoded = batch.set_column(
        batch.schema.get_field_index(S.MERCHANT_CATEGORY), S.MERCHANT_CATEGORY, batch.column(S.MERCHANT_CATEGORY).dictionary_encode()
    )
    amounts = pa.array([None if v is None or np.isnan(v) else decimal.Decimal(str(v)) for v in frame[S.AMOUNT]], pa.decimal128(12, 2))
    encoded = encoded.set_column(encoded.schema.get_field_index(S.AMOUNT), S.AMOUNT, amounts)
    np.testing.assert_array_equal(TRANSACTIONS_V1.transform(encoded), expected)
    as_text = frame.astype({S.DISTANCE_FROM_HOME_KM: str})
    as_text.loc[2, S.DISTANCE_FROM_HOME_KM] = "far"
    np.testing.assert_array_equal(
        TRANSACTIONS_V1.transform(pa.RecordBatch.from_pandas(as_text, preserve_index=False)), TRANSACTIONS_V1.transform(as_text)
    )
    with pytest.raises(TypeError, match="pandas DataFrame or an Arrow"):
        TRANSACTIONS_V1.transform([_raw()])


def test_category_codes_in_place_of_the_text_give_exactly_the_same_features():
    import pyarrow as pa

    from lakescore.features import FeatureSet, STRING, raw_columns

    frame = _awkward_rows()
    frame.loc[0, S.MERCHANT_CATEGORY] = "GROCERY"  # matched exactly, so unknown
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    text = raw_columns(batch).codes(S.MERCHANT_CATEGORY, S.MERCHANT_CATEGORIES)
    assert (text == -1).sum() >= 3 and (text >= 0).sum() >= 1  # null, unknown and upper case; known
    # As the Spark UDF gets them (udfs.scoring.category_codes): int32 codes, -1 for null or unknown.
    coded = batch.set_column(batch.schema.get_field_index(S.MERCHANT_CATEGORY), S.MERCHANT_CATEGORY, pa.array(text, pa.int32()))
    assert TRANSACTIONS_V1.categories == {S.MERCHANT_CATEGORY: S.MERCHANT_CATEGORIES}
    np.testing.assert_array_equal(TRANSACTIONS_V1.transform(coded, coded=True), TRANSACTIONS_V1.transform(frame))
    # Codes made against other categories than the function's are refused, not misread.
    wrong = FeatureSet(TRANSACTIONS_V1.name, TRANSACTIONS_V1.inputs, TRANSACTIONS_V1.features, TRANSACTIONS_V1._fn,
                       categories={S.MERCHANT_CATEGORY: S.MERCHANT_CATEGORIES[::-1]})
    with pytest.raises(ValueError, match="coded against"):
        wrong.transform(coded, coded=True)
    with pytest.raises(ValueError, match="not in pandas"):
        TRANSACTIONS_V1.transform(frame, coded=True)
    with pytest.raises(ValueError, match="not STRING inputs"):
        FeatureSet("x", {"v": STRING, "n": "numeric"}, ("n",), lambda raw: {}, categories={"n": ("a",)})


def test_hours_on_the_circle_are_the_same_from_the_table_and_computed():
    from lakescore.features import _hour_circle

    whole = np.arange(24, dtype=np.float64)
    angle = 2.0 * np.pi * whole / 24.0
    sin, cos = _hour_circle(whole[::-1].copy())
    assert sin.tobytes() == np.sin(angle)[::-1].tobytes() and cos.tobytes() == np.cos(angle)[::-1].tobytes()
    odd = np.array([6.5, np.nan, 25.0, -1.0, 0.0])  # fractions, null, out of range: computed
    sin, cos = _hour_circle(odd)
    np.testing.assert_array_equal(sin, np.sin(2.0 * np.pi * odd / 24.0))
    assert _hour_circle(np.empty(0))[0].shape == (0,)
