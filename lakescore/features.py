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
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from lakescore.specs import FittedSpec

# Kinds of Spark type a raw input column may have; the check accepts any type of the kind.
NUMERIC = "numeric"
BOOLEAN = "boolean"
STRING = "string"
TIMESTAMP = "timestamp"
_SPARK_KINDS = {
    "tinyint": NUMERIC,
    "smallint": NUMERIC,
    "int": NUMERIC,
    "bigint": NUMERIC,
    "float": NUMERIC,
    "double": NUMERIC,
    "boolean": BOOLEAN,
    "string": STRING,
    "timestamp": TIMESTAMP,
    "timestamp_ntz": TIMESTAMP,
    "date": TIMESTAMP,
}


def spark_type_kind(simple_string: str) -> str | None:
    """Map a Spark simpleString (`double`, `decimal(10,2)`, ...) to NUMERIC/BOOLEAN/STRING/TIMESTAMP."""
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
    `missing(name)`: bool, true where the value is null (or NaN). `timestamps(name)`: float64
    microseconds since 1970-01-01 UTC (exact: below 2**53), NaN for null; a timestamp without a
    time zone (Spark's TIMESTAMP_NTZ, a naive pandas column) is read as UTC, a date as its midnight.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def numbers(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def codes(self, name: str, categories: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def missing(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def timestamps(self, name: str) -> np.ndarray:
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

    def missing(self, name: str) -> np.ndarray:
        return self.frame[name].isna().to_numpy(dtype=bool)

    def timestamps(self, name: str) -> np.ndarray:
        return _epoch_microseconds(self.frame[name])


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

    def _decoded(self, name: str) -> pa.Array | pa.ChunkedArray:
        """The column with a dictionary encoding resolved to its values."""
        column = self._column(name)
        return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column

    def numbers(self, name: str) -> np.ndarray:
        column = self._decoded(name)
        kind = column.type
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
        column = self._decoded(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            # Not text: matched as pandas would match it (nothing but a string equals a category).
            return PandasColumns(pd.DataFrame({name: column.to_pandas()})).codes(name, categories)
        index = pc.index_in(column, value_set=pa.array(list(categories), type=column.type))
        return np.asarray(index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)

    def missing(self, name: str) -> np.ndarray:
        column = self._column(name)
        return np.asarray(pc.is_null(column, nan_is_null=True).to_numpy(zero_copy_only=False), dtype=bool)

    def timestamps(self, name: str) -> np.ndarray:
        column = self._decoded(name)
        kind = column.type
        if pa.types.is_date(kind):
            column, kind = pc.cast(column, pa.timestamp("us")), pa.timestamp("us")
        if not pa.types.is_timestamp(kind):
            return _epoch_microseconds(column.to_pandas())  # text and the like: parsed as pandas would
        # A zoned timestamp holds UTC instants already; a naive one is read as UTC. Sub-microsecond
        # digits are cut, as pandas' conversion cuts them.
        micros = pc.cast(pc.cast(column, pa.timestamp("us", kind.tz), safe=False), pa.int64())
        return np.asarray(pc.cast(micros, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


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
        inputs: raw column -> kind (NUMERIC, BOOLEAN, STRING or TIMESTAMP), in a fixed order.
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
    # The feature spec (lakescore.specs.FittedSpec) this set was compiled from; None for the
    # numeric pass-through. It goes into the bundle so scoring needs nothing else.
    fitted: "FittedSpec | None" = field(default=None, compare=False, repr=False)

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
        out = {"name": self.name, "inputs": dict(self.inputs), "features": list(self.features)}
        return out if self.fitted is None else {**out, **self.fitted.to_json()}


def _epoch_microseconds(series: pd.Series) -> np.ndarray:
    """Timestamps (zoned, naive as UTC, dates, or text pandas parses) -> float64 us since the epoch, NaN for null."""
    if not pd.api.types.is_datetime64_any_dtype(series):
        series = pd.to_datetime(series, errors="coerce", utc=True)
    if series.dt.tz is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    values = series.to_numpy(dtype="datetime64[us]")
    out = values.astype(np.int64).astype(np.float64)
    out[np.isnat(values)] = np.nan
    return out


def _as_float(series: pd.Series) -> np.ndarray:
    """Numeric or boolean column -> float64 with NaN for null; strings become NaN."""
    values = pd.to_numeric(series, errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


@lru_cache(maxsize=16)
def _circle_table(period: int) -> tuple[np.ndarray, np.ndarray]:
    whole = np.arange(period, dtype=np.float64)
    return np.sin(2.0 * np.pi * whole / float(period)), np.cos(2.0 * np.pi * whole / float(period))


def _circle(values: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of `values` on a circle of length `period` (24 for hours of the day). Whole
    values 0..period-1 (the usual hour column) are looked up in a table computed by the very same
    expression, so the values are identical and ten times cheaper than sin/cos per row; anything
    else (fractions, NaN) is computed."""
    if float(period).is_integer() and 0 < period <= 1024 and len(values) and np.isfinite(values).all():
        whole = values.astype(np.int64)
        if whole.min() >= 0 and whole.max() < period and np.array_equal(whole, values):
            sin, cos = _circle_table(int(period))
            return sin[whole], cos[whole]
    angle = 2.0 * np.pi * values / float(period)
    return np.sin(angle), np.cos(angle)


def _hour_circle(hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of the hour on the 24-hour circle (see `_circle`)."""
    return _circle(hour, 24)


def _log1p_of_positive(values: np.ndarray) -> np.ndarray:
    """log(1 + max(v, 0)); NaN stays NaN."""
    return np.log1p(np.maximum(values, 0.0))


def __getattr__(name: str) -> Any:
    # TRANSACTIONS_V1 is the builtin spec lakescore/specs/transactions_v1.toml, compiled on first
    # use: lakescore.specs builds on this module, so it cannot be built at import time here.
    if name == "TRANSACTIONS_V1":
        from lakescore.specs import builtin_spec

        value = builtin_spec("transactions_v1").fit().feature_set()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from lakescore import schemas as S

    transactions = __getattr__("TRANSACTIONS_V1")
    if all(c in columns for c in transactions.inputs):
        return transactions
    excluded = {S.RECORD_ID, S.IS_ANOMALY, S.ANOMALY_TYPE, S.EVENT_DATE, S.TRANSACTION_ID, S.ACCOUNT_ID}
    numeric = [c for c in columns if c not in excluded]
    if not numeric:
        raise ValueError(f"table {table} has no feature columns besides keys and labels")
    return numeric_feature_set(numeric)


# The builtin specs training picks for a table without one of its own, first match wins.
BUILTIN_TABLE_SPECS = ("transactions_v1", "shuttle_v1", "breast_cancer_v1")


def builtin_spec_for_table(types: Mapping[str, str]):
    """The builtin feature spec (`lakescore.specs.SourceSpec`) that fits a table with these column
    types (name -> Spark simpleString), or None: the first of BUILTIN_TABLE_SPECS whose every
    column the table has, of a fitting type."""
    from lakescore.specs import SpecError, builtin_spec

    for name in BUILTIN_TABLE_SPECS:
        spec = builtin_spec(name)
        try:
            spec.check_schema(types, "table")
        except SpecError:
            continue
        return spec
    return None


def feature_set_from_manifest(spec: Mapping) -> FeatureSet:
    """Rebuild the feature set a bundle was trained with from its manifest entry: from the feature
    spec it carries, or (bundles written before specs) from its name."""
    from lakescore.specs import FittedSpec, SpecError

    name = spec["name"]
    transactions = __getattr__("TRANSACTIONS_V1")
    if "spec" in spec:
        try:
            fitted = FittedSpec.from_json(spec, f"the bundle's feature set {name}")
            built = transactions if fitted == transactions.fitted else fitted.feature_set()
        except SpecError as exc:
            raise ValueError(f"{exc} (or retrain the model with this version of lakescore)") from None
    elif name == transactions.name:
        built = transactions
    elif name == NUMERIC_PASSTHROUGH:
        return numeric_feature_set(spec["features"])
    else:
        raise ValueError(
            f"bundle uses feature set {name!r} without a feature spec, which this version of lakescore does not know "
            f"(known: {transactions.name}, {NUMERIC_PASSTHROUGH}); upgrade lakescore or retrain"
        )
    if tuple(spec["features"]) != built.features:
        raise ValueError(
            f"bundle lists features {list(spec['features'])} for {name}, but its feature spec builds "
            f"{list(built.features)}; retrain the model with this version of lakescore"
        )
    return built
