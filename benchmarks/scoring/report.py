"""The scoring benchmark's printed report: the throughput table, the ratios its targets are read
from ((a) >= 0.9 x (b), (a) > (c), (e) >= 2 x (a), (e) >= 0.8 x 2 x (d)), and the memory table. Rows are labelled with the letters the
README and the issues use."""

from __future__ import annotations

import os

from benchmarks.scoring.memory import MEMORY_WORKLOADS, MemoryWorkload
from benchmarks.scoring.workloads import SPARK_WORKLOADS

# The memory table's columns: (heading, key in `measure_memory`'s peaks, width).
MEMORY_COLUMNS = (
    ("worker", "worker", 8),
    ("workers", "workers", 9),
    ("JVM RSS", "jvm", 9),
    ("heap committed", "jvm_heap_committed", 16),
    ("JVM heap after GC", "jvm_heap_after_gc", 19),
    ("after, full GC", "jvm_live_after", 16),
)


def print_throughput(results: dict[str, float], samples: int) -> None:
    """The Spark workloads' rows/s and CPU seconds, then the single-process ones'."""
    print()
    print(f"{'rows/s, best of ' + str(samples) + '; CPU-s: stage medians':<62}{'stage':>12}{'action':>12}{'stage median':>14}"
          f"{'CPU-s: all':>12}{'JVM':>7}{'Python':>8}{'JIT CPU-s':>11}{'cold (median)':>15}")
    for workload in SPARK_WORKLOADS:
        key = workload.name
        print(f"{workload.label:<62}{results[key]:>12,.0f}{results[key + '_action']:>12,.0f}{results[key + '_median']:>14,.0f}"
              f"{results[key + '_cpu']:>12.2f}{results[key + '_jvm_cpu']:>7.2f}{results[key + '_python_cpu']:>8.2f}"
              f"{results[key + '_jit']:>11.2f}"
              f"{results[key + '_cold']:>15,.0f}")
    print(f"{'(d) one process: pyarrow + the same scorer (udfs.scorer)':<62}{results['one_process_scoring_core']:>12,.0f}")
    print(f"{'(d0) one process: pyarrow + features + model only':<62}{results['one_process_features_and_model']:>12,.0f}")


def print_ratios(results: dict[str, float]) -> None:
    """The ratios between workloads, by best stage, by median stage and by CPU seconds."""
    r = results
    a, b, b0, c = "nightly_job", "noop_pandas_udf", "noop_pandas_udf_job_columns", "predict_batch_udf"
    m, f = "forward_pass_only", "features_and_model"
    print(f"(a)/(b) = {r[a] / r[b]:.2f}  (target >= 0.9; stages; medians: {r[a + '_median'] / r[b + '_median']:.2f})")
    print(f"(a)/(b0) = {r[a] / r[b0]:.2f}  (stages; medians: {r[a + '_median'] / r[b0 + '_median']:.2f})")
    print(f"(a)/(c) = {r[a] / r[c]:.2f}  (target > 1; stages; medians: {r[a + '_median'] / r[c + '_median']:.2f})")
    print(f"(a)/(b') = {r[a] / r['noop_arrow_udf']:.2f}; (a)/(b'') = {r[a] / r['noop_pandas_udf_category_codes']:.2f} "
          f"(medians: {r[a + '_median'] / r['noop_pandas_udf_category_codes_median']:.2f})")
    print(f"(m)/(b) = {r[m] / r[b]:.2f}  (about the most (a)/(b) can reach with this model; medians: "
          f"{r[m + '_median'] / r[b + '_median']:.2f}); (a)/(m) = {r[a] / r[m]:.2f}")
    print(f"(f)/(b) = {r[f] / r[b]:.2f}  (features, preprocessing and model, nothing else; medians: "
          f"{r[f + '_median'] / r[b + '_median']:.2f}; in CPU seconds: {r[b + '_cpu'] / r[f + '_cpu']:.2f}); "
          f"(a)/(f) = {r[a] / r[f]:.2f}")
    print(f"(a)/(b) in CPU seconds of the stages (medians): {r[b + '_cpu'] / r[a + '_cpu']:.2f}; "
          f"(a)/(b0): {r[b0 + '_cpu'] / r[a + '_cpu']:.2f}; (a)/(c): {r[c + '_cpu'] / r[a + '_cpu']:.2f}")
    print(f"(a)/(d) = {r[a] / r['one_process_scoring_core']:.2f}")
    e, d = "nightly_job_files", r["one_process_scoring_core"]
    print(f"(e)/(a) = {r[e] / r[a]:.2f}  (target >= 2; medians: {r[e + '_median'] / r[a + '_median']:.2f}; "
          f"in CPU seconds: {r[a + '_cpu'] / r[e + '_cpu']:.2f})")
    print(f"(e)/(2 x (d)) = {r[e] / (2 * d):.2f}  (target >= 0.8 on 2 cores; medians: {r[e + '_median'] / (2 * d):.2f}); "
          f"(e)/(d) = {r[e] / d:.2f}")
    print(f"cold (each application's first run, medians): (a)/(b) = {r[a + '_cold'] / r[b + '_cold']:.2f}, "
          f"(a)/(c) = {r[a + '_cold'] / r[c + '_cold']:.2f}")


def print_stage_seconds(stage: dict[str, list[float]], cold: dict[str, list[float]]) -> None:
    """Every measured and cold stage's seconds, by workload, and the machine's load."""
    print(f"all stage seconds: {  {k: [round(v, 2) for v in vs] for k, vs in stage.items()} }")
    print(f"cold stage seconds: {  {k: [round(v, 2) for v in vs] for k, vs in cold.items()} }")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")


def print_memory_heading() -> None:
    print(f"\n{'memory (MiB, peaks while the stage runs)':<44}{'rows':>12}{'seconds':>9}{'rows/s':>12}"
          + "".join(f"{name:>{width}}" for name, _, width in MEMORY_COLUMNS))


def print_memory_row(workload: MemoryWorkload, rows: int, seconds: float, peaks: dict[str, float]) -> None:
    print(f"{workload.label:<44}{rows:>12,}{seconds:>9.1f}{rows / seconds:>12,.0f}"
          + "".join(f"{peaks[part]:>{width}.0f}" for _, part, width in MEMORY_COLUMNS), flush=True)


def print_memory_growth(peaks_by: dict[tuple[str, int], dict[str, float]]) -> None:
    """Each workload's peaks at its largest size against its smallest (target: within 10%)."""
    for workload in MEMORY_WORKLOADS:
        sizes_run = sorted(n for k, n in peaks_by if k == workload.name)
        if len(sizes_run) > 1:
            low, high = peaks_by[workload.name, sizes_run[0]], peaks_by[workload.name, sizes_run[-1]]
            growth = ", ".join(
                f"{name} {high[part] / low[part] - 1:+.0%}"
                for name, part, _ in MEMORY_COLUMNS
                if low[part] > 0
            )
            print(f"{workload.label}, {sizes_run[-1]:,} against {sizes_run[0]:,} rows: {growth}  (target: within 10%)")
