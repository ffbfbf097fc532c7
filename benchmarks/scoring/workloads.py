"""The scoring benchmark's workloads: what each one runs over the generated day.

The Spark workloads run in Spark applications of their own (`benchmarks.scoring.application`);
each is a function of the application's `Scans`. The letters in their labels, (a) to (d), are
the ones the README's table and the issues use.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark.sql import Column, DataFrame, SparkSession

from benchmarks.library import build_scoring_model, run_score, score_rows, to_arrow
from benchmarks.scoring.fixtures import DAY, MODEL
from lakescore import registry
from lakescore import schemas as S
from lakescore.bundle import Bundle
from lakescore.config import Settings
from lakescore.features import TRANSACTIONS_V1
from lakescore.models import score_batch
from udfs.flagged import choose_output_columns, scan_columns
from udfs.scoring import udf_inputs


@dataclass(frozen=True)
class Scans:
    """What the Spark workloads of one application read: `scan`, the day's keys, allow-listed
    and input columns; `job_scan`, the columns the nightly job reads (not the date column, which
    the job fills from the run date: `udfs.flagged.scan_columns`); the model's `inputs`; and the
    registered model, for the workloads that run it (read and verified once per application, as
    the job does once per run)."""

    spark: SparkSession
    settings: Settings
    inputs: list[str]
    scan: DataFrame
    job_scan: DataFrame
    bundle: Bundle | None


def build_scans(spark: SparkSession, settings: Settings, day: DataFrame, with_model: bool) -> Scans:
    """The `Scans` of `day`; the registered model only `with_model`."""
    inputs = list(TRANSACTIONS_V1.inputs)
    output = choose_output_columns(day.columns, settings.score, settings.table(settings.generate.table))
    scan = day.select(*dict.fromkeys([*output.copied, *inputs]))
    job_scan = day.select(*scan_columns(output, inputs, day.schema, S.EVENT_DATE)[0])
    bundle = registry.load_registered(spark, settings, MODEL)[1] if with_model else None
    return Scans(spark, settings, inputs, scan, job_scan, bundle)


def nightly_job(s: Scans) -> None:
    """(a) The nightly job's whole run (`run_score`) on the UDF path: source count, its scoring
    stage (the Arrow UDF: features, preprocessing, model, flags, reasons, metric totals into an
    accumulator; flagged rows written to Delta), two Delta commits and the catalog."""
    run_score(s.spark, with_read_path(s.settings, "udf"), DAY, model=MODEL)


def nightly_job_files(s: Scans) -> None:
    """(e) The same run on the files path (the job's default where it is exact): Spark schedules
    the day's files, Python reads them with pyarrow and runs the same scoring, and only the
    flagged rows return to the JVM (`udfs.arrow_files`)."""
    run_score(s.spark, with_read_path(s.settings, "files"), DAY, model=MODEL)


def with_read_path(settings: Settings, read_path: str) -> Settings:
    """`settings` with score.read_path set."""
    import dataclasses

    return dataclasses.replace(settings, score=dataclasses.replace(settings.score, read_path=read_path))


def noop_pandas_udf(s: Scans) -> None:
    """(b) A pandas UDF that does nothing, fed the model's input columns as the source holds
    them, as separate columns like the job's UDF, over the day's keys, allow-listed and input
    columns: Spark's transfer floor."""
    noop_udf(s.scan, s.inputs)


def noop_pandas_udf_job_columns(s: Scans) -> None:
    """(b0) The same over the columns the job reads (no date column). (a) against (b0) leaves out
    what the job saves by not carrying the date through the scoring stage."""
    noop_udf(s.job_scan, s.inputs)


def noop_arrow_udf(s: Scans) -> None:
    """(b') An Arrow UDF that does nothing, same input as (b): the floor without pandas (the
    job's UDF is an Arrow UDF and skips the pandas conversion (b) pays)."""
    noop_udf(s.scan, s.inputs, arrow=True)


def noop_pandas_udf_category_codes(s: Scans) -> None:
    """(b'') The no-op pandas UDF fed what the job's UDF is fed: the category as its int code
    (`udfs.scoring.category_codes`), which the JVM writes into Arrow faster than the text.
    (a) against (b'') is the scoring's own cost."""
    noop_udf(s.scan, udf_inputs(TRANSACTIONS_V1))


def forward_pass_only(s: Scans) -> None:
    """(m) The job's scan (as (b0)) and UDF input (as (b'')) into an Arrow UDF that runs only the
    model's forward pass on a ready float32 batch of as many rows: the fastest a UDF that runs
    this model can score here, so (m)/(b) is about the most (a)/(b) can reach."""
    _model_only_udf(s.job_scan, udf_inputs(TRANSACTIONS_V1), s.bundle, s.settings)


def features_and_model(s: Scans) -> None:
    """(f) (m) on the batch's own rows: the feature set's transform and the preprocessing, then
    the forward pass, as the job's UDF does before its flags, reasons, metric counts and Delta
    write. (f)/(b) is the most (a)/(b) can reach computing the model's input as it does now."""
    _model_only_udf(s.job_scan, udf_inputs(TRANSACTIONS_V1), s.bundle, s.settings, features=True)


def predict_batch_udf(s: Scans) -> None:
    """(c) `pyspark.ml.functions.predict_batch_udf` with the same model (features, preprocessing,
    model)."""
    _predict_batch_udf(s.scan, s.inputs, s.bundle, s.settings)


@dataclass(frozen=True)
class SparkWorkload:
    name: str
    label: str  # the report's row, with the letter the README uses
    run: Callable[[Scans], None]
    uses_model: bool = False


# In the order the applications take turns.
SPARK_WORKLOADS = (
    SparkWorkload("nightly_job", "(a) nightly job, UDF path: scoring stage | whole run", nightly_job),
    SparkWorkload("nightly_job_files", "(e) nightly job, files path: scoring stage | whole run", nightly_job_files),
    SparkWorkload("noop_pandas_udf", "(b) pandas UDF that does nothing (transfer floor)", noop_pandas_udf),
    SparkWorkload("noop_pandas_udf_job_columns", "(b0) the same over the job's columns (no date column)", noop_pandas_udf_job_columns),
    SparkWorkload("noop_arrow_udf", "(b') Arrow UDF that does nothing (floor without pandas)", noop_arrow_udf),
    SparkWorkload("noop_pandas_udf_category_codes", "(b'') pandas UDF that does nothing, category as int code", noop_pandas_udf_category_codes),
    SparkWorkload("forward_pass_only", "(m) Arrow UDF running only the model's forward pass", forward_pass_only, uses_model=True),
    SparkWorkload("features_and_model", "(f) the same, on the rows' features, preprocessed", features_and_model, uses_model=True),
    SparkWorkload("predict_batch_udf", "(c) pyspark.ml predict_batch_udf, same model", predict_batch_udf, uses_model=True),
)
SPARK_WORKLOAD_NAMES = {w.name: w for w in SPARK_WORKLOADS}


def one_process_scoring_core(files: list[str], bundle: Bundle, batch_size: int) -> None:
    """(d) One process reading the day's Parquet files with pyarrow and running the job's scoring
    core (`score_rows`), torch on one thread."""
    _single_process(files, list(TRANSACTIONS_V1.inputs), bundle, batch_size, full=True)


def one_process_features_and_model(files: list[str], bundle: Bundle, batch_size: int) -> None:
    """(d0) The same with features, preprocessing and the model only."""
    _single_process(files, list(TRANSACTIONS_V1.inputs), bundle, batch_size, full=False)


def noop_udf(day, inputs: Sequence[str | Column], arrow: bool = False) -> None:
    """A UDF that returns zeros, fed the `inputs` as separate columns, as the job's UDF is:
    pandas (b), or Arrow (b')."""
    from pyspark.sql.functions import arrow_udf, pandas_udf

    if arrow:

        @arrow_udf("double")
        def nothing(batches: Iterator[Tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
            for columns in batches:
                yield pa.array(np.zeros(len(columns[0])))

    else:

        @pandas_udf("double")
        def nothing(batches: Iterator[Tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
            for columns in batches:
                yield pd.Series(np.zeros(len(columns[0])))

    day.withColumn("out", nothing(*inputs)).write.format("noop").mode("overwrite").save()


def _model_only_udf(day, inputs: Sequence[str | Column], bundle: Bundle, settings: Settings, features: bool = False) -> None:
    """(m): an Arrow UDF that runs the bundle's model on a ready float32 batch as long as each
    input batch and returns zeros: the job's transfer and its model's arithmetic, nothing else.
    With `features`, (f): the model runs on the batch's own rows, through the feature set's
    transform and the preprocessing, as the job's UDF does (no flags, reasons or metric counts).
    The model comes as the job's does: broadcast, then built once per worker (`load_scoring_model`)."""
    from pyspark.sql.functions import arrow_udf

    from udfs.broadcast import broadcast_model, load_scoring_model

    broadcast = broadcast_model(day.sparkSession, bundle).files
    sha256 = bundle.sha256
    batch_rows = settings.spark.arrow_batch_size

    @arrow_udf("double")
    def model_only(batches: Iterator[Tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        scoring = load_scoring_model(broadcast, sha256)
        names = list(scoring.feature_set.inputs)
        # (m)'s ready batch; (f) computes its own from each batch's columns.
        x = None if features else np.random.default_rng(0).standard_normal((batch_rows, len(scoring.feature_set.features)), dtype=np.float32)
        for columns in batches:
            n = len(columns[0])
            if features:
                raw = pa.RecordBatch.from_arrays(list(columns), names=names)
                score_batch(scoring.model, scoring.kind, scoring.preprocessing.apply(scoring.feature_set.transform(raw, coded=True))[0])
            else:
                if n > len(x):
                    x = np.resize(x, (n, x.shape[1]))
                score_batch(scoring.model, scoring.kind, x[:n])
            yield pa.array(np.zeros(n))

    day.withColumn("out", model_only(*inputs)).write.format("noop").mode("overwrite").save()


def _predict_batch_udf(day, inputs: list[str], bundle: Bundle, settings: Settings) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import DoubleType

    files = dict(bundle.files)

    def make_predict_fn():
        from lakescore.bundle import verify_files

        torch.set_num_threads(1)
        # `build_scoring_model` travels with this function as a reference to its own module.
        scoring = build_scoring_model(verify_files(files, "bench bundle"))

        def predict(*columns: np.ndarray) -> np.ndarray:
            raw = pd.DataFrame(dict(zip(inputs, columns)))
            x, _ = scoring.preprocessing.apply(scoring.feature_set.transform(raw))
            return score_batch(scoring.model, scoring.kind, x)

        # predict_batch_udf passes one numpy array per column when the function names that many.
        predict.__signature__ = inspect.Signature(
            [inspect.Parameter(f"c{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(inputs))]
        )
        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=DoubleType(), batch_size=settings.spark.arrow_batch_size)
    day.withColumn("score", udf(*inputs)).write.format("noop").mode("overwrite").save()


def _single_process(files: list[str], inputs: list[str], bundle: Bundle, batch_size: int, full: bool) -> None:
    import pyarrow.dataset as ds

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scoring = build_scoring_model(bundle)
        # udfs.scorer reads Arrow batches as they come (the job's UDF gets the same).
        for batch in ds.dataset(files, format="parquet").to_batches(columns=inputs, batch_size=batch_size):
            if full:
                to_arrow(score_rows(scoring, batch, top_k=3))
            else:
                x, _ = scoring.preprocessing.apply(scoring.feature_set.transform(batch))
                score_batch(scoring.model, scoring.kind, x)
    finally:
        torch.set_num_threads(threads)
