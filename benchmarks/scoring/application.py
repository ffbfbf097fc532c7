"""One Spark application's part of the scoring benchmark, run in a process of its own.

The parent (`benchmarks.scoring.cli`) starts no JVM: the embedded metastore (Derby) admits one
JVM at a time, and pyspark keeps its JVM, hence the metastore, until the process ends. Each part
runs as `python -m benchmarks.scoring --workload NAME ...` and prints its result on a line that
starts with `RESULT `.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.scoring.fixtures import benchmark_settings, prepare_lake, read_day, with_driver_java_options
from benchmarks.scoring.memory import MEMORY_WORKLOAD_NAMES, measure_memory
from benchmarks.scoring.probes import StageTimer
from benchmarks.scoring.workloads import SPARK_WORKLOAD_NAMES, build_scans
from lakescore.config import Settings
from lakescore.spark import build_spark_session

SETUP = "setup"
PARTS = (SETUP, *SPARK_WORKLOAD_NAMES, *MEMORY_WORKLOAD_NAMES)


def run_in_new_process(root: Path, rows: int, part: str, runs: int = 0, memory_rows: str = "", warmup: int = 1):
    """`run_part`'s result, from a new Python process (hence a new Spark application); its
    output goes to this one's."""
    command = [sys.executable, "-m", "benchmarks.scoring", "--lake", str(root), "--rows", str(rows), "--workload", part,
               "--runs", str(runs), "--warmup", str(warmup), "--memory-rows", memory_rows]
    repository = Path(__file__).resolve().parents[2]
    done = subprocess.run(command, cwd=repository, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    print("\n".join(line for line in done.stdout.splitlines() if not line.startswith("RESULT ")), end="", flush=True)
    if done.returncode != 0 or not results:
        raise RuntimeError(f"the benchmark's {part} failed (exit {done.returncode}): {done.stderr[-3000:]}")
    return json.loads(results[-1].removeprefix("RESULT "))


def print_part_result(root: Path, rows: int, part: str, runs: int, memory_rows: str, warmup: int) -> None:
    """The child's side of `run_in_new_process`."""
    print("RESULT " + json.dumps(run_part(benchmark_settings(root, rows), part, runs, memory_rows, warmup)), flush=True)


def run_part(settings: Settings, part: str, runs: int, memory_rows: str, warmup: int = 1):
    """One Spark application's part of the benchmark:
    - "setup": generate the table and register the model if the lake lacks them; the day's rows;
    - a Spark workload: {"cold": the first run's stage seconds, "runs": [(stage seconds, action
      seconds, [CPU-s: machine, JVM, Python workers, JIT compiler threads])] of `runs` runs} after
      `warmup` runs (at least one): the first starts the Python workers, which import torch and
      build the model; the JIT keeps compiling the job's planning and commit code for several
      more (docs/measurements.md, "Scoring benchmark"), so the measured runs are warm runs: what a
      long night over billions of rows runs at;
    - a memory workload: [(rows, seconds, peaks in MiB)] at each of `memory_rows`."""
    if part in MEMORY_WORKLOAD_NAMES and MEMORY_WORKLOAD_NAMES[part].java_options:
        settings = with_driver_java_options(settings, MEMORY_WORKLOAD_NAMES[part].java_options)
    spark = build_spark_session(settings, app_name=f"lakescore-bench-scoring-{part}")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        if part == SETUP:
            return prepare_lake(spark, settings)
        if part in MEMORY_WORKLOAD_NAMES:
            return _memory_part(spark, settings, part, memory_rows)
        return _spark_workload_part(spark, settings, part, runs, warmup)
    finally:
        spark.stop()


def _spark_workload_part(spark, settings: Settings, name: str, runs: int, warmup: int) -> dict:
    day = read_day(spark, settings)
    workload = SPARK_WORKLOAD_NAMES[name]
    scans = build_scans(spark, settings, day, with_model=workload.uses_model)
    timer = StageTimer(spark)
    cold = timer.measure(name, lambda: workload.run(scans))[0]
    for _ in range(warmup - 1):
        workload.run(scans)
    measured = [timer.measure(name, lambda: workload.run(scans)) for _ in range(runs)]
    return {"cold": cold, "runs": [(stage, action, list(cpu)) for stage, action, cpu in measured]}


def _memory_part(spark, settings: Settings, name: str, memory_rows: str) -> list:
    day = read_day(spark, settings)
    rows = day.count()
    measured = []
    for n in [int(n) for n in memory_rows.split(",") if n.strip()]:
        copies = max(1, round(n / rows))
        workload = MEMORY_WORKLOAD_NAMES[name]
        peaks, seconds = measure_memory(spark, settings, day, copies, noop=workload.noop, files=workload.files)
        measured.append((copies * rows, seconds, peaks))
    return measured
