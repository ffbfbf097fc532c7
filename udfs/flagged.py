"""Shaping scored rows into `flagged` records: keys, allow-listed columns, score and provenance.

A pure DataFrame transformation (no I/O). Which source columns reach `flagged` is decided here
and nowhere else: the keys (the bundle's feature spec's `keys`, or settings.score.key_columns),
the allow-list (settings.score.allow_columns), and of those the sensitive ones (the spec's
`sensitive` plus settings.score.sensitive_columns) hashed or dropped. Nothing else of the source
row leaves the source table.

Source column names may hold spaces, dots or mixed case (`Temp C`): every reference to one goes
through `source_column` / `quoted`, never a bare `F.col(name)` (a dot would read as a struct field).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakescore import schemas as S
from lakescore.config import ScoreSettings
from lakescore.feedback import record_key_expression
from lakescore.feedback_keys import keyed_hash
from lakescore.feedback_keys import record_key_column as feedback_record_key
from udfs.metrics import RunIdentity

log = logging.getLogger(__name__)

# Columns that identify a source row, in output order, for bundles without a feature spec (the
# synthetic and benchmark tables' keys); a spec names its own `keys`.
KEY_CANDIDATES = (S.TRANSACTION_ID, S.ACCOUNT_ID, S.EVENT_TS, S.EVENT_DATE, S.RECORD_ID)
HASH = S.SENSITIVE_HASH
DROP = S.SENSITIVE_DROP


@dataclass(frozen=True)
class OutputColumns:
    """Source columns copied into `flagged`, and how."""

    keys: tuple[str, ...]
    allowed: tuple[str, ...]  # allow-listed, not keys
    hashed: tuple[str, ...]  # of keys + allowed: replaced by keyed_hash(salt, value)
    salt: str  # the secret key of keyed_hash (settings.score.hash_key)
    # The keys `flagged.record_key` is made of; empty: chosen as before specs (`record_key_columns`).
    record_keys: tuple[str, ...] = ()

    @property
    def copied(self) -> tuple[str, ...]:
        return self.keys + self.allowed


def quoted(name: str) -> str:
    """`name` as a Spark SQL identifier: in backticks (a backtick inside doubled), so that spaces,
    dots and mixed case read as one column name."""
    return "`" + name.replace("`", "``") + "`"


def source_column(name: str) -> Column:
    """The source column `name` (`F.col` would read `a.b` as field b of struct a)."""
    return F.col(quoted(name))


def choose_output_columns(
    columns: Sequence[str],
    score: ScoreSettings,
    where: str,
    *,
    keys: Sequence[str] | None = None,
    sensitive: Sequence[str] = (),
) -> OutputColumns:
    """Decide the keys and allow-listed columns of `flagged` for a source with `columns`.

    Args:
        keys: the bundle's feature spec's `keys`; None (a bundle without a spec, or a spec without
            keys): whichever of `KEY_CANDIDATES` the source has. score.key_columns overrides both.
        sensitive: the spec's sensitive columns; score.sensitive_columns are added to them.

    Raises ValueError if the key columns are missing, or if the source has none of the known
    keys and none are named. Allow-listed columns the source lacks are skipped with a warning
    (an allow-list can only let less through).
    """
    present = set(columns)
    named, by = (score.key_columns, "score.key_columns") if score.key_columns else (keys, "the feature spec's keys")
    if named:
        missing = [c for c in named if c not in present]
        if missing:
            raise ValueError(
                f"{where} lacks key column(s) {', '.join(missing)} named in {by}; "
                f"its columns are: {', '.join(columns)}. Fix {by}"
            )
        keys = tuple(named)
        record_keys = keys
    else:
        keys = tuple(c for c in KEY_CANDIDATES if c in present)
        record_keys = ()
        if not keys:
            raise ValueError(
                f"{where} has none of the known key columns ({', '.join(KEY_CANDIDATES)}); "
                "name the columns that identify a row in the feature spec's `keys` or in score.key_columns"
            )
    absent = [c for c in score.allow_columns if c not in present]
    if absent:
        log.warning("%s lacks allow-listed column(s) %s; they are left out of flagged", where, ", ".join(absent))
    allowed = tuple(c for c in score.allow_columns if c in present and c not in keys)
    sensitive = set(sensitive) | set(score.sensitive_columns)
    if score.sensitive_action == DROP:
        keys = tuple(c for c in keys if c not in sensitive)
        allowed = tuple(c for c in allowed if c not in sensitive)
        record_keys = tuple(c for c in record_keys if c not in sensitive)
        if not keys:
            raise ValueError(
                f"score.sensitive_action=drop would drop every key column of {where}; hash them instead "
                "(score.sensitive_action=hash) or name other keys in score.key_columns"
            )
        hashed: tuple[str, ...] = ()
    else:
        hashed = tuple(c for c in keys + allowed if c in sensitive)
    return OutputColumns(keys=keys, allowed=allowed, hashed=hashed, salt=score.hash_key, record_keys=record_keys)


def scan_columns(
    output: OutputColumns, inputs: Sequence[str], schema: T.StructType, date_column: str | None
) -> tuple[list[str], str | None]:
    """(the source columns a run reads, in order; the copied column `flagged_records` fills with
    the run date instead of reading it, or None).

    `inputs`: the model's input columns. `date_column`: the column a dated run selects its date
    on, None for an undated run. Every row of a dated run holds the run date there, so when it
    is a date and not a model input it is not read at all: carried through the scoring stage, a
    date partition column cost the JVM more than four key and text columns together (see
    docs/measurements.md, "Scoring worker and UDF"). A date held as text or a timestamp is
    read: the run date would not reproduce its values.
    """
    run_date_column = None
    if date_column is not None and date_column not in inputs and date_column in output.copied:
        if isinstance(schema[date_column].dataType, T.DateType):
            run_date_column = date_column
    columns = [c for c in dict.fromkeys([*output.copied, *inputs]) if c != run_date_column]
    return columns, run_date_column


def hash_column(column: Column, key: str) -> Column:
    """`keyed_hash(key, value-as-string)` of each value; NULL stays NULL.

    Spark has no HMAC, so this is a pandas UDF: use it on the few flagged rows, not on a whole
    table. The key travels to the executors inside the UDF, as the model's bytes do.
    """
    keyed_hash(key, "")  # an empty key fails here, on the driver, before any task starts

    @F.pandas_udf(T.StringType())
    def hmac_sha256(values: pd.Series) -> pd.Series:
        return values.map(lambda v: None if v is None else keyed_hash(key, v))

    return hmac_sha256(column.cast("string"))


def flagged_records(
    scored: DataFrame,
    output: OutputColumns,
    runs: RunIdentity | Sequence[RunIdentity],
    scored_at: dt.datetime,
    run_date_column: str | None = None,
) -> DataFrame:
    """Flagged rows as `flagged` records (`S.FLAGGED_SCHEMA`).

    `scored`: only the flagged rows, with `score` and `reasons`: what
    `udfs.scoring.score_dataframe(..., flagged_only=True)` returns for one run, or what
    `udfs.scoring.score_models_dataframe` returns for several runs over the same rows (a primary
    model and its shadows), whose `S.MODEL_INDEX` column says which of `runs` a row belongs to.

    Columns: record_key, record, score, threshold, reasons, model_name, model_version,
    model_sha256, scoring_role, source_table, run_id, run_date, scored_at. `record` maps each
    copied source column (keys, then allowed columns; sensitive ones hashed) to its value as text
    (see `record_text`); `record_key` is the row's key as one string (see `record_key_columns`).
    Every source has the same columns: `flagged_view_sql` gives a source its typed view.

    `run_date_column`: a copied column that holds the run date in every row of `scored` (the
    source's date column, when a run scores one date of it). It is filled from the run's values
    instead of being read: `scored` need not carry it (see pipelines.nightly).
    """
    runs = [runs] if isinstance(runs, RunIdentity) else list(runs)
    several = S.MODEL_INDEX in scored.columns
    if not several and len(runs) != 1:
        raise ValueError(f"{len(runs)} runs for rows scored by one model; score them with score_models_dataframe")
    hashed = set(output.hashed)
    scanned = [c for c in output.copied if c != run_date_column]
    types = {f.name: f.dataType for f in scored.schema.fields}
    # The run's values come from a broadcast table of one row per run, not from literals in the
    # projection of the flagged rows: Spark's generated code spells a date, timestamp or number
    # literal out in its source, so a new scored_at made the scoring stage's code new on every
    # run (and on every date of a --from/--to range), to be compiled and warmed up again while
    # the stage ran (see docs/measurements.md, "Scoring worker and UDF"). Joined, they are data,
    # and the stage's code is the same from run to run. (A one-row range with literal columns
    # would not do: the optimizer propagates them through the join.)
    provenance = scored.sparkSession.createDataFrame(
        [
            (i, r.threshold, r.model_name, r.model_version, r.model_sha256, r.scoring_role, r.source, r.run_id, r.run_date, scored_at)
            for i, r in enumerate(runs)
        ],
        _PROVENANCE_SCHEMA,
    )

    def copied(name: str) -> Column:
        if name == run_date_column:
            value = F.col(S.RUN_DATE).cast("string")
        else:
            value = record_text(source_column(name), types[name])
        return hash_column(value, output.salt) if name in hashed else value

    rows = scored.select(*[source_column(c) for c in scanned], F.col(S.SCORE), F.col(S.REASONS), *([F.col(S.MODEL_INDEX)] if several else []))
    joined = (
        rows.join(F.broadcast(provenance), S.MODEL_INDEX)
        if several
        else rows.crossJoin(F.broadcast(provenance.drop(S.MODEL_INDEX)))
    )
    def key_text(name: str) -> Column:
        # lakescore.feedback_keys' rule: the value as Spark casts it to string (not record_text:
        # the Ray side builds the same text from pandas values for analysts' verdicts).
        value = (F.col(S.RUN_DATE) if name == run_date_column else source_column(name)).cast("string")
        return hash_column(value, output.salt) if name in hashed else value

    record_key = record_key_expression([key_text(c) for c in record_key_columns(output)])
    return joined.select(
        record_key.alias(S.RECORD_KEY),
        F.create_map(*[x for c in output.copied for x in (F.lit(c), copied(c))]).alias(S.RECORD),
        *[f for f in S.FLAGGED_SCHEMA.names if f not in (S.RECORD_KEY, S.RECORD)],
    )


def record_key_columns(output: OutputColumns) -> tuple[str, ...]:
    """The copied columns `flagged.record_key` is made of (joined by the rule of
    `lakescore.feedback_keys`): the spec's (or score.key_columns') keys; without either, the
    source's record key column (`transaction_id`, `record_id`) when it is one of the keys, else
    every key column."""
    if output.record_keys:
        return output.record_keys
    single = feedback_record_key(output.keys)
    return (single,) if single is not None else output.keys


def record_text(column: Column, data_type: T.DataType) -> Column:
    """`column` as the text `flagged.record` keeps: a timestamp in ISO 8601 with its offset (it
    reads back as the same instant in any session time zone), a nested value as JSON, anything
    else as Spark casts it to string (which casts back to the same value)."""
    if isinstance(data_type, T.TimestampType):
        return F.date_format(column, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
    if isinstance(data_type, (T.ArrayType, T.MapType, T.StructType)):
        return F.to_json(column)
    return column.cast("string")


def typed_value_sql(expression: str, data_type: T.DataType) -> str:
    """The SQL that reads a `record_text` value back as `data_type`."""
    if isinstance(data_type, (T.ArrayType, T.MapType, T.StructType)):
        return f"from_json({expression}, '{data_type.simpleString()}')"
    if isinstance(data_type, T.StringType):
        return expression
    return f"CAST({expression} AS {data_type.simpleString()})"


def source_view_name(source_table: str) -> str:
    """`flagged_<short name>`: the typed view of one source's flagged rows, named after the last
    part of its table name or path (`lakescore.transactions` -> `flagged_transactions`)."""
    short = re.split(r"[./]", source_table.rstrip("/"))[-1].lower()
    return "flagged_" + (re.sub(r"[^a-z0-9_]", "_", short) or "source")


def sql_string(value: str) -> str:
    """`value` as a Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flagged_view_sql(
    view: str, flagged_table: str, source_table: str, output: OutputColumns, schema: T.StructType
) -> str:
    """`CREATE OR REPLACE VIEW` of `source_table`'s rows of `flagged_table`: its copied columns
    read back from `record` as named columns of the source's types (hashed ones as the hash's
    text), then flagged's own columns.

    `schema`: the source's schema (the types of the copied columns).
    """
    hashed = set(output.hashed)
    copied = [
        f"{typed_value_sql(f'{S.RECORD}[{sql_string(c)}]', T.StringType() if c in hashed else schema[c].dataType)} AS {quoted(c)}"
        for c in output.copied
    ]
    common = [f"`{c}`" for c in S.FLAGGED_SCHEMA.names if c != S.RECORD]
    return (
        f"CREATE OR REPLACE VIEW {view} AS SELECT {', '.join(copied + common)} "
        f"FROM {flagged_table} WHERE {S.SOURCE_TABLE} = {sql_string(source_table)}"
    )


_PROVENANCE_SCHEMA = T.StructType(
    [
        T.StructField(S.MODEL_INDEX, T.IntegerType(), False),
        T.StructField(S.THRESHOLD, T.DoubleType(), False),
        T.StructField(S.MODEL_NAME, T.StringType(), False),
        T.StructField(S.MODEL_VERSION, T.IntegerType(), False),
        T.StructField(S.MODEL_SHA256, T.StringType(), False),
        T.StructField(S.SCORING_ROLE, T.StringType(), False),
        T.StructField(S.SOURCE_TABLE, T.StringType(), False),
        T.StructField(S.RUN_ID, T.StringType(), False),
        T.StructField(S.RUN_DATE, T.DateType(), False),
        T.StructField(S.SCORED_AT, T.TimestampType(), False),
    ]
)
