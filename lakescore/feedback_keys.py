"""Which column names a record for analyst feedback, and its key as text: the same on the Spark and
the Ray side.

A record key is the text analysts' verdicts (`label_overrides`, {record key: is_anomaly}) and the
`flagged` table name a source row by, built from the feature spec's `keys`:

- one key column: its value cast to string as Spark casts it (`CAST(k AS STRING)`: integers in
  decimal without a fraction, strings as they are, dates as `yyyy-MM-dd`);
- several key columns: each cast to string as above, joined with `|` in the spec's order, i.e.
  Spark's `concat_ws('|', CAST(k1 AS STRING), CAST(k2 AS STRING), ...)`. Key values are never null
  (`SourceSpec.check_sample` refuses null keys), so no part is skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Sequence

import numpy as np
import pandas as pd

from lakescore import schemas as S

# Tables without a feature spec (bundles from before specs): the first of these a table has is
# its record key (a unique id per row).
RECORD_KEY_COLUMNS = (S.TRANSACTION_ID, S.RECORD_ID)
KEY_SEPARATOR = "|"


def verdict_key_columns(keys: Sequence[str], sensitive: Sequence[str], action: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the columns of the record key `flagged` writes for a spec's `keys`, those of them hashed)
    when the `sensitive` columns are hashed (action `hash`) or dropped (`drop`), as
    udfs.flagged.choose_output_columns decides: analysts copy verdict keys from `flagged`, so
    training must build the same text to find their rows."""
    if action == S.SENSITIVE_DROP:
        return tuple(k for k in keys if k not in sensitive), ()
    return tuple(keys), tuple(k for k in keys if k in sensitive)


def record_key_column(columns: Sequence[str]) -> str | None:
    return next((c for c in RECORD_KEY_COLUMNS if c in columns), None)


def record_keys(rows: pd.DataFrame, keys: Sequence[str], *, hashed: Sequence[str] = (), hash_key: str = "") -> pd.Series:
    """The record key of every row of `rows` as text (the module docstring gives the rule).

    `hashed`: key columns whose text is replaced by `keyed_hash(hash_key, text)` before joining,
    as `flagged` writes a sensitive key (see `verdict_key_columns`), so that verdicts copied from
    `flagged` name the same rows here. Raises ValueError when `keys` is empty or names a column
    `rows` lacks, or when a column is hashed under an empty key."""
    if not keys:
        raise ValueError("a record key needs at least one key column; list the table's key column(s) in the spec's `keys`")
    missing = [k for k in keys if k not in rows.columns]
    if missing:
        raise ValueError(f"key column(s) {missing} are not among the rows' columns {list(rows.columns)}")
    if hashed:
        keyed_hash(hash_key, "")  # an empty key fails before any row is hashed
    parts = [
        _as_spark_string(rows[k]).map(lambda v: None if v is None else keyed_hash(hash_key, v)) if k in hashed
        else _as_spark_string(rows[k])
        for k in keys
    ]
    out = parts[0]
    for part in parts[1:]:
        out = out + KEY_SEPARATOR + part
    return out.rename(None)


def _as_spark_string(values: pd.Series) -> pd.Series:
    """Values as Spark's CAST(... AS STRING) writes them; a null stays null."""
    if pd.api.types.is_bool_dtype(values):
        return values.map(lambda v: None if pd.isna(v) else ("true" if v else "false"), na_action=None).astype(object)
    if pd.api.types.is_integer_dtype(values):
        return values.astype("Int64").astype(str).where(values.notna(), None).astype(object)
    if pd.api.types.is_float_dtype(values):
        # An integer column read with nulls arrives as float: 12.0 -> "12", as its integer type casts.
        return values.map(_number_text).astype(object)
    return values.map(_value_text).astype(object)


def _number_text(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _value_text(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
        return None
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _number_text(float(v))
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def keyed_hash(key: str, value: str) -> str:
    """HMAC-SHA256 of `value` under the secret `key`, as hex: what replaces a sensitive value in
    `flagged` (udfs.flagged.hash_column), and the one function any other side (feedback keys,
    training's join of verdicts) must use so that hashed keys join. Raises ValueError for an
    empty key: a hash anyone can recompute hides nothing."""
    if not key:
        raise ValueError(
            "the hash key is empty; set LAKESCORE_HASH_KEY (or score.hash_key_file) to a secret kept across nights"
        )
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
