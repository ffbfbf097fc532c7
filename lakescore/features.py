"""The one feature function: raw source rows -> numeric model features.

Training (Ray Data `map_batches`, pandas batches) and scoring (the Spark Arrow UDF, Arrow
batches) call the same `FeatureSet.transform`, so the two paths cannot drift: a feature set's
function reads its raw columns through `RawColumns` (numbers, or category codes), which has one
implementation over pandas and one over Arrow that return the same arrays.
A bundle names its feature set and records the raw input columns with their types; scoring
rebuilds the feature set from that record and checks the source table against it first.

Missing values are not fixed here: null, NaN and inf pass through as NaN and the bundle's
preprocessing imputes them (and counts them for `run_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lakescore import schemas as S

# Kinds of Spark type a raw input column may have; the check accepts any type of the kind.
NUMERIC = "numeric"
BOOLEAN = "boolean"
STRING = "string"
_SPARK_KINDS = {
    "tinyint": NUMERIC,
    "smallint": NUMERIC,
    "int": NUMERIC,
    "bigint": NUMERIC,
    "float": NUMERIC,
    "double": NUMERIC,
    "boolean": BOOLEAN,
    "string": STRING,
}


def spark_type_kind(simple_string: str) -> str | None:
    """Map a Spark simpleString (`double`, `decimal(10,2)`, ...) to NUMERIC/BOOLEAN/STRING."""
    if simple_string.startswith("decimal"):
        return NUMERIC
    return _SPARK_KINDS.get(simple_string)


# What `FeatureSet.transform` accepts: a pandas DataFrame, or Arrow record batch, table or
# struct array, holding (at least) the feature set's input columns.
RawRows = Union[pd.DataFrame, pa.RecordBatch, pa.Table, pa.StructArray]


class RawColumns:
    """Raw input columns as the arrays a feature function computes with.

    `numbers(name)`: float64, NaN for null and for values that are not numbers (booleans read as
    0/1). `codes(name, categories)`: int64 index into `categories`, -1 for null or unknown.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def numbers(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def codes(self, name: str, categories: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


class PandasColumns(RawColumns):
    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def numbers(self, name: str) -> np.ndarray:
        return _as_float(self.frame[name])

    def codes(self, name: str, categories: Sequence[str]) -> np.ndarray:
        return pd.Categorical(self.frame[name].astype("object"), categories=list(categories)).codes.astype(np.int64)


class ArrowColumns(RawColumns):
    """Columns of an Arrow batch, read without a detour through pandas (the scoring UDF's path:
    converting each batch to pandas costs more than the model; see docs/measurements.md,
    "Scoring worker and UDF")."""

    def __init__(
        self, batch: pa.RecordBatch | pa.Table | pa.StructArray, coded: Mapping[str, tuple[str, ...]] | None = None
    ):
        self.batch = batch
        self.coded = coded or {}

    def __len__(self) -> int:
        return len(self.batch)

    def _column(self, name: str) -> pa.Array | pa.ChunkedArray:
        if isinstance(self.batch, pa.StructArray):
            # field() ignores the struct's own validity: a null struct reads as its fields' values.
            return self.batch.field(name)
        return self.batch.column(name)

    def numbers(self, name: str) -> np.ndarray:
        column = self._column(name)
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(kind.value_type), kind.value_type
        if pa.types.is_float64(kind):
            return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls -> NaN
        if (pa.types.is_integer(kind) or pa.types.is_boolean(kind)) and column.null_count == 0:
            return column.to_numpy(zero_copy_only=False).astype(np.float64)  # faster than an Arrow cast
        if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind) or pa.types.is_boolean(kind):
            # Nulls become NaN.
            return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        # Anything else (numbers held as strings, ...) is parsed as pandas would parse it.
        return _as_float(column.to_pandas())

    def codes(self, name: str, categories: Sequence[str]) -> np.ndarray:
        column = self._column(name)
        if name in self.coded:
            if tuple(categories) != self.coded[name]:
                raise ValueError(
                    f"{name} arrived coded against {list(self.coded[name])}, but the feature function codes it against "
                    f"{list(categories)}: make FeatureSet.categories list what the function uses"
                )
            return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            # Not text: matched as pandas would match it (nothing but a string equals a category).
            return PandasColumns(pd.DataFrame({name: column.to_pandas()})).codes(name, categories)
        index = pc.index_in(column, value_set=pa.array(list(categories), type=column.type))
        return np.asarray(index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def raw_columns(raw: RawRows, coded: Mapping[str, tuple[str, ...]] | None = None) -> RawColumns:
    """The `RawColumns` view of a pandas DataFrame or an Arrow batch, table or struct array
    (`coded`: Arrow columns that hold category codes instead of text, see `FeatureSet.transform`)."""
    if isinstance(raw, pd.DataFrame):
        if coded:
            raise ValueError("coded categories come in Arrow batches (the Spark UDF), not in pandas frames")
        return PandasColumns(raw)
    if isinstance(raw, (pa.RecordBatch, pa.Table, pa.StructArray)):
        return ArrowColumns(raw, coded)
    raise TypeError(f"raw rows must be a pandas DataFrame or an Arrow batch, table or struct array, not {type(raw).__name__}")


@dataclass(frozen=True)
class FeatureSet:
    """A named, versioned transformation from raw columns to float32 features.

    Attributes:
        name: recorded in the bundle; `feature_set_from_manifest` rebuilds it by this name.
        inputs: raw column -> kind (NUMERIC, BOOLEAN or STRING), in a fixed order.
        features: output feature names, in model input order.
        categories: STRING input -> the categories the function codes it against
            (`RawColumns.codes`). Spark can then send such a column to the UDF as its int codes
            (`udfs.scoring.category_codes`) instead of its text: the JVM writes strings into
            Arrow far more slowly than ints (see docs/measurements.md, "Scoring worker and UDF").
    """

    name: str
    inputs: Mapping[str, str]
    features: tuple[str, ...]
    _fn: Callable[[RawColumns], Mapping[str, np.ndarray]]
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        not_text = [c for c in self.categories if self.inputs.get(c) != STRING]
        if not_text:
            raise ValueError(f"feature set {self.name}: categories are listed for {not_text}, which are not STRING inputs")

    def transform(self, raw: RawRows, *, coded: bool = False) -> np.ndarray:
        """Return a float32 array (rows x features); nulls and bad values become NaN.

        `raw`: a pandas DataFrame or an Arrow record batch, table or struct array with the
        input columns; both give the same array. The array is column-major (each feature's
        values contiguous): the features are computed a column at a time, and the steps after
        (preprocessing, histograms) run faster on contiguous columns.
        `coded`: the `categories` inputs of an Arrow `raw` hold their codes (index into the
        categories, -1 for null or unknown), not their text; the array is the same.
        """
        if len(raw) == 0:
            return np.empty((0, len(self.features)), dtype=np.float32)
        columns = self._fn(raw_columns(raw, self.categories if coded else None))
        out = np.empty((len(self.features), len(raw)), dtype=np.float32)
        with np.errstate(over="ignore"):  # beyond float32's range -> inf: invalid, imputed and counted
            for i, name in enumerate(self.features):
                out[i] = columns[name]
        return out.T

    def check_columns(self, available: Mapping[str, str], where: str) -> None:
        """Raise ValueError naming every missing or mistyped input column.

        Args:
            available: column name -> Spark simpleString type of the source.
            where: the source's name, for the message.
        """
        missing = [c for c in self.inputs if c not in available]
        wrong = [
            f"{c} is {available[c]}, expected {kind}"
            for c, kind in self.inputs.items()
            if c in available and spark_type_kind(available[c]) != kind
        ]
        if missing or wrong:
            expected = ", ".join(f"{c} ({k})" for c, k in self.inputs.items())
            problems = []
            if missing:
                problems.append("missing column(s): " + ", ".join(missing))
            if wrong:
                problems.append("wrong type(s): " + "; ".join(wrong))
            raise ValueError(
                f"{where} does not match the model's input ({self.name}): {'; '.join(problems)}. "
                f"The model expects: {expected}. Fix the source table or score it with a model "
                "trained on this table's columns."
            )

    def to_manifest(self) -> dict:
        return {"name": self.name, "inputs": dict(self.inputs), "features": list(self.features)}


def _as_float(series: pd.Series) -> np.ndarray:
    """Numeric or boolean column -> float64 with NaN for null; strings become NaN."""
    values = pd.to_numeric(series, errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


_HOURS = np.arange(24, dtype=np.float64)
_HOUR_SIN = np.sin(2.0 * np.pi * _HOURS / 24.0)
_HOUR_COS = np.cos(2.0 * np.pi * _HOURS / 24.0)


def _hour_circle(hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of the hour on the 24-hour circle. Whole hours 0..23 (the usual column) are
    looked up in a table computed by the very same expression, so the values are identical and
    ten times cheaper than sin/cos per row; anything else (fractions, NaN) is computed."""
    whole = hour.astype(np.int64) if np.isfinite(hour).all() else None
    if whole is not None and len(hour) and whole.min() >= 0 and whole.max() < 24 and np.array_equal(whole, hour):
        return _HOUR_SIN[whole], _HOUR_COS[whole]
    angle = 2.0 * np.pi * hour / 24.0
    return np.sin(angle), np.cos(angle)


def _log1p_of_positive(values: np.ndarray) -> np.ndarray:
    """log(1 + max(v, 0)); NaN stays NaN."""
    return np.log1p(np.maximum(values, 0.0))


def _transactions(raw: RawColumns) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        # Heavy tails: amounts, distances and gaps are compared on a log scale.
        log_amount = _log1p_of_positive(raw.numbers(S.AMOUNT))
        km_prev = np.maximum(raw.numbers(S.KM_FROM_PREV), 0.0)
        gap = raw.numbers(S.SECONDS_SINCE_PREV)
        hour_sin, hour_cos = _hour_circle(raw.numbers(S.HOUR_OF_DAY))
        out = {
            "log_amount": log_amount,
            "log_amount_vs_account": log_amount - _log1p_of_positive(raw.numbers(S.ACCOUNT_AVG_AMOUNT)),
            "hour_sin": hour_sin,
            "hour_cos": hour_cos,
            "log_distance_km": _log1p_of_positive(raw.numbers(S.DISTANCE_FROM_HOME_KM)),
            "log_seconds_since_prev": _log1p_of_positive(gap),
            "log_km_from_prev": np.log1p(km_prev),
            # Implied travel speed since the previous payment; gaps under a minute count as one.
            "log_speed_kmh": np.log1p(km_prev / np.maximum(gap / 3600.0, 1.0 / 60.0)),
            "log_txn_count_1h": _log1p_of_positive(raw.numbers(S.TXN_COUNT_1H)),
            "log_txn_count_24h": _log1p_of_positive(raw.numbers(S.TXN_COUNT_24H)),
            "new_device": raw.numbers(S.NEW_DEVICE),
            "card_present": raw.numbers(S.CARD_PRESENT),
            "country_changed": raw.numbers(S.COUNTRY_CHANGED),
        }
    # One hashing pass to category codes (-1: null or unknown), then one integer compare per
    # category: comparing the strings once per category cost more than the model in the UDF.
    codes = raw.codes(S.MERCHANT_CATEGORY, S.MERCHANT_CATEGORIES)
    one_hot = (codes == np.arange(len(S.MERCHANT_CATEGORIES))[:, None]).astype(np.float32)
    # An unknown or null category is NaN in every slot, so it is imputed, not read as "none".
    one_hot[:, codes < 0] = np.nan
    for i, name in enumerate(S.MERCHANT_CATEGORIES):
        out[f"category_{name}"] = one_hot[i]
    return out


TRANSACTIONS_V1 = FeatureSet(
    name="transactions_v1",
    inputs={
        S.AMOUNT: NUMERIC,
        S.ACCOUNT_AVG_AMOUNT: NUMERIC,
        S.HOUR_OF_DAY: NUMERIC,
        S.DISTANCE_FROM_HOME_KM: NUMERIC,
        S.SECONDS_SINCE_PREV: NUMERIC,
        S.KM_FROM_PREV: NUMERIC,
        S.TXN_COUNT_1H: NUMERIC,
        S.TXN_COUNT_24H: NUMERIC,
        S.NEW_DEVICE: BOOLEAN,
        S.CARD_PRESENT: BOOLEAN,
        S.COUNTRY_CHANGED: BOOLEAN,
        S.MERCHANT_CATEGORY: STRING,
    },
    features=(
        "log_amount",
        "log_amount_vs_account",
        "hour_sin",
        "hour_cos",
        "log_distance_km",
        "log_seconds_since_prev",
        "log_km_from_prev",
        "log_speed_kmh",
        "log_txn_count_1h",
        "log_txn_count_24h",
        "new_device",
        "card_present",
        "country_changed",
    )
    + tuple(f"category_{c}" for c in S.MERCHANT_CATEGORIES),
    _fn=_transactions,
    categories={S.MERCHANT_CATEGORY: S.MERCHANT_CATEGORIES},
)

NUMERIC_PASSTHROUGH = "numeric_v1"


def numeric_feature_set(columns: Sequence[str]) -> FeatureSet:
    """Identity features over numeric columns (the undated benchmark tables)."""
    columns = tuple(columns)

    def _identity(raw: RawColumns) -> dict[str, np.ndarray]:
        return {c: raw.numbers(c) for c in columns}

    return FeatureSet(
        name=NUMERIC_PASSTHROUGH,
        inputs={c: NUMERIC for c in columns},
        features=columns,
        _fn=_identity,
    )


def feature_set_for_table(table: str, columns: Sequence[str]) -> FeatureSet:
    """The feature set a source table is trained with: transactions_v1 if it has those
    columns, else every numeric column except keys and labels."""
    if all(c in columns for c in TRANSACTIONS_V1.inputs):
        return TRANSACTIONS_V1
    excluded = {S.RECORD_ID, S.IS_ANOMALY, S.ANOMALY_TYPE, S.EVENT_DATE, S.TRANSACTION_ID, S.ACCOUNT_ID}
    numeric = [c for c in columns if c not in excluded]
    if not numeric:
        raise ValueError(f"table {table} has no feature columns besides keys and labels")
    return numeric_feature_set(numeric)


def feature_set_from_manifest(spec: Mapping) -> FeatureSet:
    """Rebuild the feature set a bundle was trained with from its manifest entry."""
    name = spec["name"]
    if name == TRANSACTIONS_V1.name:
        if tuple(spec["features"]) != TRANSACTIONS_V1.features:
            raise ValueError(
                f"bundle lists features {spec['features']} for {name}, but this code builds "
                f"{list(TRANSACTIONS_V1.features)}; retrain the model with this version of lakescore"
            )
        return TRANSACTIONS_V1
    if name == NUMERIC_PASSTHROUGH:
        return numeric_feature_set(spec["features"])
    raise ValueError(
        f"bundle uses feature set {name!r}, which this version of lakescore does not know "
        f"(known: {TRANSACTIONS_V1.name}, {NUMERIC_PASSTHROUGH}); upgrade lakescore or retrain"
    )
