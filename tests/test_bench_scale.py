"""The scale benchmark's pure parts: sizes, the disk arithmetic, the RSS sampler (no Spark)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import scale

MIB = 2**20
HELD_MIB = 200


@pytest.mark.parametrize(
    "text, rows",
    [("10M", 10_000_000), ("1m", 1_000_000), ("300K", 300_000), ("1.5M", 1_500_000), ("1B", 10**9), ("2500", 2500)],
)
def test_sizes_parse_with_their_suffix(text, rows):
    assert scale.parse_size(text) == rows


@pytest.mark.parametrize("text", ["", "ten", "10X", "-1M", "0"])
def test_a_size_that_is_not_a_row_count_is_refused(text):
    with pytest.raises(ValueError):
        scale.parse_size(text)


def test_sizes_are_sorted_distinct_and_print_back():
    assert scale.parse_sizes("100M, 10M,30M,10M") == [10_000_000, 30_000_000, 100_000_000]
    assert [scale.format_size(n) for n in (10_000_000, 300_000, 1_500_000, 2 * 10**9, 999)] == ["10M", "300K", "1.5M", "2B", "999"]


def test_disk_check_multiplies_rows_with_window_by_bytes_per_row_and_headroom():
    # 1M scored rows + 2 window days of 100K = 1.2M rows; x 20 bytes x DISK_HEADROOM.
    check = scale.check_disk(1_000_000, 20.0, free=10**9)
    assert check.needed == int(1_200_000 * 20 * scale.DISK_HEADROOM)
    assert check.fits
    assert "1,000,000 + 2 x 100,000 window rows" in check.explain()


def test_disk_check_refuses_a_size_larger_than_the_free_space():
    needed = int(120_000_000 * 21.0 * scale.DISK_HEADROOM)
    assert not scale.check_disk(100_000_000, 21.0, free=needed - 1).fits
    assert scale.check_disk(100_000_000, 21.0, free=needed).fits


def test_processes_are_classified_by_command_line():
    assert scale.classify("ray::RayTrainWorker.run", is_root=False) == "ray_worker"
    assert scale.classify("/usr/bin/java -cp x org.apache.spark.deploy.SparkSubmit pyspark-shell", is_root=False) == "driver_jvm"
    assert scale.classify("java ... org.apache.spark.executor.CoarseGrainedExecutorBackend --driver-url x", is_root=False) == "executor_jvm"
    assert scale.classify("/venv/bin/python -m pyspark.daemon", is_root=False) == "python_worker"
    assert scale.classify("/venv/bin/python /venv/bin/lakescore score", is_root=True) == "python_driver"
    assert scale.classify("/venv/lib/ray/core/src/ray/raylet/raylet --x", is_root=False) == "other"


def test_sampler_sees_a_child_that_holds_200_mib_between_200_and_400_mib():
    # The child fills its buffer (b"x" * n touches every page), then a grandchild of the
    # sampled root holds it: the tree, not only the root, is sampled.
    hold = f"b = b'x' * ({HELD_MIB} * 2**20); import time; time.sleep(2.0)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}])"
    process = subprocess.Popen([sys.executable, "-c", parent])
    with scale.RssSampler(process.pid, interval=0.1) as sampler:
        process.wait(timeout=30)
    peaks = sampler.peaks
    assert HELD_MIB * MIB <= peaks.total < 2 * HELD_MIB * MIB
    assert HELD_MIB * MIB <= peaks.peak_single["other"] < 2 * HELD_MIB * MIB
    assert peaks.peak_sum["python_driver"] < HELD_MIB * MIB  # the root itself holds little
    assert peaks.samples >= 5


def test_sampler_finds_a_process_outside_the_tree_by_its_marker():
    marker = "scale-test-marker"
    hold = f"b = b'x' * ({HELD_MIB} * 2**20); import time; time.sleep(2.0)"
    import os

    env = {**os.environ, scale.MARKER_VARIABLE: marker}
    stranger = subprocess.Popen([sys.executable, "-c", hold], env=env, start_new_session=True)
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2.5)"])
    try:
        with scale.RssSampler(root.pid, marker=marker, interval=0.1) as sampler:
            root.wait(timeout=30)
    finally:
        stranger.wait(timeout=30)
    assert HELD_MIB * MIB <= sampler.peaks.peak_single["other"] < 2 * HELD_MIB * MIB


def _result(mode, size, step, seconds, **peaks):
    p = scale.MemoryPeaks()
    for kind, value in peaks.items():
        p.peak_sum[kind] = p.peak_single[kind] = value * MIB
    return scale.StepResult(mode, size, step, size, seconds, p, disk=0, ok=True)


def test_flat_check_passes_within_ten_percent_and_fails_beyond():
    results = [
        _result("local2", 1_000_000, "score", 10, driver_jvm=1000, python_worker=200),
        _result("local2", 3_000_000, "score", 20, driver_jvm=1090, python_worker=300),
    ]
    lines = scale.flat_checks(results)
    assert any(line.startswith("PASS") and "driver JVM" in line for line in lines)
    assert any(line.startswith("FAIL") and "Python worker (one)" in line for line in lines)


def test_scaling_lines_compare_two_cores_with_one_at_the_same_size_and_step():
    results = [_result("local1", 1_000_000, "score", 10.0), _result("local2", 1_000_000, "score", 6.25)]
    assert scale.scaling_lines(results) == ["local1->local2 1M score: 1.60x rows/s (efficiency 80%)"]


def test_linear_fit_recovers_the_fixed_seconds_and_the_rate():
    fixed, rate = scale.fit_linear([(1_000_000, 30.0 + 1_000_000 / 50_000), (3_000_000, 30.0 + 3_000_000 / 50_000)])
    assert fixed == pytest.approx(30.0)
    assert rate == pytest.approx(50_000)


def test_linear_fit_needs_two_sizes_and_a_cost_per_row():
    assert scale.fit_linear([(1_000_000, 40.0)]) is None
    assert scale.fit_linear([(1_000_000, 40.0), (3_000_000, 35.0)]) is None  # faster with more rows: noise


def test_extrapolation_divides_the_rows_by_executors_rate_and_efficiency():
    results = [
        _result("local1", 1_000_000, "score", 30.0 + 1_000_000 / 50_000),
        _result("local1", 3_000_000, "score", 30.0 + 3_000_000 / 50_000),
        # Two cores: 1.6x the one-core rows/s at 3M, efficiency 80%.
        _result("local2", 3_000_000, "score", (30.0 + 3_000_000 / 50_000) / 1.6),
    ]
    lines = scale.extrapolation_lines(results, bytes_per_row=20.0)
    row = next(line for line in lines if line.startswith("| score"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["50,000", "30", "80%"]
    # 1B rows on 10 executors: 30 + 1e9 / (50,000 x 10 x 0.8) = 2,530 s = 42 min.
    assert cells[4] == "42 min"
