"""Feature specs: parsing and its errors, checks against a table, fitting, the compiled features
(pandas and Arrow alike), transactions_v1 as it always was, the manifest, and drafting a spec."""

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lakescore.features import TRANSACTIONS_V1, numeric_feature_set
from lakescore.manifest import BundleError, FeatureSetSpec
from lakescore.specs import (
    OTHER,
    SourceSpec,
    SpecError,
    builtin_spec,
    builtin_specs,
    load_spec,
    parse_spec,
    render_suggestion,
    suggest_spec,
)

DATA = Path(__file__).resolve().parent / "data"
NAN, INF = float("nan"), float("inf")

SENSORS = """
name = "sensors_v1"
version = 1
keys = ["reading_id"]
label = "fault"
event_time = "ts"
sensitive = ["Operator Name"]

[[features]]
name = "Temp C"
kind = "numeric"
column = "Temp C"
transform = "log1p"

[[features]]
name = "site"
kind = "categorical"
column = "site"
top_n = 2

[[features]]
name = "door_open"
kind = "boolean"
column = "door_open"

[[features]]
name = "time of day"
kind = "timestamp"
column = "ts"
transform = "hour_cyclic"

[[features]]
name = "weekday"
kind = "timestamp"
column = "ts"
transform = "weekday"

[[features]]
name = "hour"
kind = "timestamp"
column = "ts"
transform = "hour"
"""

SENSOR_TYPES = {"reading_id": "string", "ts": "timestamp", "Temp C": "double", "site": "string",
                "door_open": "boolean", "fault": "boolean", "Operator Name": "string"}


def _sensor_rows() -> pd.DataFrame:
    ts = pd.to_datetime(["2026-03-02 00:30", "2026-03-02 13:45", None, "2026-03-08 23:59", "2026-03-05 06:00",
                         "2026-03-06 12:00"]).tz_localize("UTC")
    return pd.DataFrame(
        {
            "reading_id": ["r1", "r2", "r3", "r4", "r5", "r6"],
            "ts": ts,
            "Temp C": [21.5, None, NAN, -4.0, INF, 1e6],
            "site": ["Plant-7", "Plant-2", None, "Plant-7", "Plant-9", "Plant-2"],
            "door_open": pd.array([True, None, False, True, False, None], dtype="boolean"),
            "fault": pd.array([False, True, None, False, False, True], dtype="boolean"),
            "Operator Name": ["a", "b", None, "c", "d", "e"],
        }
    )


def _features(fs, x) -> dict[str, np.ndarray]:
    return {name: x[:, i] for i, name in enumerate(fs.features)}


# --- parsing and its errors ---------------------------------------------------------------------


def test_a_spec_parses_to_its_parts_and_back_from_toml_and_json():
    spec = parse_spec(SENSORS, "sensors.toml")
    assert spec.keys == ("reading_id",) and spec.label == "fault" and spec.event_time == "ts"
    assert spec.date_column is None and spec.sensitive == ("Operator Name",)
    assert [f.kind for f in spec.features] == ["numeric", "categorical", "boolean", "timestamp", "timestamp", "timestamp"]
    assert spec.features[1].top_n == 2 and spec.features[1].other is True
    assert spec.inputs == {"Temp C": "numeric", "site": "string", "door_open": "boolean", "ts": "timestamp"}
    assert parse_spec(spec.to_toml()) == spec
    assert SourceSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_every_builtin_spec_loads_and_survives_a_toml_round_trip(tmp_path):
    assert {"transactions_v1", "shuttle_v1", "breast_cancer_v1"} <= set(builtin_specs())
    for name in builtin_specs():
        spec = builtin_spec(name)
        (tmp_path / f"{name}.toml").write_text(spec.to_toml())
        assert load_spec(tmp_path / f"{name}.toml") == spec and spec.name == name


def _broken(old: str, new: str) -> str:
    assert old in SENSORS
    return SENSORS.replace(old, new, 1)


@pytest.mark.parametrize(
    "text, key, fix",
    [
        (_broken('transform = "log1p"', 'transform = "log2"'), "features[0].transform", "use one of: none, log1p"),
        (_broken('top_n = 2', 'top_n = 2\nbuckets = 3'), "features[1].buckets", "known keys here"),
        (_broken('version = 1', 'version = 1\nlables = "x"'), "lables", "known keys here"),
        (_broken('kind = "boolean"', 'kind = "bool"'), "features[2].kind", "use one of: numeric, boolean"),
        (_broken('top_n = 2', 'top_n = 2\nclip = [0.01, 0.99]'), "features[1].clip", "already clipped at quantiles"),
        (_broken('top_n = 2', 'top_n = 0'), "features[1].top_n", "positive integer"),
        (_broken('name = "weekday"', 'name = "hour"'), "features[5].name", "give every feature its own name"),
        (_broken('column = "door_open"', 'column = "fault"'), "features[2]", "must not see its label"),
        (_broken('column = "Temp C"\ntransform = "log1p"', 'column = "Temp C"\ntransform = "ratio"'),
         "features[0].column", "columns = [numerator, denominator]"),
        (_broken('name = "sensors_v1"', 'name = "sensors v1"'), "name", "letters, digits and underscores"),
        (_broken('keys = ["reading_id"]', 'keys = "reading_id"'), "keys", "list of distinct column names"),
        ("name = \"x\"\nversion = 1\n", "features", "add at least one [[features]]"),
    ],
)
def test_a_wrong_spec_is_refused_naming_the_key_and_the_fix(text, key, fix):
    with pytest.raises(SpecError) as error:
        parse_spec(text, "sensors.toml")
    message = str(error.value)
    assert message.startswith("sensors.toml: ") and f"`{key}`" in message and fix in message


def test_invalid_toml_is_refused_with_the_file_name():
    with pytest.raises(SpecError, match=r"^s\.toml is not valid TOML .*fix the syntax"):
        parse_spec("name = ", "s.toml")
    with pytest.raises(SpecError, match="no builtin feature spec 'nope'.*transactions_v1"):
        builtin_spec("nope")


# --- checks against a table ----------------------------------------------------------------------


def test_a_spec_that_fits_the_table_passes_both_checks():
    spec = parse_spec(SENSORS)
    spec.check_schema(SENSOR_TYPES, "lake.sensors")
    spec.check_sample(_sensor_rows(), "lake.sensors")


@pytest.mark.parametrize(
    "change, key, fix",
    [
        ({"Temp C": None, "temp c": "double"}, "features[0].column", "did you mean 'temp c'?"),
        ({"site": "double"}, "features[1].column", "a float or integer is kind = \"numeric\""),
        ({"Temp C": "string"}, "features[0].column", "for text use kind = \"categorical\""),
        ({"ts": "bigint", "event_ts": "timestamp"}, "features[3].column", "kind = \"numeric\" with transform = \"cyclic\""),
        ({"reading_id": "double"}, "keys[0]", "a float is no key"),
        ({"fault": None}, "label", "fix the name"),
    ],
)
def test_a_spec_that_does_not_fit_the_table_is_refused_naming_the_key_and_the_fix(change, key, fix):
    types = {**SENSOR_TYPES, **change}
    types = {c: t for c, t in types.items() if t is not None}
    with pytest.raises(SpecError) as error:
        parse_spec(SENSORS).check_schema(types, "lake.sensors")
    message = str(error.value)
    assert "lake.sensors" in message and f"`{key}`" in message and fix in message


def test_a_label_with_three_values_or_keys_that_repeat_are_refused_before_any_work():
    spec = parse_spec(SENSORS)
    three = _sensor_rows().assign(fault=["ok", "warn", None, "fail", "ok", "ok"])
    with pytest.raises(SpecError, match=r"`label` names 'fault', which holds 3 distinct values.*true/false or 0/1"):
        spec.check_sample(three, "lake.sensors")
    repeated = _sensor_rows().assign(reading_id=["r1", "r1", "r2", None, "r3", "r4"])
    with pytest.raises(SpecError, match=r"`keys` \['reading_id'\] are not unique .*1 duplicated, 1 with a null key.*add the date"):
        spec.check_sample(repeated, "lake.sensors")
    spec.check_sample(_sensor_rows().assign(fault=[0, 1, None, 1, 0, 0]), "lake.sensors")  # 0/1 is a label too


# --- fitting and the compiled features -------------------------------------------------------------


def test_fitting_keeps_the_most_frequent_values_with_ties_broken_by_value_whatever_the_row_order():
    spec = parse_spec(SENSORS)
    rows = _sensor_rows()
    fitted = spec.fit(rows)
    # Plant-7 and Plant-2 twice each, Plant-9 once: top_n = 2 keeps the first two, by value on the tie.
    assert fitted.vocabularies == {"site": ("Plant-2", "Plant-7")}
    assert spec.fit(rows.iloc[::-1]) == fitted == spec.fit(rows.sample(frac=1.0, random_state=3))
    assert fitted.features == ("Temp C", "site=Plant-2", "site=Plant-7", f"site={OTHER}", "door_open", "time of day_sin",
                               "time of day_cos", "weekday", "hour")
    with pytest.raises(SpecError, match=r"`features\[1\]` learns its vocabulary from column 'site'.*list `vocabulary`"):
        spec.fit(rows.drop(columns=["site"]))


def test_unseen_categories_go_to_other_and_nulls_are_missing_in_every_slot():
    fitted = parse_spec(SENSORS).fit(_sensor_rows())
    fs = fitted.feature_set()
    frame = _sensor_rows().assign(site=["Plant-2", "Plant-9", None, "plant-7", "Plant-7", "Plant-42"])
    f = _features(fs, fs.transform(frame))
    assert f["site=Plant-2"].tolist()[:2] == [1.0, 0.0] and f[f"site={OTHER}"][1] == 1.0
    assert all(np.isnan(f[n][2]) for n in ("site=Plant-2", "site=Plant-7", f"site={OTHER}"))
    assert [f[f"site={OTHER}"][i] for i in (3, 4, 5)] == [1.0, 0.0, 1.0]  # matched exactly: plant-7 is unseen
    assert fs.categories == {}  # "(other)" must tell null from unseen, so the text is sent, not codes


def test_numeric_boolean_and_timestamp_features_have_known_values():
    fs = parse_spec(SENSORS).fit(_sensor_rows()).feature_set()
    f = _features(fs, fs.transform(_sensor_rows()))
    np.testing.assert_array_equal(f["Temp C"], np.float32([np.log1p(21.5), NAN, NAN, 0.0, INF, np.log1p(1e6)]))
    np.testing.assert_array_equal(f["door_open"], np.float32([1, NAN, 0, 1, 0, NAN]))
    # 2026-03-02 is a Monday, 03-08 a Sunday; the null timestamp is NaN everywhere.
    np.testing.assert_array_equal(f["weekday"], np.float32([0, 0, NAN, 6, 3, 4]))
    np.testing.assert_array_equal(f["hour"], np.float32([0, 13, NAN, 23, 6, 12]))
    hours = np.array([0.5, 13.75, NAN, 23 + 59 / 60, 6.0, 12.0])
    np.testing.assert_allclose(f["time of day_sin"], np.sin(2 * np.pi * hours / 24), atol=1e-6)
    np.testing.assert_allclose(f["time of day_cos"], np.cos(2 * np.pi * hours / 24), atol=1e-6)


def test_arrow_batches_give_exactly_the_features_pandas_gives_with_zoned_and_naive_timestamps():
    fs = parse_spec(SENSORS).fit(_sensor_rows()).feature_set()
    frame = _sensor_rows()
    expected = fs.transform(frame)
    naive = frame.assign(ts=frame["ts"].dt.tz_localize(None))  # Spark TIMESTAMP_NTZ, read as UTC
    paris = frame.assign(ts=frame["ts"].dt.tz_convert("Europe/Paris"))  # the same instants
    microseconds = naive.assign(ts=naive["ts"].astype("datetime64[us]"))
    for rows in (naive, paris, microseconds):
        np.testing.assert_array_equal(fs.transform(rows), expected)
    # As Spark sends them: timestamp[us, tz=...] for TIMESTAMP, timestamp[us] for TIMESTAMP_NTZ.
    for rows, kind in ((frame, pa.timestamp("us", tz="UTC")), (paris, pa.timestamp("us", tz="Europe/Paris")),
                       (naive, pa.timestamp("us"))):
        batch = pa.RecordBatch.from_pandas(rows, preserve_index=False)
        batch = batch.set_column(batch.schema.get_field_index("ts"), "ts", batch.column("ts").cast(kind))
        assert batch.schema.field("ts").type == kind and batch.column("ts").null_count == 1
        np.testing.assert_array_equal(fs.transform(batch), expected)
        struct = pa.StructArray.from_arrays(batch.columns, names=batch.schema.names)
        np.testing.assert_array_equal(fs.transform(struct), expected)
    empty = frame.iloc[:0]
    assert fs.transform(pa.RecordBatch.from_pandas(empty, preserve_index=False)).shape == (0, len(fs.features))


def test_a_compiled_feature_set_pickles_as_its_spec_and_computes_the_same():
    fs = parse_spec(SENSORS).fit(_sensor_rows()).feature_set()
    again = pickle.loads(pickle.dumps(fs))
    assert again.features == fs.features and again.fitted == fs.fitted
    np.testing.assert_array_equal(again.transform(_sensor_rows()), fs.transform(_sensor_rows()))


def _transactions_rows() -> pd.DataFrame:
    """Nulls, NaN, infinities, negatives, unknown and upper-case categories, hour fractions."""
    return pd.DataFrame(
        {
            "amount": [100.0, None, NAN, INF, -3.0, 0.0, 1e9, 250.5, 12.25, -INF],
            "account_avg_amount": [100.0, 50.0, 20.0, 30.0, -1.0, None, INF, 0.0, 12.25, 5.0],
            "hour_of_day": [6.0, 23.0, None, 0.0, 6.5, 25.0, -1.0, 13.75, 12.0, NAN],
            "distance_from_home_km": [0.0, None, INF, -5.0, 3.5, 1e6, NAN, 2.0, 0.1, 7.0],
            "seconds_since_prev": [3600.0, 0.0, -10.0, None, NAN, 30.0, 59.9, 1e7, INF, 120.0],
            "km_from_prev_txn": [100.0, 5.0, -INF, 3.0, None, 2.0, INF, 0.0, 10.0, NAN],
            "txn_count_1h": [1.0, 0.0, None, 3.0, -2.0, 100.0, 1.0, NAN, 2.0, 1.0],
            "txn_count_24h": [3.0, None, 1.0, 4.0, 0.0, 7.0, INF, 2.0, 1.0, 0.0],
            "new_device": [True, False, None, True, False, True, False, None, True, False],
            "card_present": [False, True, True, None, False, True, False, True, None, True],
            "country_changed": [False, None, True, False, True, False, None, True, False, True],
            "merchant_category": ["fuel", None, "casino", "GROCERY", "grocery", "digital_goods", "travel", "", "online",
                                  "electronics"],
        }
    ).astype({"new_device": "boolean", "card_present": "boolean", "country_changed": "boolean"})


def test_the_transactions_spec_gives_bit_for_bit_the_features_the_old_function_gave():
    # tests/data/transactions_v1_features.json: the output of the Python function transactions_v1
    # was before it became a spec (commit c74dfb6), on these rows, as float.hex.
    then = json.loads((DATA / "transactions_v1_features.json").read_text())
    assert list(TRANSACTIONS_V1.features) == then["features"] and len(then["features"]) == 21
    x = TRANSACTIONS_V1.transform(_transactions_rows())
    assert [[float(v).hex() for v in row] for row in x] == then["hex"]
    batch = pa.RecordBatch.from_pandas(_transactions_rows(), preserve_index=False)
    assert TRANSACTIONS_V1.transform(batch).tobytes() == x.tobytes()
    assert TRANSACTIONS_V1.fitted.spec == builtin_spec("transactions_v1") and TRANSACTIONS_V1.fitted.spec.keys == ("transaction_id",)


def test_the_benchmark_specs_give_the_features_numeric_v1_gave():
    from lakescore.datasets import load_breast_cancer

    frame = load_breast_cancer()
    spec = builtin_spec("breast_cancer_v1")
    types = {c: "bigint" if c == "record_id" else "boolean" if c == "is_anomaly" else "double" for c in frame.columns}
    spec.check_schema(types, "lakescore.breast_cancer")
    spec.check_sample(frame, "lakescore.breast_cancer")
    fs = spec.fit().feature_set()
    legacy = numeric_feature_set([c for c in frame.columns if c not in ("record_id", "is_anomaly")])
    assert fs.features == legacy.features and dict(fs.inputs) == dict(legacy.inputs)
    assert fs.transform(frame).tobytes() == legacy.transform(frame).tobytes()
    assert [f.name for f in builtin_spec("shuttle_v1").features] == [f"f{i}" for i in range(1, 10)]


# --- the manifest -------------------------------------------------------------------------------------


def test_the_manifest_carries_spec_and_vocabularies_and_rebuilds_the_same_features():
    fitted = parse_spec(SENSORS).fit(_sensor_rows())
    fs = fitted.feature_set()
    record = FeatureSetSpec.of(fs)
    assert record.spec == fitted.spec and record.learned == {"vocabularies": {"site": ["Plant-2", "Plant-7"]}}
    data = json.loads(json.dumps(record.to_json()))
    assert FeatureSetSpec.from_json(data).to_json() == data
    rebuilt = FeatureSetSpec.from_json(data).build()
    assert rebuilt.features == fs.features and record.fitted == fitted
    np.testing.assert_array_equal(rebuilt.transform(_sensor_rows()), fs.transform(_sensor_rows()))
    # Bundles written before specs: transactions_v1 by name is the builtin spec; numeric_v1 has none.
    old = FeatureSetSpec.from_json({k: v for k, v in TRANSACTIONS_V1.to_manifest().items() if k not in ("spec", "learned")})
    assert old.spec is None and old.build() is TRANSACTIONS_V1 and old.fitted.spec.label == "is_anomaly"
    assert FeatureSetSpec.of(numeric_feature_set(["a"])).fitted is None


def test_a_manifest_whose_spec_or_vocabularies_were_damaged_is_refused_naming_the_field():
    data = FeatureSetSpec.of(parse_spec(SENSORS).fit(_sensor_rows()).feature_set()).to_json()
    no_vocabulary = {**data, "learned": {"vocabularies": {}}}
    with pytest.raises(BundleError, match=r"`learned.vocabularies` lacks \['site'\].*re-export"):
        FeatureSetSpec.from_json(no_vocabulary)
    bad_kind = json.loads(json.dumps(data))
    bad_kind["spec"]["features"][0]["kind"] = "float"
    with pytest.raises(BundleError, match=r"`features\[0\].kind` is 'float'"):
        FeatureSetSpec.from_json(bad_kind)
    other_features = {**data, "features": data["features"][:-1]}
    with pytest.raises(ValueError, match="its feature spec builds"):
        FeatureSetSpec.from_json(other_features).build()


# --- drafting a spec ------------------------------------------------------------------------------------


def _sensor_table(n: int = 60) -> tuple[dict[str, str], pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "reading_id": [f"r{i}" for i in range(n)],
            "ts": pd.date_range("2026-03-01", periods=n, freq="37min"),
            "site": rng.choice(["Plant-7", "Plant-2", "Depot 3"], n),
            "Temp C": rng.normal(20, 3, n),
            "Flow Rate": rng.lognormal(0, 2, n),
            "cycles": rng.integers(0, 9, n),
            "door_open": rng.random(n) < 0.3,
            "serial": [f"SN-{i:05d}-{rng.integers(1e6)}" for i in range(n)],
            "fault": rng.random(n) < 0.1,
            "day": pd.date_range("2026-03-01", periods=n, freq="37min").date,
        }
    )
    frame = frame.astype({"door_open": "boolean", "fault": "boolean"})
    for column in frame.columns:  # nulls in every column but the key
        if column != "reading_id":
            frame.loc[rng.choice(n, 3, replace=False), column] = None
    types = {"reading_id": "string", "ts": "timestamp_ntz", "site": "string", "Temp C": "double", "Flow Rate": "double",
             "cycles": "int", "door_open": "boolean", "serial": "string", "fault": "boolean", "day": "date"}
    return types, frame


def test_a_suggestion_finds_key_label_dates_and_features_of_a_sensor_table_and_parses_back():
    types, frame = _sensor_table()
    suggestion = suggest_spec(types, frame, name="sensors_v1", partition_columns=["day"])
    spec = suggestion.spec
    assert spec.keys == ("reading_id",) and spec.label == "fault"
    assert spec.date_column == "day" and spec.event_time == "ts"
    by_name = {f.name: f for f in spec.features}
    assert by_name["site"].kind == "categorical" and by_name["site"].top_n == 3
    assert by_name["Flow Rate"].transform == "log1p" and by_name["Temp C"].transform == "none"
    assert by_name["door_open"].kind == "boolean" and by_name["cycles"].kind == "numeric"
    assert by_name["ts hour"].transform == "hour_cyclic" and by_name["ts weekday"].transform == "weekday_cyclic"
    assert "serial" not in by_name and any(line.startswith("serial: 57 distinct values in 60 rows") for line in suggestion.left_out)
    assert suggestion.notes["keys"] == "unique in the sample of 60 rows"
    assert suggestion.notes["label"] == "2 distinct values, named like a label"
    assert suggestion.notes["site"] == "3 distinct values" and suggestion.notes["Flow Rate"].endswith(": log1p")

    text = render_suggestion(spec, suggestion.notes, suggestion.left_out)
    assert "# keys: unique in the sample of 60 rows" in text and "#   serial: 57 distinct" in text
    assert parse_spec(text, "suggested.toml") == spec
    spec.check_schema(types, "lake.sensors")
    spec.check_sample(frame, "lake.sensors")
    fs = spec.fit(frame).feature_set()
    assert fs.transform(frame).shape == (60, len(fs.features))


def test_a_suggestion_without_a_label_or_a_unique_column_says_so_and_still_parses_back():
    types, frame = _sensor_table()
    frame = frame.drop(columns=["fault"]).assign(reading_id=["same"] * len(frame))
    types = {c: t for c, t in types.items() if c != "fault"}
    suggestion = suggest_spec(types, frame, name="sensors_v1")
    assert suggestion.spec.label is None and suggestion.spec.keys == ()
    assert "unsupervised" in suggestion.notes["label"] and "name the key column" in suggestion.notes["keys"]
    text = render_suggestion(suggestion.spec, suggestion.notes, suggestion.left_out)
    assert parse_spec(text) == suggestion.spec


def test_lakescore_spec_suggest_drafts_a_spec_from_a_parquet_table(spark, settings, tmp_path):
    import datetime as dt

    from pipelines.spec import suggest_for_table

    rows = [(f"r{i}", dt.datetime(2026, 3, 1, i % 24), ["Plant-7", "Plant-2", None][i % 3], float(i % 7) if i % 5 else None,
             i % 11 == 0, dt.date(2026, 3, 1 + i % 2)) for i in range(40)]
    path = tmp_path / "sensors"
    spark.createDataFrame(rows, "reading_id STRING, ts TIMESTAMP, site STRING, `Temp C` DOUBLE, fault BOOLEAN, day DATE") \
        .write.parquet(str(path))
    text = suggest_for_table(spark, settings, str(path), sample_rows=1000)
    spec = parse_spec(text, "suggested.toml")
    assert spec.name == "sensors_v1" and spec.keys == ("reading_id",) and spec.label == "fault"
    assert spec.date_column == "day" and spec.event_time == "ts"
    assert "# keys: unique in the sample of 40 rows" in text
    assert {f.name: f.kind for f in spec.features} == {"ts hour": "timestamp", "ts weekday": "timestamp",
                                                       "site": "categorical", "Temp C": "numeric"}
    with pytest.raises(ValueError, match="does not exist"):
        suggest_for_table(spark, settings, str(tmp_path / "missing"), sample_rows=10)


def test_the_spec_command_is_part_of_the_cli():
    from typer.testing import CliRunner

    from jobs.cli import app

    result = CliRunner().invoke(app, ["spec", "suggest", "--help"])
    assert result.exit_code == 0 and "--sample-rows" in result.output and "--table" in result.output
