"""The scoring UDF (an Arrow UDF: a pandas UDF without the pandas) and the DataFrame transformation around it.

    bundle = load_bundle(path)                              # driver: read and verify once
    broadcast = broadcast_bundle(spark, bundle)             # ship the bytes once
    totals = new_run_totals(spark, bundle)                  # the run's metrics, filled by the UDF
    scored = score_dataframe(df, broadcast, top_k=3, totals=totals, flagged_only=True)
    scored...write...                                       # ONE action: flagged rows, metrics
    metric_records(..., totals.value, ...)

`score_dataframe` does no I/O; the job decides what to write.
"""

from __future__ import annotations

from typing import Iterator, Tuple, Union

import pyarrow as pa
from pyspark import Accumulator, Broadcast
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import arrow_udf

from lakescore import schemas as S
from lakescore.bundle import Bundle, verify_files
from lakescore.features import FeatureSet, feature_set_from_manifest
from udfs.broadcast import load_scoring_model
from udfs.core import FLAGGED_TYPE, SCORED_TYPE, MetricLayout, RunTotals, score_rows
from udfs.metrics import RunTotalsParam

_SCORED = "_lakescore_scored"


def new_run_totals(spark: SparkSession, bundle: Bundle) -> Accumulator:
    """A Spark accumulator of `RunTotals` for one run of `bundle` (pass it to `score_dataframe`)."""
    return spark.sparkContext.accumulator(RunTotals(MetricLayout.from_bundle(bundle).size), RunTotalsParam())


def scoring_udf(
    bundle_broadcast: Broadcast,
    *,
    sha256: str,
    top_k: int = 3,
    totals: Accumulator | None = None,
    flagged_only: bool = False,
    coded: bool = False,
):
    """Return an iterator Arrow UDF that scores raw input columns.

    The UDF takes the feature set's input columns as separate arguments, in the order of
    `FeatureSet.inputs` (see `score_dataframe`), with `coded` the `FeatureSet.categories`
    inputs as their codes (`category_codes`), and returns `struct<score, is_flagged, reasons>`
    (see `SCORED_TYPE`), reasons for flagged rows only. Separate columns, not one struct of
    them: building a struct per row in the JVM and nesting it in Arrow cost about a sixth of
    the whole stage's CPU time here (benchmarks/scoring.py).

    With `flagged_only`, it returns `struct<score, reasons>` (see `FLAGGED_TYPE`) for a flagged
    row and null for every other: the JVM then only checks a null for the ~99% of rows that
    are not flagged, instead of copying a score, a flag and an empty reasons list out of Arrow
    into each row (about a quarter of the JVM's time in the scoring stage, benchmarks/scoring.py).

    It is a pandas UDF without the pandas: `pyspark.sql.functions.arrow_udf` (Spark >= 4.1) runs
    in the same Python workers on the same Arrow batches (`maxRecordsPerBatch`), but hands them
    over as pyarrow arrays. The scoring core reads the columns straight from Arrow and builds the
    result in Arrow; converting each batch to and from pandas cost about a third of Spark's whole
    transfer here (benchmarks/scoring.py), more than the model.

    Args:
        bundle_broadcast: `udfs.broadcast.broadcast_bundle`'s result.
        sha256: the bundle's sha256 as loaded on the driver (cache key and integrity check).
        top_k: reasons per flagged row.
        totals: optional accumulator from `new_run_totals`; the UDF adds every batch's
            `RunTotals` (rows scored, invalid values, histograms, score sum/min/max) to it.
        flagged_only: return flagged rows' results only (null for the others).
        coded: the feature set's category inputs arrive as `category_codes`, not as text.

    Operational caveats (as for pyspark.ml.functions.predict_batch_udf):
    - the model is built once per Python worker and cached by sha256; this needs
      `spark.python.worker.reuse=true` (lakescore's default), and an idle worker (about a minute)
      is stopped, so its next task builds again;
    - each Python worker holds one copy of the model (one worker per executor core), plus one
      Arrow batch: `spark.sql.execution.arrow.maxRecordsPerBatch` (settings.spark.arrow_batch_size)
      bounds Python memory per task, not the partition size;
    - torch runs one thread per worker (Spark already runs one worker per core), which also keeps
      scores bit-identical when a task is retried;
    - once the model is built, the worker's heap is frozen for the garbage collector
      (`udfs.core.freeze_worker_heap`): PySpark collects after every task, and a full pass over
      torch's objects cost about 0.1 s per task;
    - pass only the input columns the model needs: the JVM -> Arrow transfer is the cost, not the model;
    - `totals` counts every evaluation: use the scored DataFrame in ONE action, with no shuffle
      between the scan and that action's output (Spark then merges each partition's update once,
      even when tasks are retried or speculated). A second action would count, and score, twice.
    """
    if top_k <= 0:
        raise ValueError(f"top_k={top_k} must be positive")

    def score(batches: Iterator[Tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        scoring = load_scoring_model(bundle_broadcast, sha256)
        names = list(scoring.feature_set.inputs)
        for columns in batches:
            raw = pa.RecordBatch.from_arrays(_column_list(columns), names=names)  # no copy
            batch = score_rows(scoring, raw, top_k=top_k, coded=coded)
            if totals is not None:
                totals.add(batch.totals)
            yield batch.to_arrow_flagged() if flagged_only else batch.to_arrow()

    # Marked nondeterministic so that the optimizer evaluates it exactly once per row: a filter on
    # `is_flagged` would otherwise be pushed below the projection and run the model twice. (The
    # scores themselves are deterministic: a retried task reproduces them bit for bit.)
    return arrow_udf(score, FLAGGED_TYPE if flagged_only else SCORED_TYPE).asNondeterministic()


def _column_list(columns: Union[pa.Array, Tuple[pa.Array, ...]]) -> list[pa.Array]:
    """An iterator Arrow UDF gets a tuple of arrays per batch, or the array itself for one column."""
    return list(columns) if isinstance(columns, tuple) else [columns]


def category_codes(column: str, categories: tuple[str, ...]) -> Column:
    """`column`'s index in `categories` as an int, -1 for null or a value not listed: the codes
    `RawColumns.codes` gives for the text (exact, case-sensitive match), computed in the JVM.
    Sending a category to the UDF as this int instead of its text cost the JVM about 0.7 fewer
    CPU-seconds per 2M rows here (benchmarks/scoring.py): writing strings into Arrow is slow."""
    position = F.array_position(F.array(*[F.lit(c) for c in categories]), F.col(column))
    return F.coalesce((position - 1).cast("int"), F.lit(-1))


def udf_inputs(feature_set: FeatureSet) -> list[Column]:
    """The scoring UDF's arguments: the feature set's input columns in order, its categories as
    `category_codes` (a `scoring_udf(..., coded=True)` reads them so)."""
    return [
        category_codes(c, feature_set.categories[c]) if c in feature_set.categories else F.col(c)
        for c in feature_set.inputs
    ]


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
    totals: Accumulator | None = None,
    where: str = "the source",
    flagged_only: bool = False,
) -> DataFrame:
    """Add `score`, `is_flagged` and `reasons` to `df`; with `flagged_only`, keep only the
    flagged rows (what the nightly job writes: far cheaper in the JVM, see `scoring_udf`).

    Only the feature set's input columns travel to Python, categories as their int codes
    (`category_codes`); every other column of `df` stays in the JVM. With `totals` (see
    `new_run_totals`), the run's metric totals are gathered as the rows flow through whatever
    single action consumes the result, so the model runs exactly once per row, flagged or not:
    read `totals.value` after that action.

    Raises ValueError, naming the columns and the expected types, if `df` lacks or mistypes an
    input column; nothing runs in that case.
    """
    bundle = bundle_of(bundle_broadcast)
    feature_set = bundle.manifest.feature_set.build()
    check_source_columns(df, feature_set, where)
    udf = scoring_udf(
        bundle_broadcast, sha256=bundle.sha256, top_k=top_k, totals=totals, flagged_only=flagged_only, coded=True
    )
    scored = df.withColumn(_SCORED, udf(*udf_inputs(feature_set)))
    if flagged_only:
        scored = scored.filter(F.col(_SCORED).isNotNull())
        is_flagged = F.lit(True)
    else:
        is_flagged = F.col(f"{_SCORED}.{S.IS_FLAGGED}")
    return scored.select(
        *[F.col(c) for c in df.columns],
        F.col(f"{_SCORED}.{S.SCORE}").alias(S.SCORE),
        is_flagged.alias(S.IS_FLAGGED),
        F.col(f"{_SCORED}.{S.REASONS}").alias(S.REASONS),
    )
