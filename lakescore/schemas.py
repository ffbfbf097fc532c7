"""Table names, column names and schemas: the one place they are spelled.

Every table lakescore writes is Delta, registered in the catalog database (`lakescore` by
default) and stored at `<lake root>/tables/<database>/<table>` so that it can also be read
without a JVM (delta-rs, DuckDB, Ray Data).
"""

from __future__ import annotations

from pyspark.sql import types as T

# --- storage formats lakescore reads and writes ----------------------------------------------
DELTA = "delta"
PARQUET = "parquet"
TABLE_FORMATS = (DELTA, PARQUET)

# --- tables lakescore writes ----------------------------------------------------------------
# What analysts read: a view of FLAGGED_ALL showing the rows of published runs only (a run is
# published by the commit that writes its `run_complete` metric; lakescore.lake.register_flagged).
FLAGGED = "flagged"
# Every flagged row a run appended, published or not; stored in the folder named FLAGGED.
FLAGGED_ALL = "flagged_all"
RUN_METRICS = "run_metrics"
MODEL_REGISTRY = "model_registry"
FEEDBACK = "feedback"
TRANSACTIONS = "transactions"
SHUTTLE = "shuttle"
BREAST_CANCER = "breast_cancer"

# --- source columns (synthetic transactions) ---------------------------------------------------
TRANSACTION_ID = "transaction_id"
ACCOUNT_ID = "account_id"
EVENT_TS = "event_ts"
EVENT_DATE = "event_date"
AMOUNT = "amount"
MERCHANT_CATEGORY = "merchant_category"
COUNTRY = "country"
HOUR_OF_DAY = "hour_of_day"
DISTANCE_FROM_HOME_KM = "distance_from_home_km"
SECONDS_SINCE_PREV = "seconds_since_prev"
KM_FROM_PREV = "km_from_prev_txn"
TXN_COUNT_1H = "txn_count_1h"
TXN_COUNT_24H = "txn_count_24h"
ACCOUNT_AVG_AMOUNT = "account_avg_amount"
NEW_DEVICE = "new_device"
CARD_PRESENT = "card_present"
COUNTRY_CHANGED = "country_changed"
IS_ANOMALY = "is_anomaly"
ANOMALY_TYPE = "anomaly_type"
RECORD_ID = "record_id"  # key of the undated benchmark tables

MERCHANT_CATEGORIES = (
    "grocery",
    "restaurant",
    "fuel",
    "retail",
    "online",
    "travel",
    "electronics",
    "digital_goods",
)
ANOMALY_TYPES = ("card_testing", "account_takeover", "amount_spike", "impossible_travel")

TRANSACTIONS_SCHEMA = T.StructType(
    [
        T.StructField(TRANSACTION_ID, T.LongType(), False),
        T.StructField(ACCOUNT_ID, T.LongType(), False),
        T.StructField(EVENT_TS, T.TimestampType(), False),
        T.StructField(AMOUNT, T.DoubleType(), True),
        T.StructField(MERCHANT_CATEGORY, T.StringType(), True),
        T.StructField(COUNTRY, T.StringType(), True),
        T.StructField(HOUR_OF_DAY, T.IntegerType(), False),
        T.StructField(DISTANCE_FROM_HOME_KM, T.DoubleType(), True),
        T.StructField(SECONDS_SINCE_PREV, T.DoubleType(), True),
        T.StructField(KM_FROM_PREV, T.DoubleType(), True),
        T.StructField(TXN_COUNT_1H, T.IntegerType(), False),
        T.StructField(TXN_COUNT_24H, T.IntegerType(), False),
        T.StructField(ACCOUNT_AVG_AMOUNT, T.DoubleType(), False),
        T.StructField(NEW_DEVICE, T.BooleanType(), False),
        T.StructField(CARD_PRESENT, T.BooleanType(), False),
        T.StructField(COUNTRY_CHANGED, T.BooleanType(), False),
        T.StructField(IS_ANOMALY, T.BooleanType(), False),
        T.StructField(ANOMALY_TYPE, T.StringType(), True),
        T.StructField(EVENT_DATE, T.DateType(), False),
    ]
)

# --- output columns ---------------------------------------------------------------------------
SCORE = "score"
THRESHOLD = "threshold"
IS_FLAGGED = "is_flagged"
REASONS = "reasons"
REASON_FEATURE = "feature"
REASON_CONTRIBUTION = "contribution"
REASON_VALUE = "value"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
MODEL_SHA256 = "model_sha256"
SOURCE_TABLE = "source_table"
RUN_ID = "run_id"
RUN_DATE = "run_date"
SCORED_AT = "scored_at"
SCORING_ROLE = "scoring_role"
RECORD_KEY = "record_key"  # the row's key as one string; what feedback.record_key joins on
RECORD = "record"  # the row's keys and allow-listed columns, as text by column name

# What a model was scoring for: the model a run was given (--model / score.model / --bundle), or
# a challenger scored beside it in the same pass (--shadow).
PRIMARY = "primary"
SHADOW = "shadow"
SCORING_ROLES = (PRIMARY, SHADOW)
# Between scoring and writing only (never written): which of the models scored in one pass
# flagged a row, as its position in the list of models.
MODEL_INDEX = "_lakescore_model"

# A run's slice of flagged and run_metrics: a re-run replaces exactly its own slice, and every
# one of these is a partition column, so that replacing one is a partition-only replaceWhere
# (Delta drops the slice's files and rewrites no other file).
SLICE_COLUMNS = (RUN_DATE, SOURCE_TABLE, MODEL_NAME, SCORING_ROLE)

REASONS_TYPE = T.ArrayType(
    T.StructType(
        [
            T.StructField(REASON_FEATURE, T.StringType(), False),
            T.StructField(REASON_CONTRIBUTION, T.DoubleType(), False),
            T.StructField(REASON_VALUE, T.DoubleType(), True),
        ]
    )
)

# flagged has one schema for every source: typed common columns, and the source's own columns
# (keys and allow-listed ones) as text in `record`. A new source never adds a column; the typed
# view `flagged_<source>` (pipelines.nightly) casts `record` back to the source's types.
FLAGGED_SCHEMA = T.StructType(
    [
        T.StructField(RECORD_KEY, T.StringType(), True),
        T.StructField(RECORD, T.MapType(T.StringType(), T.StringType(), True), True),
        T.StructField(SCORE, T.DoubleType(), True),
        T.StructField(THRESHOLD, T.DoubleType(), False),
        T.StructField(REASONS, REASONS_TYPE, True),
        T.StructField(MODEL_NAME, T.StringType(), False),
        T.StructField(MODEL_VERSION, T.IntegerType(), False),
        T.StructField(MODEL_SHA256, T.StringType(), False),
        T.StructField(SCORING_ROLE, T.StringType(), False),
        T.StructField(SOURCE_TABLE, T.StringType(), False),
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(RUN_DATE, T.DateType(), False),
        T.StructField(SCORED_AT, T.TimestampType(), False),
    ]
)

# run_metrics is long so that a new metric never changes the schema.
SCOPE = "scope"
FEATURE = "feature"
METRIC = "metric"
VALUE = "value"
RUN_METRICS_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(RUN_DATE, T.DateType(), False),
        T.StructField(SOURCE_TABLE, T.StringType(), False),
        T.StructField(MODEL_NAME, T.StringType(), False),
        T.StructField(MODEL_VERSION, T.IntegerType(), False),
        T.StructField(SCORING_ROLE, T.StringType(), False),
        T.StructField(SCOPE, T.StringType(), False),
        T.StructField(FEATURE, T.StringType(), True),
        T.StructField(METRIC, T.StringType(), False),
        T.StructField(VALUE, T.DoubleType(), True),
        T.StructField("recorded_at", T.TimestampType(), False),
    ]
)
RUN_COMPLETE_METRIC = "run_complete"

MODEL_REGISTRY_SCHEMA = T.StructType(
    [
        T.StructField("name", T.StringType(), False),
        T.StructField("version", T.IntegerType(), False),
        T.StructField("path", T.StringType(), False),
        T.StructField("stage", T.StringType(), False),
        T.StructField("kind", T.StringType(), False),
        T.StructField("sha256", T.StringType(), False),
        T.StructField("metrics", T.MapType(T.StringType(), T.DoubleType()), True),
        T.StructField("source_table", T.StringType(), True),
        T.StructField("source_version", T.LongType(), True),
        T.StructField("note", T.StringType(), True),
        T.StructField("created_at", T.TimestampType(), False),
        T.StructField("updated_at", T.TimestampType(), False),
    ]
)
CHAMPION = "champion"
CHALLENGER = "challenger"
ARCHIVED = "archived"
STAGES = (CHAMPION, CHALLENGER, ARCHIVED)

# Model kinds (lakescore/models.py builds them); the manifest and the registry's `kind` record one.
MLP = "mlp"
AUTOENCODER = "autoencoder"
MODEL_KINDS = (MLP, AUTOENCODER)

# Threshold policies (training/thresholds.py applies them); the bundle manifest records one.
TARGET_PRECISION = "target_precision"
ALERT_RATE = "alert_rate"
FIXED_THRESHOLD = "fixed"
THRESHOLD_POLICIES = (TARGET_PRECISION, ALERT_RATE, FIXED_THRESHOLD)

# What `flagged` holds in place of a sensitive column (udfs/flagged.py): its keyed hash (HMAC-SHA256), or nothing.
SENSITIVE_HASH = "hash"
SENSITIVE_DROP = "drop"
SENSITIVE_ACTIONS = (SENSITIVE_HASH, SENSITIVE_DROP)

FEEDBACK_SCHEMA = T.StructType(
    [
        T.StructField("source_table", T.StringType(), False),
        T.StructField("record_key", T.StringType(), False),
        T.StructField("verdict", T.StringType(), False),
        T.StructField("analyst", T.StringType(), True),
        T.StructField("comment", T.StringType(), True),
        T.StructField("recorded_at", T.TimestampType(), False),
    ]
)
VERDICTS = ("confirmed_anomaly", "false_positive")
