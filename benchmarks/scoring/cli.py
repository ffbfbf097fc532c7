"""`python -m benchmarks.scoring`: the scoring benchmark's driver. It prepares the lake, runs each
Spark workload in applications of its own, taking turns, then the single-process workloads and the
memory workloads, and prints the report."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scoring.application import PARTS, SETUP, print_part_result, run_in_new_process
from benchmarks.scoring.fixtures import MODEL, benchmark_settings, parquet_files
from benchmarks.scoring.memory import MEMORY_WORKLOADS
from benchmarks.scoring.report import (
    print_memory_growth,
    print_memory_heading,
    print_memory_row,
    print_ratios,
    print_stage_seconds,
    print_throughput,
)
from benchmarks.scoring.workloads import SPARK_WORKLOADS, one_process_features_and_model, one_process_scoring_core
from lakescore import lake, registry
from lakescore.bundle import load_bundle

# Runs of each single-process workload; the best counts.
ONE_PROCESS_RUNS = 5


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print its report; return its figures by workload name."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.workload and min(args.warmup, args.runs, args.repeat) < 1:
        parser.error("--warmup, --runs and --repeat must be at least 1 (the first run of an application is the cold one)")
    root = args.lake or Path(tempfile.mkdtemp(prefix="lakescore-bench-scoring-"))
    if args.workload:
        # One Spark application's part, run by the parent below in a new process.
        print_part_result(root, args.rows, args.workload, args.runs, args.memory_rows, args.warmup)
        return {}
    try:
        rows = run_in_new_process(root, args.rows, SETUP)
        results, stage, cold = _spark_workloads(root, rows, args)
        results.update(_one_process_workloads(root, args.rows, rows))
        print_throughput(results, samples=args.repeat * args.runs)
        print_ratios(results)
        print_stage_seconds(stage, cold)
        if args.memory_rows.strip():
            results.update(_memory_workloads(root, args.rows, [n for n in args.memory_rows.split(",") if n.strip()]))
    finally:
        if args.lake is None:
            shutil.rmtree(root, ignore_errors=True)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scoring",
        description="Scoring throughput and executor memory, side by side on one generated table and one model.",
        epilog="The workloads and what they measure: benchmarks/scoring/workloads.py and memory.py.",
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the generated day")
    parser.add_argument(
        "--memory-rows", default="2000000,20000000",
        help="row counts for the memory check (multiples of --rows: the table unioned with itself); '' skips it",
    )
    parser.add_argument("--lake", type=Path, default=None, help="reuse this lake root (kept), else a temporary one")
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="Spark applications per workload, started in turn (a, b, ..., a, b, ...); best and median count",
    )
    parser.add_argument("--runs", type=int, default=4, help="measured runs in each application, after the warm-up runs")
    parser.add_argument(
        "--warmup", type=int, default=6,
        help="runs in each application before the measured ones (the first is reported as the cold run)",
    )
    parser.add_argument("--workload", choices=PARTS, help=argparse.SUPPRESS)
    return parser


def _spark_workloads(root: Path, rows: int, args: argparse.Namespace) -> tuple[dict[str, float], dict, dict]:
    """Each Spark workload in `args.repeat` applications of its own, as the nightly job runs: run
    one after another in one JVM, the workloads changed each other's cost (the JIT compiles the
    shared row and Arrow code for what it has seen run). The applications take turns, so the
    machine's changing load is spread over all of them. Returns rows/s (best, median, action,
    cold) and the stages' median CPU seconds by workload name, then every measured stage's
    seconds and every cold one's, by workload name."""
    names = [w.name for w in SPARK_WORKLOADS]
    stage: dict[str, list[float]] = {k: [] for k in names}
    cold: dict[str, list[float]] = {k: [] for k in names}
    action: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[list[float]]] = {k: [] for k in names}
    for _ in range(args.repeat):
        for key in names:
            measured = run_in_new_process(root, args.rows, key, args.runs, warmup=args.warmup)
            cold[key].append(measured["cold"])
            for stage_seconds, action_seconds, cpu_seconds in measured["runs"]:
                stage[key].append(stage_seconds)
                action[key].append(action_seconds)
                cpu[key].append(cpu_seconds)
    results: dict[str, float] = {}
    for key in names:
        results[key] = rows / min(stage[key])
        results[key + "_median"] = rows / float(np.median(stage[key]))
        results[key + "_action"] = rows / min(action[key])
        results[key + "_cold"] = rows / float(np.median(cold[key]))
        machine, jvm, python, jit = np.median(np.array(cpu[key]), axis=0)
        results[key + "_cpu"], results[key + "_jvm_cpu"], results[key + "_python_cpu"] = float(machine), float(jvm), float(python)
        results[key + "_jit"] = float(jit)
    return results, stage, cold


def _one_process_workloads(root: Path, generated_rows: int, rows: int) -> dict[str, float]:
    """Rows/s of the single-process workloads over the day's `rows`, best of `ONE_PROCESS_RUNS`
    each, in this process (no JVM)."""
    settings = benchmark_settings(root, generated_rows)
    bundle = load_bundle(registry.bundle_dir(settings, MODEL, 1))
    files = parquet_files(str(lake.table_path(settings, settings.generate.table)))
    batch_size = settings.spark.arrow_batch_size
    return {
        workload.__name__: max(_rows_per_second(lambda: workload(files, bundle, batch_size), rows) for _ in range(ONE_PROCESS_RUNS))
        for workload in (one_process_scoring_core, one_process_features_and_model)
    }


def _memory_workloads(root: Path, rows: int, sizes: list[str]) -> dict[str, float]:
    """Each memory workload at each size, each size and workload in an application of its own;
    prints the memory table and returns the Python worker's and the JVM's peak RSS by workload
    and rows."""
    results: dict[str, float] = {}
    print_memory_heading()
    peaks_by: dict[tuple[str, int], dict[str, float]] = {}
    for workload in MEMORY_WORKLOADS:
        for size in sizes:
            for n, seconds, peaks in run_in_new_process(root, rows, workload.name, memory_rows=size):
                peaks_by[workload.name, n] = peaks
                results[f"{workload.name}_{n}"] = peaks["worker"]
                results[f"{workload.name}_{n}_jvm"] = peaks["jvm"]
                print_memory_row(workload, n, seconds, peaks)
    print_memory_growth(peaks_by)
    return results


def _rows_per_second(action, rows: int) -> float:
    started = time.perf_counter()
    action()
    return rows / (time.perf_counter() - started)
