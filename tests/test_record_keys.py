"""One record key rule on both sides: `flagged.record_key` (Spark) and the keys training joins
analysts' verdicts on (`lakescore.feedback_keys.record_keys`, pandas) are the same text."""

import datetime as dt

import pandas as pd
import pytest
from pyspark.sql import types as T

from lakescore import schemas as S
from lakescore.feedback_keys import record_keys
from udfs.flagged import OutputColumns, flagged_records
from udfs.metrics import RunIdentity

RUN = RunIdentity("r1", dt.date(2026, 11, 27), "m", 1, "ab" * 32, "lakescore.t", None, 0.5)

ROWS = pd.DataFrame(
    {
        "reading_id": ["a-1", "Zürich 7", "x|y", "  padded "],
        "site_no": [12, -3, 0, 2**40],
        "day": [dt.date(2026, 1, 2), dt.date(2025, 12, 31), dt.date(2026, 1, 1), dt.date(2026, 2, 28)],
    }
)
SCHEMA = T.StructType(
    [
        T.StructField("reading_id", T.StringType()),
        T.StructField("site_no", T.LongType()),
        T.StructField("day", T.DateType()),
        T.StructField(S.SCORE, T.DoubleType()),
        T.StructField(S.REASONS, S.REASONS_TYPE),
    ]
)


@pytest.mark.parametrize("keys", [("reading_id",), ("site_no",), ("day",), ("site_no", "reading_id"), ("reading_id", "day", "site_no")])
def test_flagged_record_keys_equal_the_keys_training_builds_from_pandas_rows(spark, keys):
    scored = spark.createDataFrame(
        [(*row, 0.9, []) for row in ROWS.itertuples(index=False)], SCHEMA
    )
    output = OutputColumns(keys=keys, allowed=(), hashed=(), salt="")
    flagged = flagged_records(scored, output, RUN, dt.datetime(2026, 11, 28, 2, 0))
    from_spark = [r[S.RECORD_KEY] for r in flagged.collect()]
    assert from_spark == record_keys(ROWS, keys).tolist()
    if len(keys) == 2:
        assert from_spark[0] == "12|a-1"
