"""Which column names a record for analyst feedback: the same on the Spark and the Ray side."""

from __future__ import annotations

from typing import Sequence

from lakescore import schemas as S

# The first of these a table has is its record key (a unique id per row).
RECORD_KEY_COLUMNS = (S.TRANSACTION_ID, S.RECORD_ID)


def record_key_column(columns: Sequence[str]) -> str | None:
    return next((c for c in RECORD_KEY_COLUMNS if c in columns), None)
