"""What the scoring UDF returns, in Spark's and Arrow's types, and a `ScoredBatch` encoded in them.

The one udfs module that speaks Spark's type system: `udfs.scorer` stays numpy/torch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_type

from lakescore import schemas as S
from udfs.scorer import ScoredBatch

# What the scoring UDF returns, in Spark's terms and (derived, so the two cannot differ) Arrow's.
SCORED_TYPE = T.StructType(
    [
        # Nullable as Arrow batches carry them; the values are never null.
        T.StructField(S.SCORE, T.DoubleType(), True),
        T.StructField(S.IS_FLAGGED, T.BooleanType(), True),
        T.StructField(S.REASONS, S.REASONS_TYPE, True),
    ]
)
SCORED_ARROW_TYPE = to_arrow_type(SCORED_TYPE)
_REASONS_ARROW_TYPE = SCORED_ARROW_TYPE.field(S.REASONS).type  # list<struct<feature, contribution, value>>
# What the UDF returns when only flagged rows are wanted: `struct<score, reasons>` for a flagged
# row, null for every other row (the flag is "not null").
FLAGGED_TYPE = T.StructType([SCORED_TYPE[S.SCORE], SCORED_TYPE[S.REASONS]])
FLAGGED_ARROW_TYPE = to_arrow_type(FLAGGED_TYPE)


def to_arrow(batch: ScoredBatch) -> pa.StructArray:
    """`batch` as Arrow `SCORED_ARROW_TYPE` (`struct<score, is_flagged, reasons>` for every row,
    reasons null where not flagged), built from the arrays (no Python objects per row)."""
    scores, flags = pa.array(batch.scores, type=pa.float64()), pa.array(batch.flagged, type=pa.bool_())
    return pa.StructArray.from_arrays(
        [scores, flags, _reasons_arrow(batch, _not_flagged(batch))], fields=list(SCORED_ARROW_TYPE)
    )


def to_arrow_flagged(batch: ScoredBatch) -> pa.StructArray:
    """`batch` as Arrow `FLAGGED_ARROW_TYPE`: `struct<score, reasons>` where a row is flagged,
    null where it is not."""
    not_flagged = _not_flagged(batch)
    return pa.StructArray.from_arrays(
        [pa.array(batch.scores, type=pa.float64()), _reasons_arrow(batch, not_flagged)],
        fields=list(FLAGGED_ARROW_TYPE),
        mask=not_flagged,
    )


def _not_flagged(batch: ScoredBatch) -> pa.BooleanArray | None:
    """The null mask of the rows not flagged (None when every row is)."""
    return pa.array(~batch.flagged) if len(batch.explained) < len(batch.scores) else None


def _reasons_arrow(batch: ScoredBatch, not_flagged: pa.BooleanArray | None) -> pa.ListArray:
    """`list<struct<feature, contribution, value>>` per row: k reasons where flagged, null elsewhere."""
    n = len(batch.scores)
    k = batch.reason_features.shape[1]
    names = pa.array(batch.feature_names, type=pa.string())
    reason = pa.StructArray.from_arrays(
        [
            names.take(pa.array(batch.reason_features.ravel(), type=pa.int64())),
            pa.array(batch.reason_contributions.ravel(), type=pa.float64()),
            pa.array(batch.reason_values.ravel(), type=pa.float64(), from_pandas=True),  # NaN -> null
        ],
        fields=list(_REASONS_ARROW_TYPE.value_type),
    )
    per_row = np.zeros(n, dtype=np.int32)
    per_row[batch.explained] = k
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(per_row, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), reason, type=_REASONS_ARROW_TYPE, mask=not_flagged)
