"""udfs.flagged: which source columns reach `flagged`, and how, without Spark."""

from __future__ import annotations

import dataclasses

import pytest

from lakescore.config import ScoreSettings
from udfs.flagged import choose_output_columns


def test_flagged_keys_default_to_the_known_key_columns_the_source_has():
    output = choose_output_columns(
        ["amount", "event_date", "transaction_id", "country", "account_id"], ScoreSettings(), "t"
    )
    assert output.keys == ("transaction_id", "account_id", "event_date")
    assert output.allowed == ("amount", "country")  # merchant_category is absent: skipped
    assert output.hashed == ()


def test_sensitive_columns_are_hashed_or_dropped_as_configured():
    columns = ["transaction_id", "account_id", "amount", "country"]
    hashed = ScoreSettings(sensitive_columns=("account_id", "country"), hash_key="pepper")
    assert choose_output_columns(columns, hashed, "t").hashed == ("account_id", "country")
    dropped = dataclasses.replace(hashed, sensitive_action="drop")
    output = choose_output_columns(columns, dropped, "t")
    assert output.copied == ("transaction_id", "amount") and output.hashed == ()


def test_key_columns_that_the_source_lacks_are_an_error_naming_them():
    with pytest.raises(ValueError, match="lacks key column.*order_id.*Fix score.key_columns"):
        choose_output_columns(["amount"], ScoreSettings(key_columns=("order_id",)), "source t")
    with pytest.raises(ValueError, match="none of the known key columns"):
        choose_output_columns(["amount"], ScoreSettings(), "source t")


def test_a_sources_view_is_named_after_the_last_part_of_its_table_name_or_path():
    from udfs.flagged import source_view_name

    assert source_view_name("lakescore.transactions") == "flagged_transactions"
    assert source_view_name("/data/Branch-Payments/") == "flagged_branch_payments"


def test_the_record_key_is_the_record_key_column_when_a_key_else_every_key_column():
    from udfs.flagged import OutputColumns, record_key_columns

    keyed = OutputColumns(keys=("account_id", "transaction_id", "event_ts"), allowed=("amount",), hashed=(), salt="")
    assert record_key_columns(keyed) == ("transaction_id",)
    composite = OutputColumns(keys=("account_id", "event_ts"), allowed=(), hashed=(), salt="")
    assert record_key_columns(composite) == ("account_id", "event_ts")


def test_the_typed_view_casts_each_copied_column_back_to_the_sources_type_and_keeps_hashed_ones_as_text():
    from pyspark.sql import types as T

    from udfs.flagged import OutputColumns, flagged_view_sql

    schema = T.StructType(
        [T.StructField("transaction_id", T.LongType()), T.StructField("account_id", T.LongType()),
         T.StructField("event_ts", T.TimestampType()), T.StructField("country", T.StringType()),
         T.StructField("tags", T.ArrayType(T.StringType()))]
    )
    output = OutputColumns(keys=("transaction_id", "account_id"), allowed=("event_ts", "country", "tags"), hashed=("account_id",), salt="s")
    sql = flagged_view_sql("db.flagged_t", "db.flagged", "it's/t", output, schema)
    assert sql.startswith(
        "CREATE OR REPLACE VIEW db.flagged_t AS SELECT CAST(record['transaction_id'] AS bigint) AS `transaction_id`, "
        "record['account_id'] AS `account_id`, CAST(record['event_ts'] AS timestamp) AS `event_ts`, "
        "record['country'] AS `country`, from_json(record['tags'], 'array<string>') AS `tags`, `record_key`, `score`"
    )
    assert sql.endswith("FROM db.flagged WHERE source_table = 'it\\'s/t'")


def test_the_specs_keys_and_sensitive_columns_decide_flagged_and_score_key_columns_still_override():
    columns = ["Reading ID", "site", "Temp C", "transaction_id"]
    score = ScoreSettings(allow_columns=("site", "Temp C"), hash_key="pepper")
    output = choose_output_columns(columns, score, "t", keys=("Reading ID",), sensitive=("site",))
    assert output.keys == ("Reading ID",) and output.record_keys == ("Reading ID",)
    assert output.allowed == ("site", "Temp C") and output.hashed == ("site",)
    overridden = choose_output_columns(columns, dataclasses.replace(score, key_columns=("transaction_id",)), "t", keys=("Reading ID",))
    assert overridden.keys == ("transaction_id",)
    with pytest.raises(ValueError, match="lacks key column.*reading_id.*Fix the feature spec's keys"):
        choose_output_columns(columns, score, "source t", keys=("reading_id",))


def test_a_spec_keyed_by_two_columns_makes_the_record_key_of_both_even_when_one_is_transaction_id():
    from udfs.flagged import record_key_columns

    output = choose_output_columns(["site", "transaction_id", "x"], ScoreSettings(allow_columns=()), "t", keys=("site", "transaction_id"))
    assert record_key_columns(output) == ("site", "transaction_id")


def test_column_names_with_spaces_dots_and_backticks_are_quoted_as_one_identifier():
    from udfs.flagged import quoted

    assert quoted("Temp C") == "`Temp C`"
    assert quoted("a.b") == "`a.b`"
    assert quoted("odd`name") == "`odd``name`"


def test_the_spark_record_key_and_the_pandas_record_key_are_the_same_strings(spark):
    import pandas as pd

    from lakescore.feedback import record_key_expression
    from lakescore.feedback_keys import record_keys
    from udfs.flagged import record_text, source_column

    rows = pd.DataFrame(
        {
            "id": pd.array([7, -12, 3_000_000_000], dtype="Int64"),
            "Plant name": ["Plant 7", "Zürich ü ✓", "a|b"],
        }
    )
    df = spark.createDataFrame(rows, "id BIGINT, `Plant name` STRING")
    types = {f.name: f.dataType for f in df.schema.fields}

    def spark_keys(keys):
        parts = [record_text(source_column(k), types[k]) for k in keys]
        return [r[0] for r in df.select(record_key_expression(parts)).collect()]

    for keys in (["id"], ["Plant name"], ["id", "Plant name"]):
        assert spark_keys(keys) == list(record_keys(rows, keys)), keys
    assert spark_keys(["id", "Plant name"])[1] == "-12|Zürich ü ✓"


def test_a_verdict_key_copied_from_flagged_relabels_the_same_row_in_training_when_a_key_column_is_sensitive(spark):
    """flagged hashes a sensitive key under the secret; an analyst copies that key into a verdict;
    training must find the row by building the same text, or the verdict is silently lost."""
    import datetime as dt
    import hashlib
    import hmac

    import pandas as pd
    from pyspark.sql import functions as F

    from lakescore import schemas as S
    from lakescore.features import numeric_feature_set
    from lakescore.feedback_keys import verdict_key_columns
    from training.data import LABEL_COLUMN, SplitPlan
    from training.feature_batches import features_batch
    from udfs.flagged import OutputColumns, flagged_records
    from udfs.metrics import RunIdentity

    secret = "night-key"
    raw = pd.DataFrame({"account_id": [7, 12, 12], "seq": [1, 1, 2], "f": [0.5, None, 2.0], "label": [False, False, True]})
    keys, hashed = verdict_key_columns(("account_id", "seq"), ("account_id",), S.SENSITIVE_HASH)
    assert (keys, hashed) == (("account_id", "seq"), ("account_id",))
    scored = spark.createDataFrame(raw[["account_id", "seq"]].assign(score=[0.9, 0.8, 0.7]), "account_id BIGINT, seq BIGINT, score DOUBLE")
    output = OutputColumns(keys=keys, allowed=(), hashed=hashed, salt=secret, record_keys=keys)
    run = RunIdentity(
        run_id="r1", run_date=dt.date(2026, 11, 4), model_name="m", model_version=1, model_sha256="ab" * 32,
        source="lakescore.accounts", source_version=1, threshold=0.5,
    )
    flagged = flagged_records(scored.withColumn(S.REASONS, F.lit(None).cast(S.REASONS_TYPE)), output, run, dt.datetime(2026, 11, 5))
    copied = {r[S.RECORD_KEY] for r in flagged.collect()}
    hash_of_7 = hmac.new(secret.encode(), b"7", hashlib.sha256).hexdigest()
    assert f"{hash_of_7}|1" in copied and not any(k.startswith("7|") for k in copied)  # no clear account id

    plan = SplitPlan(dated=False, validation_fraction=0.0, test_fraction=0.0, seed=0, keys=keys)
    verdict = {f"{hash_of_7}|1": True}  # "confirmed_anomaly" on the first row, by the key flagged shows
    relabelled = features_batch(raw, numeric_feature_set(["f"]), plan, "label", verdict, keys, hashed, secret).to_pandas()
    assert relabelled[LABEL_COLUMN].tolist() == [True, False, True]
    clear = features_batch(raw, numeric_feature_set(["f"]), plan, "label", verdict, keys).to_pandas()
    assert clear[LABEL_COLUMN].tolist() == [False, False, True]  # joined on clear keys, the verdict finds nothing
    with pytest.raises(ValueError, match="hash key is empty"):
        features_batch(raw, numeric_feature_set(["f"]), plan, "label", verdict, keys, hashed, "")
    assert verdict_key_columns(("account_id", "seq"), ("account_id",), S.SENSITIVE_DROP) == (("seq",), ())
