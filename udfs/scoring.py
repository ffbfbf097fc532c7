"""The scoring UDF (an Arrow UDF: a pandas UDF without the pandas) and the DataFrame transformation around it.

    bundle = load_bundle(path)                              # driver: read and verify once
    check_source_columns(df, bundle.feature_set, "source t")  # fail before any work
    model = broadcast_model(spark, bundle)                  # ship the bytes once
    totals = new_run_totals(spark, model)                   # the run's metrics, filled by the UDF
    scored = score_dataframe(df, model, top_k=3, totals=totals, flagged_only=True)
    scored...write...                                       # ONE action: flagged rows, metrics
    metric_records(..., model.layout, totals.value, ...)

`score_dataframe` does no I/O; pipelines.nightly decides what to write.
"""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
from pyspark import Accumulator, Broadcast
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import arrow_udf
from pyspark.sql.pandas.types import to_arrow_type

from lakescore import schemas as S
from lakescore.features import FeatureSet
from udfs.arrow_output import FLAGGED_TYPE, SCORED_TYPE, to_arrow, to_arrow_flagged
from udfs.broadcast import BroadcastModel, load_scoring_model
from udfs.flagged import source_column
from udfs.metrics import RunTotalsParam
from udfs.run_totals import RunTotals
from udfs.scorer import reason_value_mask, score_rows

_SCORED = "_lakescore_scored"
_BY_MODEL = "_lakescore_by_model"


def new_run_totals(spark: SparkSession, model: BroadcastModel) -> Accumulator:
    """A Spark accumulator of `RunTotals` for one run of `model` (pass it to `score_dataframe`)."""
    return spark.sparkContext.accumulator(RunTotals(model.layout.size), RunTotalsParam())


def scoring_udf(
    bundle_broadcast: Broadcast,
    *,
    sha256: str,
    top_k: int = 3,
    totals: Accumulator | None = None,
    flagged_only: bool = False,
    coded: bool = False,
    shown: np.ndarray | None = None,
):
    """Return an iterator Arrow UDF that scores raw input columns.

    The UDF takes the feature set's input columns as separate arguments, in the order of
    `FeatureSet.inputs` (see `score_dataframe`), with `coded` the `FeatureSet.categories`
    inputs as their codes (`category_codes`), and returns `struct<score, is_flagged, reasons>`
    (see `SCORED_TYPE`), reasons for flagged rows only. Separate columns, not one struct of
    them: building a struct per row in the JVM and nesting it in Arrow is costly.

    With `flagged_only`, it returns `struct<score, reasons>` (see `FLAGGED_TYPE`) for a flagged
    row and null for every other: the JVM then only checks a null for the rows that are not
    flagged (nearly all of them), instead of copying a score, a flag and an empty reasons list
    out of Arrow into each row.

    It is a pandas UDF without the pandas: `pyspark.sql.functions.arrow_udf` (Spark >= 4.1) runs
    in the same Python workers on the same Arrow batches (`maxRecordsPerBatch`), but hands them
    over as pyarrow arrays. `udfs.scorer` reads the columns straight from Arrow and
    `udfs.arrow_output` builds the result in Arrow: converting each batch to and from pandas
    cost more than the model. (Figures for all three: see docs/measurements.md, "Scoring worker
    and UDF".)

    Args:
        bundle_broadcast: the bundle's files, `udfs.broadcast.broadcast_model(...).files`.
        sha256: the bundle's sha256 as loaded on the driver (cache key and integrity check).
        top_k: reasons per flagged row.
        totals: optional accumulator from `new_run_totals`; the UDF adds every batch's
            `RunTotals` (rows scored, invalid values, histograms, score sum/min/max) to it.
        flagged_only: return flagged rows' results only (null for the others).
        coded: the feature set's category inputs arrive as `category_codes`, not as text.
        shown: which features' values a reason may show (`udfs.scorer.reason_value_mask`,
            shipped once in the UDF's closure); None: all.

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
      (`udfs.worker.freeze_worker_heap`): PySpark collects after every task, and would walk all
      of torch's objects each time;
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
            batch = score_rows(scoring, raw, top_k=top_k, coded=coded, shown=shown)
            if totals is not None:
                totals.add(batch.totals)
            yield to_arrow_flagged(batch) if flagged_only else to_arrow(batch)

    # Marked nondeterministic so that the optimizer evaluates it exactly once per row: a filter on
    # `is_flagged` would otherwise be pushed below the projection and run the model twice. (The
    # scores themselves are deterministic: a retried task reproduces them bit for bit.)
    return arrow_udf(score, FLAGGED_TYPE if flagged_only else SCORED_TYPE).asNondeterministic()


def models_scoring_udf(
    models: Sequence[BroadcastModel],
    totals: Sequence[Accumulator],
    *,
    inputs: Sequence[str],
    top_k: int = 3,
    coded: bool = False,
    shown: Sequence[np.ndarray | None] | None = None,
):
    """Return an iterator Arrow UDF that scores the same rows with several models (a primary
    model and its shadow challengers) in one pass: the rows are scanned and sent to Python once,
    and each model scores every batch.

    The UDF takes `inputs` (the union of the models' input columns, see `shared_inputs`) as
    separate arguments and returns `struct<m0, m1, ...>`, one `struct<score, reasons>` per model
    (see `models_flagged_type`), each null where that model does not flag the row, and the whole
    struct null where no model flags it (what `score_models_dataframe` filters on). `totals[i]`
    adds up model i's `RunTotals` over every row; `shown[i]` masks model i's reason values (see
    `scoring_udf`).

    Each model is built once per Python worker through the same cache as `scoring_udf` (its
    capacity holds a primary and a shadow); the caveats of `scoring_udf` apply.
    """
    if top_k <= 0:
        raise ValueError(f"top_k={top_k} must be positive")
    if len(models) != len(totals):
        raise ValueError(f"{len(models)} models but {len(totals)} totals; give one accumulator per model")
    shipped = [(m.files, m.sha256) for m in models]
    masks = list(shown) if shown is not None else [None] * len(models)
    result_type = models_flagged_type(len(models))
    names = list(inputs)
    fields = list(to_arrow_type(result_type))

    def score(batches: Iterator[Tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        scorings = [load_scoring_model(files, sha256) for files, sha256 in shipped]
        for columns in batches:
            raw = pa.RecordBatch.from_arrays(_column_list(columns), names=names)  # no copy
            per_model = []
            flagged_by_any = None
            for scoring, model_totals, mask_of_values in zip(scorings, totals, masks):
                batch = score_rows(scoring, raw, top_k=top_k, coded=coded, shown=mask_of_values)
                model_totals.add(batch.totals)
                per_model.append(to_arrow_flagged(batch))
                flagged_by_any = batch.flagged if flagged_by_any is None else flagged_by_any | batch.flagged
            mask = None if flagged_by_any.all() else pa.array(~flagged_by_any)
            yield pa.StructArray.from_arrays(per_model, fields=fields, mask=mask)

    # Nondeterministic for the reason `scoring_udf` gives.
    return arrow_udf(score, result_type).asNondeterministic()


def models_flagged_type(n: int) -> T.StructType:
    """`struct<m0: FLAGGED_TYPE, m1: FLAGGED_TYPE, ...>`: what `models_scoring_udf` returns for n models."""
    return T.StructType([T.StructField(f"m{i}", FLAGGED_TYPE, True) for i in range(n)])


def _column_list(columns: Union[pa.Array, Tuple[pa.Array, ...]]) -> list[pa.Array]:
    """An iterator Arrow UDF gets a tuple of arrays per batch, or the array itself for one column."""
    return list(columns) if isinstance(columns, tuple) else [columns]


def category_codes(column: str, categories: tuple[str, ...]) -> Column:
    """`column`'s index in `categories` as an int, -1 for null or a value not listed: the codes
    `RawColumns.codes` gives for the text (exact, case-sensitive match), computed in the JVM.
    Sending a category to the UDF as this int instead of its text saves the JVM time: writing
    strings into Arrow is slow (see docs/measurements.md, "Scoring worker and UDF")."""
    position = F.array_position(F.array(*[F.lit(c) for c in categories]), source_column(column))
    return F.coalesce((position - 1).cast("int"), F.lit(-1))


def udf_inputs(feature_set: FeatureSet) -> list[Column]:
    """The scoring UDF's arguments: the feature set's input columns in order, its categories as
    `category_codes` (a `scoring_udf(..., coded=True)` reads them so)."""
    return [
        category_codes(c, feature_set.categories[c]) if c in feature_set.categories else source_column(c)
        for c in feature_set.inputs
    ]


def shared_inputs(feature_sets: Sequence[FeatureSet]) -> tuple[list[str], dict[str, tuple[str, ...]] | None]:
    """(the union of the feature sets' input columns, in order of first use; the categories to
    send as codes, or None to send every input as it is in the source).

    Codes are sent only when every model that reads a category column codes it against the same
    vocabulary: a column two models code differently (or one codes and another reads as text)
    goes as text to all of them, which each feature set reads as it would on its own.
    """
    inputs = list(dict.fromkeys(c for fs in feature_sets for c in fs.inputs))
    categories: dict[str, tuple[str, ...]] = {}
    for column in inputs:
        readers = [fs for fs in feature_sets if column in fs.inputs]
        vocabularies = {tuple(fs.categories[column]) if column in fs.categories else None for fs in readers}
        if len(vocabularies) > 1:
            return inputs, None
        (vocabulary,) = vocabularies
        if vocabulary is not None:
            categories[column] = vocabulary
    return inputs, categories


def check_source_columns(df: DataFrame, feature_set: FeatureSet, where: str) -> None:
    """Raise ValueError naming every missing or mistyped input column of `df` (no Spark job)."""
    feature_set.check_columns({f.name: f.dataType.simpleString() for f in df.schema.fields}, where)


def score_dataframe(
    df: DataFrame,
    model: BroadcastModel,
    *,
    top_k: int = 3,
    totals: Accumulator | None = None,
    flagged_only: bool = False,
    sensitive: Sequence[str] = (),
) -> DataFrame:
    """Add `score`, `is_flagged` and `reasons` to `df`; with `flagged_only`, keep only the
    flagged rows (what the nightly job writes: far cheaper in the JVM, see `scoring_udf`).

    `df` must hold the model's input columns: check them once with `check_source_columns`
    before building a plan on them (Spark would otherwise fail deep inside the query).
    Only the feature set's input columns travel to Python, categories as their int codes
    (`category_codes`); every other column of `df` stays in the JVM. With `totals` (see
    `new_run_totals`), the run's metric totals are gathered as the rows flow through whatever
    single action consumes the result, so the model runs exactly once per row, flagged or not:
    read `totals.value` after that action. A reason's value is NULL for a feature that reads a
    `sensitive` column (see `udfs.scorer.reason_value_mask`).
    """
    shown = reason_value_mask(model.feature_set, sensitive) if sensitive else None
    udf = scoring_udf(
        model.files, sha256=model.sha256, top_k=top_k, totals=totals, flagged_only=flagged_only, coded=True,
        shown=shown,
    )
    scored = df.withColumn(_SCORED, udf(*udf_inputs(model.feature_set)))
    if flagged_only:
        scored = scored.filter(F.col(_SCORED).isNotNull())
        is_flagged = F.lit(True)
    else:
        is_flagged = F.col(f"{_SCORED}.{S.IS_FLAGGED}")
    return scored.select(
        *[source_column(c) for c in df.columns],
        F.col(f"{_SCORED}.{S.SCORE}").alias(S.SCORE),
        is_flagged.alias(S.IS_FLAGGED),
        F.col(f"{_SCORED}.{S.REASONS}").alias(S.REASONS),
    )


def score_models_dataframe(
    df: DataFrame,
    models: Sequence[BroadcastModel],
    *,
    totals: Sequence[Accumulator],
    top_k: int = 3,
    sensitive: Sequence[str] = (),
) -> DataFrame:
    """The flagged rows of `df` under each of `models`, scored in ONE pass over the rows: `df`'s
    columns plus `S.MODEL_INDEX` (the model's position in `models`), `score`, `is_flagged` (true)
    and `reasons`, one row per (row, model that flagged it).

    The union of the models' input columns travels to Python once (categories as codes where
    the models agree on them, see `shared_inputs`), every model scores each batch, and only rows
    some model flags come back to the JVM. `totals[i]` (from `new_run_totals(spark, models[i])`)
    gathers model i's totals over every row; as with `score_dataframe`, use the result in one
    action; `sensitive` masks reason values as there. One model gives the rows `score_dataframe(..., flagged_only=True)` gives, with
    `S.MODEL_INDEX` 0: prefer that for one model (it returns them without the per-model struct).
    """
    if not models:
        raise ValueError("no models to score with; give at least one")
    inputs, codes = shared_inputs([m.feature_set for m in models])
    arguments = [
        category_codes(c, codes[c]) if codes and c in codes else source_column(c) for c in inputs
    ]
    shown = [reason_value_mask(m.feature_set, sensitive) for m in models] if sensitive else None
    udf = models_scoring_udf(models, totals, inputs=inputs, top_k=top_k, coded=codes is not None, shown=shown)
    per_model = F.array(
        *[
            F.when(
                F.col(f"{_SCORED}.m{i}").isNotNull(),
                F.struct(
                    F.lit(i).alias(S.MODEL_INDEX),
                    F.col(f"{_SCORED}.m{i}.{S.SCORE}").alias(S.SCORE),
                    F.col(f"{_SCORED}.m{i}.{S.REASONS}").alias(S.REASONS),
                ),
            )
            for i in range(len(models))
        ]
    )
    return (
        df.withColumn(_SCORED, udf(*arguments))
        .filter(F.col(_SCORED).isNotNull())
        # One row per model that flagged the row; the UDF's column is computed once, above.
        .select(*[source_column(c) for c in df.columns], F.explode(F.filter(per_model, lambda m: m.isNotNull())).alias(_BY_MODEL))
        .select(
            *[source_column(c) for c in df.columns],
            F.col(f"{_BY_MODEL}.{S.MODEL_INDEX}").alias(S.MODEL_INDEX),
            F.col(f"{_BY_MODEL}.{S.SCORE}").alias(S.SCORE),
            F.lit(True).alias(S.IS_FLAGGED),
            F.col(f"{_BY_MODEL}.{S.REASONS}").alias(S.REASONS),
        )
    )
