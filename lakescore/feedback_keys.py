"""Which column names a record for analyst feedback: the same on the Spark and the Ray side."""

from __future__ import annotations

import hashlib
import hmac
from typing import Sequence

from lakescore import schemas as S

# The first of these a table has is its record key (a unique id per row).
RECORD_KEY_COLUMNS = (S.TRANSACTION_ID, S.RECORD_ID)


def record_key_column(columns: Sequence[str]) -> str | None:
    return next((c for c in RECORD_KEY_COLUMNS if c in columns), None)


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
