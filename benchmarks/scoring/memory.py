"""The scoring benchmark's memory workloads: peak memory of the Spark Python workers and of the
JVM while a scoring stage runs over the day and over copies of it unioned, each size in a Spark
application of its own (a JVM seldom gives memory back, so a second run in the same JVM would
start from the first one's peak).

The workloads, each measured the same way:
- the nightly job's scoring stage;
- the same with G1's young generation fixed (`FIXED_YOUNG_GENERATION`): how much of the JVM's
  growth is G1 sizing its young generation to meet its pause-time goal;
- the no-op pandas UDF over the same columns: it imports no torch and holds no model, but its JVM
  reads the same files and sends the same columns to Python, so growth the two JVMs share is
  Spark's scan and transfer under G1, not the scoring.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass

from benchmarks.scoring.fixtures import DAY, MODEL
from benchmarks.scoring.probes import RssSampler, jvm_pid
from benchmarks.scoring.workloads import noop_udf
from lakescore import registry
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.features import TRANSACTIONS_V1
from udfs.flagged import choose_output_columns, scan_columns

# G1's young generation fixed at this size instead of sized by G1 (up to 60% of the heap).
FIXED_YOUNG_GENERATION = "-Xmn512m"


@dataclass(frozen=True)
class MemoryWorkload:
    name: str
    label: str  # the report's row, with the letter the README uses
    java_options: str = ""  # added to the session's JVM options
    noop: bool = False  # the no-op pandas UDF instead of the job's scoring stage
    files: bool = False  # the job's scoring stage on the files path (udfs.arrow_files)


MEMORY_WORKLOADS = (
    MemoryWorkload("memory_nightly_job", "(a) nightly job: scoring stage"),
    MemoryWorkload("memory_nightly_job_young_512m", "(a) the same, young generation 512 MiB", java_options=FIXED_YOUNG_GENERATION),
    MemoryWorkload("memory_noop_pandas_udf", "(b) no-op pandas UDF, same columns", noop=True),
    MemoryWorkload("memory_nightly_job_files", "(e) nightly job, files path: scoring stage", files=True),
)
MEMORY_WORKLOAD_NAMES = {w.name: w for w in MEMORY_WORKLOADS}


def measure_memory(
    spark, settings: Settings, day, copies: int, noop: bool = False, files: bool = False
) -> tuple[dict[str, float], float]:
    """(peaks in MiB, seconds) of the job's scoring stage over `copies` unions of the day,
    written to a scratch Delta path (or, with `noop`, the no-op pandas UDF over the same columns
    into Spark's noop sink), while a thread samples the RSS of this session's JVM and its Python
    workers; the peaks end with the JVM's heap after a full collection (`jvm_live_after`)."""
    inputs = list(TRANSACTIONS_V1.inputs)
    output = choose_output_columns(day.columns, settings.score, "bench")
    # The columns the job reads (run_score).
    needed, run_date_column = scan_columns(output, inputs, day.schema, S.EVENT_DATE)
    rows = functools.reduce(lambda a, b: a.unionAll(b), [day.select(*needed)] * copies)
    totals = None
    if noop:
        def action() -> None:
            noop_udf(rows, inputs)
    elif files:
        action, totals = nightly_files_stage_over_copies(spark, settings, day.select(*needed), output, run_date_column, copies)
    else:
        action, totals = nightly_scoring_stage_over_copies(spark, settings, rows, output, run_date_column, copies)

    sampler = RssSampler(jvm_pid(spark), spark)
    sampler.start()
    started = time.perf_counter()
    try:
        action()
    finally:
        seconds = time.perf_counter() - started
        sampler.stop()
    if totals is not None and totals.value.rows != copies * day.count():
        raise RuntimeError(f"the memory run scored {totals.value.rows:,} rows, not {copies} x the day's")
    return {**sampler.peaks, "jvm_live_after": sampler.heap_after_full_gc()}, seconds


def nightly_scoring_stage_over_copies(spark, settings: Settings, rows, output, run_date_column, copies: int):
    """(action, totals): the nightly job's scoring stage over `rows` (the job's columns of the
    day, unioned `copies` times), its flagged records written to a scratch Delta path.

    A variant of the job's sequence rather than `run_score` (pipelines.nightly): it reads one day's
    partition of the source and writes `flagged` and `run_metrics`, while the memory check needs
    the day ten times over without writing ten times the table, and only the scoring stage.
    It builds the stage from the same library calls the job makes (the broadcast bundle,
    `score_dataframe` with its totals, `flagged_records`)."""
    from udfs.broadcast import broadcast_model
    from udfs.flagged import flagged_records
    from udfs.metrics import RunIdentity
    from udfs.scoring import new_run_totals, score_dataframe

    bundle = registry.load_registered(spark, settings, MODEL)[1]
    run = RunIdentity(f"memory-{copies}", DAY, bundle.name, bundle.version, bundle.sha256, "bench", None, bundle.threshold)
    model = broadcast_model(spark, bundle)
    totals = new_run_totals(spark, model)
    scored = score_dataframe(rows, model, totals=totals, flagged_only=True)
    flagged = flagged_records(scored, output, run, dt.datetime.now(dt.timezone.utc), run_date_column)

    def action() -> None:
        flagged.write.format("delta").mode("overwrite").save(str(settings.lake.root / "_bench_memory"))

    return action, totals


def nightly_files_stage_over_copies(spark, settings: Settings, rows, output, run_date_column, copies: int):
    """(action, totals): as `nightly_scoring_stage_over_copies`, on the files path: the day's
    files listed `copies` times over (`rows`: the job's columns of the day, for their types)."""
    from lakescore import lake
    from udfs.arrow_files import plan_tasks, score_files_dataframe
    from udfs.broadcast import broadcast_model
    from udfs.flagged import flagged_records
    from udfs.metrics import RunIdentity
    from udfs.scoring import new_run_totals

    bundle = registry.load_registered(spark, settings, MODEL)[1]
    run = RunIdentity(f"memory-files-{copies}", DAY, bundle.name, bundle.version, bundle.sha256, "bench", None, bundle.threshold)
    model = broadcast_model(spark, bundle)
    totals = new_run_totals(spark, model)
    source = lake.resolve_source(spark, settings, settings.table(settings.generate.table))
    files = lake.delta_files(source, (S.EVENT_DATE, DAY.isoformat())) * copies
    tasks = plan_tasks(files, settings.score.read_task_bytes, spark.sparkContext.defaultParallelism)
    scored = score_files_dataframe(
        spark, tasks, [model], schema=rows.schema, totals=[totals], batch_rows=settings.spark.arrow_batch_size
    )
    flagged = flagged_records(scored, output, run, dt.datetime.now(dt.timezone.utc), run_date_column)

    def action() -> None:
        flagged.write.format("delta").mode("overwrite").save(str(settings.lake.root / "_bench_memory"))

    return action, totals
