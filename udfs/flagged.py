"""Shaping scored rows into `flagged` records: keys, allow-listed columns, score and provenance.

A pure DataFrame transformation (no I/O). Which source columns reach `flagged` is decided here
and nowhere else: the keys, the allow-list (settings.score.allow_columns), and of those the
sensitive ones hashed or dropped. Nothing else of the source row leaves the source table.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakescore import schemas as S
from lakescore.config import ScoreSettings
from udfs.metrics import RunIdentity

log = logging.getLogger(__name__)

# Columns that identify a source row, in output order (the synthetic and benchmark tables' keys).
KEY_CANDIDATES = (S.TRANSACTION_ID, S.ACCOUNT_ID, S.EVENT_TS, S.EVENT_DATE, S.RECORD_ID)
HASH = S.SENSITIVE_HASH
DROP = S.SENSITIVE_DROP


@dataclass(frozen=True)
class OutputColumns:
    """Source columns copied into `flagged`, and how."""

    keys: tuple[str, ...]
    allowed: tuple[str, ...]  # allow-listed, not keys
    hashed: tuple[str, ...]  # of keys + allowed: replaced by sha256(salt || value)
    salt: str

    @property
    def copied(self) -> tuple[str, ...]:
        return self.keys + self.allowed


def choose_output_columns(columns: Sequence[str], score: ScoreSettings, where: str) -> OutputColumns:
    """Decide the keys and allow-listed columns of `flagged` for a source with `columns`.

    Raises ValueError if configured key columns are missing, or if the source has none of the
    known keys and none are configured. Allow-listed columns the source lacks are skipped with
    a warning (an allow-list can only let less through).
    """
    present = set(columns)
    if score.key_columns:
        missing = [c for c in score.key_columns if c not in present]
        if missing:
            raise ValueError(
                f"{where} lacks key column(s) {', '.join(missing)} named in score.key_columns; "
                f"its columns are: {', '.join(columns)}. Fix score.key_columns"
            )
        keys = tuple(score.key_columns)
    else:
        keys = tuple(c for c in KEY_CANDIDATES if c in present)
        if not keys:
            raise ValueError(
                f"{where} has none of the known key columns ({', '.join(KEY_CANDIDATES)}); "
                "name the columns that identify a row in score.key_columns"
            )
    absent = [c for c in score.allow_columns if c not in present]
    if absent:
        log.warning("%s lacks allow-listed column(s) %s; they are left out of flagged", where, ", ".join(absent))
    allowed = tuple(c for c in score.allow_columns if c in present and c not in keys)
    sensitive = set(score.sensitive_columns)
    if score.sensitive_action == DROP:
        keys = tuple(c for c in keys if c not in sensitive)
        allowed = tuple(c for c in allowed if c not in sensitive)
        if not keys:
            raise ValueError(
                f"score.sensitive_action=drop would drop every key column of {where}; hash them instead "
                "(score.sensitive_action=hash) or name other keys in score.key_columns"
            )
        hashed: tuple[str, ...] = ()
    else:
        hashed = tuple(c for c in keys + allowed if c in sensitive)
    return OutputColumns(keys=keys, allowed=allowed, hashed=hashed, salt=score.hash_salt)


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


def hash_column(column: Column, salt: str) -> Column:
    """sha256 hex of salt || value-as-string; NULL stays NULL."""
    return F.sha2(F.concat(F.lit(salt), column.cast("string")), 256)


def flagged_records(
    scored: DataFrame,
    output: OutputColumns,
    run: RunIdentity,
    scored_at: dt.datetime,
    run_date_column: str | None = None,
) -> DataFrame:
    """Flagged rows as `flagged` records.

    `scored`: only the flagged rows, with `score` and `reasons` (what
    `udfs.scoring.score_dataframe(..., flagged_only=True)` returns; it does the filtering).

    Columns: keys, allowed columns (sensitive ones hashed), score, threshold, reasons,
    model_name, model_version, model_sha256, source_table, run_id, run_date, scored_at.

    `run_date_column`: a copied column that holds the run date in every row of `scored` (the
    source's date column, when a run scores one date of it). It is filled from the run's values
    instead of being read: `scored` need not carry it (see pipelines.nightly).
    """
    hashed = set(output.hashed)
    scanned = [c for c in output.copied if c != run_date_column]
    # The run's values come from a broadcast one-row table, not from literals in the projection
    # of the flagged rows: Spark's generated code spells a date, timestamp or number literal out
    # in its source, so a new scored_at made the scoring stage's code new on every run (and on
    # every date of a --from/--to range), to be compiled and warmed up again while the stage ran
    # (see docs/measurements.md, "Scoring worker and UDF"). Joined, they are data, and the
    # stage's code is the same from run to run. (A one-row range with literal columns would not
    # do: the optimizer propagates them through the join.)
    provenance = scored.sparkSession.createDataFrame(
        [(run.threshold, run.model_name, run.model_version, run.model_sha256, run.source, run.run_id, run.run_date, scored_at)],
        _PROVENANCE_SCHEMA,
    )

    def copied(name: str) -> Column:
        value = F.col(S.RUN_DATE) if name == run_date_column else F.col(name)
        return (hash_column(value, output.salt) if name in hashed else value).alias(name)

    return (
        scored.select(*scanned, F.col(S.SCORE), F.col(S.REASONS))
        .crossJoin(F.broadcast(provenance))
        # flagged's column order: the threshold beside the score, the other run values last.
        .select(
            *[copied(c) for c in output.copied],
            S.SCORE,
            S.THRESHOLD,
            S.REASONS,
            *[f for f in _PROVENANCE_SCHEMA.names if f != S.THRESHOLD],
        )
    )


_PROVENANCE_SCHEMA = T.StructType(
    [
        T.StructField(S.THRESHOLD, T.DoubleType(), False),
        T.StructField(S.MODEL_NAME, T.StringType(), False),
        T.StructField(S.MODEL_VERSION, T.IntegerType(), False),
        T.StructField(S.MODEL_SHA256, T.StringType(), False),
        T.StructField(S.SOURCE_TABLE, T.StringType(), False),
        T.StructField(S.RUN_ID, T.StringType(), False),
        T.StructField(S.RUN_DATE, T.DateType(), False),
        T.StructField(S.SCORED_AT, T.TimestampType(), False),
    ]
)
