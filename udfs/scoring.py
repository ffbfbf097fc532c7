"""The scoring pandas UDF and the DataFrame transformation around it.

    bundle = load_bundle(path)                       # driver: read and verify once
    broadcast = broadcast_bundle(spark, bundle)      # ship the bytes once
    scored = score_dataframe(df, broadcast, top_k=3, observation=obs)
    scored.filter(is_flagged)...write...             # ONE action: scores, flags and metrics

`score_dataframe` does no I/O; the job decides what to write.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from pyspark import Accumulator, Broadcast
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from lakescore import schemas as S
from lakescore.bundle import Bundle, verify_files
from lakescore.features import FeatureSet, feature_set_from_manifest
from udfs.broadcast import load_scoring_model
from udfs.core import score_rows
from udfs.metrics import SCORE_QUANTILES

# Per-batch metric counts (see udfs.core.MetricLayout), set on the last row of each Arrow batch
# and null on every other row; `observed_aggregates` collects the non-null ones.
COUNTS = "_lakescore_counts"
_SCORED = "_lakescore_scored"
COUNTS_DTYPE = "<i8"

SCORED_TYPE = T.StructType(
    [
        # Arrow batches from pandas carry nullable fields; the values are never null.
        T.StructField(S.SCORE, T.DoubleType(), True),
        T.StructField(S.IS_FLAGGED, T.BooleanType(), True),
        T.StructField(S.REASONS, S.REASONS_TYPE, True),
        T.StructField(COUNTS, T.BinaryType(), True),
    ]
)

# percentile_approx's accuracy: rank error at most rows / accuracy (p99.9 stays meaningful).
QUANTILE_ACCURACY = 100_000


def scoring_udf(
    bundle_broadcast: Broadcast,
    *,
    sha256: str,
    top_k: int = 3,
    rows_counter: Accumulator | None = None,
):
    """Return an iterator pandas UDF that scores a struct of raw input columns.

    The UDF takes one struct column holding the feature set's input columns and returns
    `struct<score, is_flagged, reasons, _lakescore_counts>` (see `SCORED_TYPE`): reasons only for
    flagged rows, and the batch's metric counts on its last row.

    Args:
        bundle_broadcast: `udfs.broadcast.broadcast_bundle`'s result.
        sha256: the bundle's sha256 as loaded on the driver (cache key and integrity check).
        top_k: reasons per flagged row.
        rows_counter: optional Spark accumulator; the UDF adds the rows it scores (tests use it
            to prove the model runs once per input row).

    Operational caveats (as for pyspark.ml.functions.predict_batch_udf):
    - the model is built once per Python worker and cached by sha256; this needs
      `spark.python.worker.reuse=true` (lakescore's default), and an idle worker (about a minute)
      is stopped, so its next task builds again;
    - each Python worker holds one copy of the model (one worker per executor core), plus one
      Arrow batch: `spark.sql.execution.arrow.maxRecordsPerBatch` (settings.spark.arrow_batch_size)
      bounds Python memory per task, not the partition size;
    - torch runs one thread per worker (Spark already runs one worker per core), which also keeps
      scores bit-identical when a task is retried;
    - pass only the input columns the model needs: the JVM -> Arrow transfer is the cost, not the model.
    """
    if top_k <= 0:
        raise ValueError(f"top_k={top_k} must be positive")

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scoring = load_scoring_model(bundle_broadcast, sha256)
        for raw in batches:
            batch = score_rows(scoring, raw, top_k=top_k)
            counts = np.full(len(raw), None, dtype=object)
            if len(raw):
                counts[-1] = batch.counts.astype(COUNTS_DTYPE).tobytes()
            if rows_counter is not None:
                rows_counter.add(len(raw))
            yield pd.DataFrame(
                {
                    S.SCORE: batch.scores,
                    S.IS_FLAGGED: batch.flagged,
                    S.REASONS: batch.reasons,
                    COUNTS: counts,
                }
            )

    # Marked nondeterministic so that the optimizer evaluates it exactly once per row: a filter on
    # `is_flagged` would otherwise be pushed below the projection and run the model twice. (The
    # scores themselves are deterministic: a retried task reproduces them bit for bit.)
    return pandas_udf(score, SCORED_TYPE).asNondeterministic()


def bundle_of(bundle_broadcast: Broadcast) -> Bundle:
    """The broadcast bundle, verified (on the driver the broadcast still holds the value)."""
    return verify_files(bundle_broadcast.value, "broadcast bundle")


def check_source_columns(df: DataFrame, feature_set: FeatureSet, where: str) -> None:
    """Raise ValueError naming every missing or mistyped input column of `df` (no Spark job)."""
    feature_set.check_columns({f.name: f.dataType.simpleString() for f in df.schema.fields}, where)


def score_dataframe(
    df: DataFrame,
    bundle_broadcast: Broadcast,
    *,
    top_k: int = 3,
    rows_counter: Accumulator | None = None,
    observation: Observation | None = None,
    where: str = "the source",
) -> DataFrame:
    """Add `score`, `is_flagged`, `reasons` and the per-batch `_lakescore_counts` to `df`.

    Only the feature set's input columns travel to Python; every other column of `df` stays in
    the JVM. With `observation`, the run's metrics (rows read, summed counts, score quantiles)
    are aggregated as the rows flow through whatever single action consumes the result, so the
    model runs exactly once per row: call `read_observed` on it after that action.

    Raises ValueError, naming the columns and the expected types, if `df` lacks or mistypes an
    input column; nothing runs in that case.
    """
    bundle = bundle_of(bundle_broadcast)
    feature_set = feature_set_from_manifest(bundle.manifest["feature_set"])
    check_source_columns(df, feature_set, where)
    udf = scoring_udf(bundle_broadcast, sha256=bundle.sha256, top_k=top_k, rows_counter=rows_counter)
    scored = (
        df.withColumn(_SCORED, udf(F.struct(*[F.col(c) for c in feature_set.inputs])))
        .select(
            *[F.col(c) for c in df.columns],
            *[F.col(f"{_SCORED}.{name}").alias(name) for name in (S.SCORE, S.IS_FLAGGED, S.REASONS, COUNTS)],
        )
    )
    if observation is not None:
        scored = scored.observe(observation, *observed_aggregates())
    return scored


def observed_aggregates() -> list[Column]:
    """The aggregates `score_dataframe` observes: cheap per row, everything else is per batch."""
    probabilities = list(SCORE_QUANTILES.values())
    return [
        F.count(F.lit(1)).alias("rows_read"),
        F.collect_list(COUNTS).alias("counts"),
        F.percentile_approx(S.SCORE, probabilities, QUANTILE_ACCURACY).alias("score_quantiles"),
        F.avg(S.SCORE).alias("score_mean"),
        F.min(S.SCORE).alias("score_min"),
        F.max(S.SCORE).alias("score_max"),
    ]


def sum_counts(parts: Sequence[bytes], size: int) -> np.ndarray:
    """Sum the per-batch count vectors collected by the observation."""
    total = np.zeros(size, dtype=np.int64)
    for part in parts:
        vector = np.frombuffer(part, dtype=COUNTS_DTYPE)
        if vector.shape != (size,):
            raise ValueError(f"a batch reported {vector.size} counts, expected {size}: mixed bundle versions?")
        total += vector
    return total
