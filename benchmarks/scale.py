"""Measured scale curve: generate, train and score at growing sizes, each step its own `lakescore` process.

    python -m benchmarks.scale --sizes 10M,30M,100M --modes local1,local2,standalone1,standalone2 \\
        --report docs/scale-run.md

(`make bench-scale` runs the defaults; it is not part of `make test` or `make bench`.)

Per size N, in a lake root of its own, through the real CLI (`.venv/bin/lakescore ...`):

1. `generate`: ONE day (D) of N rows: what one night of the nightly job reads.
2. `generate-window`: two more days (D+1, D+2) of N/10 rows each, so that training has the three
   dates its split needs (train.validation_days = train.test_days = 1).
3. `train`: on the window D..D+2: the N-row day is the training split, downsampled with
   train.negative_sample_rate so that about --train-normals normal rows are kept (every anomaly is
   kept), D+1 validates, D+2 tests; --epochs epochs. Its rows/s are over the window's 1.2 N rows.
4. `score`: the nightly job on day D with the model step 3 registered (the champion).

Each step's wall seconds, rows/s and the peak RSS of each kind of process (sampled every
--interval seconds from /proc/<pid>/status VmRSS over the step's process tree, the standalone
workers' executors, and any process carrying the step's marker in its environment), then the lake's
size on disk (du). Modes: local[1] and local[2] (`spark.master`), and a Spark standalone master on
127.0.0.1 with one or two workers of one core each; Ray Train gets as many workers as Spark has cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
LAKESCORE = Path(sys.executable).parent / "lakescore"
SCORED_DAY = dt.date(2026, 11, 1)
# Each step's children inherit this variable; the sampler finds by it any process that left the tree.
MARKER_VARIABLE = "LAKESCORE_SCALE_MARKER"
# The window days beside the scored day hold this share of its rows each.
WINDOW_DAY_SHARE = 0.1
WINDOW_DAYS = 2
# Disk a size needs, as a multiple of its table's bytes: the table, Spark's shuffle files while the
# generator repartitions by day (uncompressed rows, several times the Parquet bytes) and the window
# days. A guess on the safe side, stated in the refusal.
DISK_HEADROOM = 4.0
# Before anything has been measured: bytes per row of the transactions table (measured 21 bytes
# on 1M rows, Delta/Parquet/snappy, 2026-12-05), rounded up.
ASSUMED_BYTES_PER_ROW = 32.0
# Scoring and the training driver "stay flat" within this ratio between the largest and smallest size.
FLAT_TOLERANCE = 0.10
MODES = {
    # name: (master kind, Spark cores in total); standalone workers have one core each.
    "local1": ("local", 1),
    "local2": ("local", 2),
    "standalone1": ("standalone", 1),
    "standalone2": ("standalone", 2),
}
MIB = 2**20
# The standalone worker daemon's main class: sampled around, never counted.
DAEMON_CLASS = "org.apache.spark.deploy.worker.Worker"


# --- pure helpers -----------------------------------------------------------------------------------


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*$")
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_size(text: str) -> int:
    """'10M' -> 10_000_000; '300K', '1.5M', '1B' (also 'G'), '2500' accepted; raise ValueError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"size {text!r} is not a number with an optional K, M or B suffix, e.g. 10M or 300K")
    rows = int(round(float(match.group(1)) * _SUFFIX[match.group(2).lower()]))
    if rows < 1:
        raise ValueError(f"size {text!r} is below one row")
    return rows


def format_size(rows: int) -> str:
    """10_000_000 -> '10M', 300_000 -> '300K', 1_500_000 -> '1.5M'."""
    for suffix, unit in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if rows >= unit:
            return f"{rows / unit:g}{suffix}"
    return str(rows)


def parse_sizes(text: str) -> list[int]:
    """'10M,30M,100M' -> sorted distinct row counts."""
    return sorted({parse_size(part) for part in text.split(",") if part.strip()})


def rows_on_disk(rows: int) -> int:
    """Rows a size writes: the scored day plus the training window's extra days."""
    return rows + WINDOW_DAYS * window_day_rows(rows)


def window_day_rows(rows: int) -> int:
    return max(1, int(rows * WINDOW_DAY_SHARE))


@dataclasses.dataclass(frozen=True)
class DiskCheck:
    rows: int
    bytes_per_row: float
    needed: int
    free: int

    @property
    def fits(self) -> bool:
        return self.needed <= self.free

    def explain(self) -> str:
        """The arithmetic, for the refusal or the log."""
        return (
            f"{format_size(self.rows)} rows: ({self.rows:,} + {WINDOW_DAYS} x {window_day_rows(self.rows):,} window rows) "
            f"x {self.bytes_per_row:.1f} bytes/row x {DISK_HEADROOM:g} (shuffle and headroom) = "
            f"{self.needed / 2**30:.2f} GiB needed, {self.free / 2**30:.2f} GiB free"
        )


def check_disk(rows: int, bytes_per_row: float, free: int) -> DiskCheck:
    """Whether a size fits `free` bytes: its rows on disk x bytes/row x DISK_HEADROOM. Sizes run one
    at a time and each lake root is deleted after its size (unless --keep), so sizes need not fit together."""
    needed = int(math.ceil(rows_on_disk(rows) * bytes_per_row * DISK_HEADROOM))
    return DiskCheck(rows=rows, bytes_per_row=bytes_per_row, needed=needed, free=free)


def roomiest_disk_folder(candidates: Sequence[str | Path] = ()) -> Path:
    """Of the temp folder, /tmp, /var/tmp and `candidates`, the one on the disk with the most free space."""
    options = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), *map(Path, candidates)]
    usable = [p for p in options if p.is_dir() and os.access(p, os.W_OK)]
    return max(usable, key=lambda p: shutil.disk_usage(p).free)


def disk_bytes(path: Path) -> int:
    """`du -sb path` (apparent bytes of every file below it); 0 if it does not exist."""
    if not Path(path).exists():
        return 0
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out.strip() else 0


# --- memory sampling ------------------------------------------------------------------------------


PROCESS_KINDS = ("driver_jvm", "executor_jvm", "python_driver", "python_worker", "ray_worker", "other")


def classify(cmdline: str, *, is_root: bool) -> str:
    """What a process is, from its command line: the step's own process is the Python driver."""
    if is_root:
        return "python_driver"
    if cmdline.startswith("ray::"):
        return "ray_worker"
    if "CoarseGrainedExecutorBackend" in cmdline:
        return "executor_jvm"
    if "org.apache.spark.deploy.SparkSubmit" in cmdline:
        return "driver_jvm"
    if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
        return "python_worker"
    return "other"


@dataclasses.dataclass
class _Proc:
    pid: int
    ppid: int
    rss: int  # bytes
    cmdline: str


def _read_processes() -> dict[int, _Proc]:
    """Every live, non-zombie process of the machine (Linux /proc), with its resident set."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                status = f.read()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("State", "").strip().startswith("Z"):
                continue
            rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])  # kernel threads have none
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            found[int(entry.name)] = _Proc(int(entry.name), int(fields["PPid"]), rss_kib * 1024, cmdline)
        except (OSError, ValueError, KeyError):
            continue
    return found


def _has_marker(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{MARKER_VARIABLE}={marker}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _descendants(roots: Sequence[int], processes: dict[int, _Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in processes.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclasses.dataclass
class MemoryPeaks:
    """Peak resident memory in bytes per process kind: of the kind's sum at one sample, and of any
    single process of the kind; `total` is the peak of everything sampled together."""

    peak_sum: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PROCESS_KINDS, 0))
    peak_single: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PROCESS_KINDS, 0))
    total: int = 0
    samples: int = 0
    processes_seen: int = 0


class RssSampler:
    """Samples, every `interval` seconds in a thread, the resident memory of `root`'s process tree,
    of the descendants (not the daemons themselves) of `daemon_pids`, and of any process whose
    environment carries MARKER_VARIABLE=`marker`.

    Use as a context manager; `peaks` holds the result once it exits.
    """

    def __init__(self, root: int, *, marker: str | None = None, daemon_pids: Sequence[int] = (), interval: float = 0.2):
        self.root, self.marker, self.daemon_pids, self.interval = root, marker, tuple(daemon_pids), interval
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._marked: dict[int, bool] = {}  # pid -> carries the marker (environ read once per pid)
        self._seen: set[int] = set()
        self._uid = os.getuid()

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                self.sample()  # one last look, so a short step still has a sample near its end
                return

    def _members(self, processes: dict[int, _Proc]) -> set[int]:
        members = _descendants([self.root, *self.daemon_pids], processes)
        # The daemon's pid may be spark-class's shell, whose child is the worker JVM: not the step's.
        members -= {pid for pid in members if DAEMON_CLASS in processes[pid].cmdline}
        if self.root in processes:
            members.add(self.root)
        if self.marker:
            for pid in processes.keys() - members - set(self.daemon_pids) - {os.getpid()}:
                if pid not in self._marked:
                    self._marked[pid] = _owned_by(pid, self._uid) and _has_marker(pid, self.marker)
                if self._marked[pid]:
                    members.add(pid)
        return members

    def sample(self) -> None:
        processes = _read_processes()
        members = self._members(processes)
        sums = dict.fromkeys(PROCESS_KINDS, 0)
        peaks = self.peaks
        for pid in members:
            p = processes[pid]
            kind = classify(p.cmdline, is_root=pid == self.root)
            sums[kind] += p.rss
            peaks.peak_single[kind] = max(peaks.peak_single[kind], p.rss)
            self._seen.add(pid)
        for kind, value in sums.items():
            peaks.peak_sum[kind] = max(peaks.peak_sum[kind], value)
        peaks.total = max(peaks.total, sum(sums.values()))
        peaks.samples += 1
        peaks.processes_seen = len(self._seen)


def _owned_by(pid: int, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except OSError:
        return False


# --- processes and the standalone cluster ---------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group of `process` (started in a session of its own), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return


@dataclasses.dataclass
class Standalone:
    master_url: str
    worker_pids: list[int]


@contextlib.contextmanager
def standalone_cluster(base: Path, workers: int, env: dict, memory: str) -> Iterator[Standalone]:
    """A Spark standalone master and `workers` workers of one core each on 127.0.0.1, free ports,
    from pyspark's own bin folder (as tests/localclusters.py starts them); every process group is
    stopped on exit, pass or fail. Executors' scratch space: $SPARK_LOCAL_DIRS from `env`."""
    import pyspark  # only here: the rest of this module runs without Spark

    spark_class = str(Path(pyspark.__file__).resolve().parent / "bin" / "spark-class")
    base.mkdir(parents=True, exist_ok=True)
    (base / "conf").mkdir(exist_ok=True)  # empty: no spark-defaults.conf from anywhere else
    env = {
        **env,
        "SPARK_HOME": str(Path(pyspark.__file__).resolve().parent),
        "SPARK_CONF_DIR": str(base / "conf"),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(base / "logs"),
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    started: list[subprocess.Popen] = []

    def start(command: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        started.append(process)
        return process

    master_port, master_ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    try:
        start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
               "--port", str(master_port), "--webui-port", str(master_ui)], base / "master.log")
        worker_processes = [
            start([spark_class, DAEMON_CLASS, master_url, "--host", "127.0.0.1",
                   "--port", str(free_port()), "--webui-port", str(free_port()), "--cores", "1",
                   "--memory", memory, "--work-dir", str(base / f"work{i}")], base / f"worker{i}.log")
            for i in range(workers)
        ]

        def alive() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{master_ui}/json/", timeout=5) as response:
                    return json.loads(response.read()).get("aliveworkers", 0)
            except (OSError, ValueError):
                return 0

        deadline = time.monotonic() + 180
        while alive() < workers:
            if time.monotonic() > deadline:
                logs = "\n".join((base / name).read_text(errors="replace")[-2000:] for name in ("master.log", "worker0.log"))
                raise TimeoutError(f"{workers} Spark worker(s) did not register with the master within 180s\n{logs}")
            time.sleep(1)
        # Each Popen's pid is spark-class (or the JVM it execs); the executors are below it.
        yield Standalone(master_url=master_url, worker_pids=[p.pid for p in worker_processes])
    finally:
        for process in reversed(started):
            stop_group(process)


# --- steps ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepResult:
    mode: str
    size: int
    step: str
    rows: int
    seconds: float
    peaks: MemoryPeaks
    disk: int  # bytes under the lake root after the step
    ok: bool
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run_step(command: Sequence[str], *, log: Path, env: dict, daemon_pids: Sequence[int], interval: float,
             timeout: float) -> tuple[float, MemoryPeaks, int]:
    """Run one CLI step in a session of its own while sampling its memory; (seconds, peaks, exit code).
    Whatever it leaves behind in its process group is killed when it ends."""
    marker = uuid.uuid4().hex
    env = {**env, MARKER_VARIABLE: marker}
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=REPO, start_new_session=True)
        try:
            with RssSampler(process.pid, marker=marker, daemon_pids=daemon_pids, interval=interval) as sampler:
                try:
                    code = process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    code = -1
            seconds = time.perf_counter() - started
        finally:  # also on Ctrl-C or SIGTERM: the step's JVM and workers go with it
            stop_group(process, grace=1.0)
    # Ray's processes may outlive the step outside its group; they carry its marker.
    for pid in _read_processes().keys() - {os.getpid()}:
        if _owned_by(pid, os.getuid()) and _has_marker(pid, marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return seconds, sampler.peaks, code


def train_settings_fields() -> set[str]:
    """The fields of TrainSettings on this checkout (negative_sample_rate exists or not)."""
    from lakescore.config import TrainSettings

    return {f.name for f in dataclasses.fields(TrainSettings)}


def write_config(path: Path, *, lake_root: Path, master: str, executor_memory: str) -> None:
    """The lakescore TOML every step of one size and mode reads (`--config`)."""
    path.write_text(
        "\n".join([
            "[lake]",
            f"root = {json.dumps(str(lake_root))}",
            "[spark]",
            f"master = {json.dumps(master)}",
            "[spark.conf]",
            f'"spark.executor.memory" = {json.dumps(executor_memory)}',
            "",
        ])
    )


def step_commands(size: int, cores: int, args: argparse.Namespace, config: Path, fields: set[str]) -> list[tuple[str, int, list[str], str]]:
    """(step, rows it handles, command, note) for one size: generate, generate-window, train, score."""
    cli = [str(LAKESCORE)]
    common = ["--config", str(config)]
    window_rows = window_day_rows(size)
    generate_sets = ["--set", f"spark.shuffle_partitions={max(4, size // 500_000)}"]

    def generate(days: int, rows_per_day: int, start: dt.date, seed: int) -> list[str]:
        return [*cli, "generate", *common, "--days", str(days), "--rows-per-day", str(rows_per_day),
                "--start-date", start.isoformat(), "--seed", str(seed),
                # As benchmarks/generate.py: accounts grow with the rows; files so that each core writes.
                "--accounts", str(max(1000, rows_per_day // 4)),
                "--set", f"generate.files_per_day={max(2 * cores, size // 4_000_000)}", *generate_sets]

    first, last = SCORED_DAY, SCORED_DAY + dt.timedelta(days=WINDOW_DAYS)
    train = [*cli, "train", *common, "--epochs", str(args.epochs), "--workers", str(cores),
             "--set", f"train.first_date={first}", "--set", f"train.last_date={last}",
             "--set", "train.validation_days=1", "--set", "train.test_days=1"]
    if "negative_sample_rate" in fields:
        rate = min(1.0, args.train_normals / size)
        train += ["--set", f"train.negative_sample_rate={rate:.6g}"]
        train_note = f"negative_sample_rate={rate:.4g} (~{format_size(args.train_normals)} normals kept)"
    else:
        train_note = "NOT downsampled: train.negative_sample_rate is not a setting on this checkout"
    score = [*cli, "score", *common, "--run-date", SCORED_DAY.isoformat()]
    return [
        ("generate", size, generate(1, size, SCORED_DAY, 7), "1 day"),
        ("generate-window", WINDOW_DAYS * window_rows,
         generate(WINDOW_DAYS, window_rows, SCORED_DAY + dt.timedelta(days=1), 8), f"{WINDOW_DAYS} days of N/10"),
        ("train", size + WINDOW_DAYS * window_rows, train, train_note),
        ("score", size, score, "nightly job, day D"),
    ]


def step_env(local_dir: Path) -> dict:
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "RAY_TRAIN_V2_ENABLED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Shuffle and spill files on the lake's disk, which the disk check measured (driver in
        # local mode, executors of the standalone workers).
        "SPARK_LOCAL_DIRS": str(local_dir),
        # The nightly job hashes the sensitive account_id with a keyed hash; a key for this run only.
        "LAKESCORE_HASH_KEY": uuid.uuid4().hex,
        # This checkout's code, whichever checkout the venv's editable install points at (its
        # finder comes after sys.path); Spark's and Ray's workers inherit it.
        "PYTHONPATH": str(REPO),
    }
    for key in ("PYSPARK_SUBMIT_ARGS", "LAKESCORE_CONFIG", "RAY_ADDRESS"):
        env.pop(key, None)
    return env


def run_mode(mode: str, sizes: list[int], args: argparse.Namespace, base: Path, fields: set[str],
             bytes_per_row: list[float], say: Callable[[str], None],
             on_step: Callable[[list[StepResult]], None] = lambda results: None) -> list[StepResult]:
    """Every size of one mode, smallest first; `bytes_per_row` (one element) is updated once measured;
    `on_step` gets this mode's results so far after each step."""
    kind, cores = MODES[mode]
    mode_dir = base / mode
    local_dir = mode_dir / "spark-local"
    local_dir.mkdir(parents=True, exist_ok=True)
    env = step_env(local_dir)
    results: list[StepResult] = []
    with contextlib.ExitStack() as stack:
        if kind == "standalone":
            cluster = stack.enter_context(standalone_cluster(mode_dir / "cluster", cores, env, args.worker_memory))
            master, daemon_pids = cluster.master_url, cluster.worker_pids
        else:
            master, daemon_pids = f"local[{cores}]", []
        for size in sizes:
            check = check_disk(size, bytes_per_row[0], shutil.disk_usage(base).free)
            if not check.fits:
                say(f"[{mode}] {format_size(size)} REFUSED, would not fit the disk: {check.explain()}")
                continue
            say(f"[{mode}] {format_size(size)}: {check.explain()}")
            lake_root = mode_dir / f"lake-{format_size(size)}"
            config = mode_dir / f"lakescore-{format_size(size)}.toml"
            write_config(config, lake_root=lake_root, master=master, executor_memory=args.executor_memory)
            try:
                for step, rows, command, note in step_commands(size, cores, args, config, fields):
                    log = mode_dir / f"{format_size(size)}-{step}.log"
                    seconds, peaks, code = run_step(command, log=log, env=env, daemon_pids=daemon_pids,
                                                    interval=args.interval, timeout=args.step_timeout)
                    result = StepResult(mode, size, step, rows, seconds, peaks, disk_bytes(lake_root), code == 0, note)
                    results.append(result)
                    on_step(results)
                    say(f"[{mode}] {format_size(size)} {step}: exit {code}, {seconds:.1f}s, "
                        f"{result.rows_per_s:,.0f} rows/s, all processes {peaks.total / MIB:,.0f} MiB at peak ({note}); log {log}")
                    if code != 0:
                        say(Path(log).read_text(errors="replace")[-3000:])
                        break
                    if step == "generate":
                        table = lake_root / "tables"
                        bytes_per_row[0] = disk_bytes(table) / size
                        say(f"[{mode}] measured {bytes_per_row[0]:.1f} bytes/row on disk (table {table})")
            finally:
                if not args.keep:
                    shutil.rmtree(lake_root, ignore_errors=True)
                    shutil.rmtree(local_dir, ignore_errors=True)
                    local_dir.mkdir(parents=True, exist_ok=True)
    return results


# --- report ---------------------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value / MIB:,.0f}" if value else "-"


def mode_table(results: list[StepResult]) -> str:
    """One markdown table (size x step) of one mode's results."""
    lines = [
        "| size | step | s | rows/s | driver JVM | executor JVMs | Python driver | Py worker max / sum | "
        "Ray worker max / sum | all | lake disk | note |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        p = r.peaks
        lines.append(
            f"| {format_size(r.size)} | {r.step}{'' if r.ok else ' (FAILED)'} | {r.seconds:,.1f} | {r.rows_per_s:,.0f} | "
            f"{mib(p.peak_sum['driver_jvm'])} | {mib(p.peak_sum['executor_jvm'])} | {mib(p.peak_sum['python_driver'])} | "
            f"{mib(p.peak_single['python_worker'])} / {mib(p.peak_sum['python_worker'])} | "
            f"{mib(p.peak_single['ray_worker'])} / {mib(p.peak_sum['ray_worker'])} | {mib(p.total)} | "
            f"{r.disk / MIB:,.1f} MiB | {r.note} |"
        )
    return "\n".join(lines)


def flat_checks(results: list[StepResult]) -> list[str]:
    """PASS/FAIL lines: the nightly job's driver and Python workers, and training's driver, hold
    the same peak memory at the largest size as at the smallest (within FLAT_TOLERANCE)."""
    lines = []
    for step, kinds in (
        ("score", (("driver JVM", "driver_jvm", "sum"), ("executor JVMs", "executor_jvm", "sum"),
                   ("Python driver", "python_driver", "sum"), ("Python worker (one)", "python_worker", "single"),
                   ("Python workers (sum)", "python_worker", "sum"))),
        ("train", (("driver JVM", "driver_jvm", "sum"), ("Python driver", "python_driver", "sum"))),
    ):
        done = sorted((r for r in results if r.step == step and r.ok), key=lambda r: r.size)
        if len(done) < 2:
            continue
        small, large = done[0], done[-1]
        for label, kind, how in kinds:
            a = (small.peaks.peak_sum if how == "sum" else small.peaks.peak_single)[kind]
            b = (large.peaks.peak_sum if how == "sum" else large.peaks.peak_single)[kind]
            if not a or not b:
                continue
            ratio = b / a
            verdict = "PASS" if ratio <= 1 + FLAT_TOLERANCE else "FAIL"
            lines.append(
                f"{verdict} [{small.mode}] {step} {label}: {mib(a)} MiB at {format_size(small.size)} -> {mib(b)} MiB at "
                f"{format_size(large.size)} ({ratio:.2f}x, target <= {1 + FLAT_TOLERANCE:.2f}x)"
            )
    return lines


def scaling_lines(results: list[StepResult]) -> list[str]:
    """Per step and size, rows/s at two cores over one, local and standalone: the parallel efficiency."""
    by = {(r.mode, r.size, r.step): r for r in results if r.ok}
    lines = []
    for one, two in (("local1", "local2"), ("standalone1", "standalone2")):
        for (mode, size, step), r1 in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            r2 = by.get((two, size, step))
            if mode != one or r2 is None:
                continue
            speedup = r2.rows_per_s / r1.rows_per_s
            lines.append(f"{one}->{two} {format_size(size)} {step}: {speedup:.2f}x rows/s (efficiency {speedup / 2:.0%})")
    return lines


def fit_linear(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares of seconds = fixed + rows / rate over (rows, seconds) at two or more sizes;
    (fixed, rate), or None when there are fewer than two sizes or the fit has no positive cost
    per row and no non-negative fixed part (noise swamps what the rows cost)."""
    points = sorted(points)
    n = len(points)
    mean_x = sum(x for x, _ in points) / n if n else 0.0
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if n < 2 or not var:
        return None
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    fixed = mean_y - slope * mean_x
    if slope <= 0 or fixed < 0:
        return None
    return fixed, 1.0 / slope


EXTRAPOLATED_ROWS = (10**9, 10**10)
EXECUTORS = (10, 100, 1000)


def extrapolation_lines(results: list[StepResult], bytes_per_row: float) -> list[str]:
    """A markdown table: each step's wall time for 1B and 10B rows on N one-core executors.

    Per step, seconds = fixed + rows / rate is fitted over the sizes of the one-core mode
    (standalone1, else local1); the parallel efficiency e is rows/s at two cores over twice that at
    one, at the largest size both ran (standalone, else local), capped at 1; N executors are
    assumed to run at N x rate x e (no further loss: generate and score have no shuffle of the
    scored rows, each task is independent), plus the fixed part once. Training's rows are its
    window's (1.2 N), read and downsampled; its fixed part includes training on the kept rows.
    """
    ok = [r for r in results if r.ok]
    lines = [
        "| step | 1-core rows/s (fit) | fixed s | efficiency 1->2 cores | "
        + " | ".join(f"{format_size(rows)} rows, N={n}" for rows in EXTRAPOLATED_ROWS for n in EXECUTORS)
        + " |",
        "|---|--:|--:|--:|" + "--:|" * (len(EXTRAPOLATED_ROWS) * len(EXECUTORS)),
    ]
    for step in ("generate", "generate-window", "train", "score"):
        for one, two in (("standalone1", "standalone2"), ("local1", "local2")):
            single = [(r.rows, r.seconds) for r in ok if r.mode == one and r.step == step]
            if single:
                break
        if not single:
            continue
        fit = fit_linear(single)
        if fit is None:
            lines.append(f"| {step} ({one}) | not fitted: needs two or more sizes whose seconds grow with the rows "
                         f"(measured: {', '.join(f'{format_size(r)} {t:,.0f}s' for r, t in sorted(single))}) |")
            continue
        fixed, rate = fit
        sizes_both = sorted({r.size for r in ok if r.mode == one and r.step == step}
                            & {r.size for r in ok if r.mode == two and r.step == step})
        efficiency = 1.0
        if sizes_both:
            size = sizes_both[-1]
            r1 = next(r for r in ok if (r.mode, r.size, r.step) == (one, size, step))
            r2 = next(r for r in ok if (r.mode, r.size, r.step) == (two, size, step))
            efficiency = min(1.0, r2.rows_per_s / (2 * r1.rows_per_s))
        cells = []
        for rows in EXTRAPOLATED_ROWS:
            step_rows = rows_on_disk(rows) if step == "train" else rows
            if step == "generate-window":
                step_rows = WINDOW_DAYS * window_day_rows(rows)
            for n in EXECUTORS:
                cells.append(_duration(fixed + step_rows / (rate * n * efficiency)))
        lines.append(f"| {step} ({one}) | {rate:,.0f} | {fixed:,.0f} | {efficiency:.0%} | " + " | ".join(cells) + " |")
    disk = " | ".join(f"{rows_on_disk(rows) * bytes_per_row / 2**30:,.0f} GiB" for rows in EXTRAPOLATED_ROWS)
    lines.append("")
    lines.append(f"Disk at {bytes_per_row:.1f} bytes/row (day + window: 1.2 x rows): 1B -> 10B: {disk}")
    return lines


def _duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:,.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds:,.0f} s"


def build_report(results: list[StepResult], header: str, bytes_per_row: float = ASSUMED_BYTES_PER_ROW) -> str:
    parts = [header]
    for mode in MODES:
        mine = [r for r in results if r.mode == mode]
        if mine:
            parts += [f"### {mode}", "", mode_table(mine), ""]
    checks = [line for mode in MODES for line in flat_checks([r for r in results if r.mode == mode])]
    if checks:
        parts += ["Memory flat (largest vs smallest size; a measurement, not a test):", "", "```", *checks, "```", ""]
    scaling = scaling_lines(results)
    if scaling:
        parts += ["Scaling with cores:", "", "```", *scaling, "```", ""]
    if any(r.ok for r in results):
        parts += ["Extrapolation (seconds = fixed + rows / (N x 1-core rate x efficiency); assumptions in "
                  "extrapolation_lines' docstring):", "", *extrapolation_lines(results, bytes_per_row), ""]
    return "\n".join(parts)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10M,30M,100M", help="Rows of the scored day, comma-separated: 300K, 1M, 10M, 1.5M, 1B.")
    parser.add_argument("--modes", default="local1,local2,standalone1,standalone2",
                        help=f"Comma-separated, of {', '.join(MODES)}.")
    parser.add_argument("--lake", type=Path, default=None,
                        help="Folder under which a new folder holds the lake roots (default: the temp folder on the disk with the most free space).")
    parser.add_argument("--keep", action="store_true", help="Keep the lake roots, logs and configs (default: delete at the end).")
    parser.add_argument("--report", type=Path, default=None, help="Also write the markdown tables to this file.")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs (the point is scaling, not quality).")
    parser.add_argument("--train-normals", type=parse_size, default=parse_size("1M"),
                        help="Normal rows training keeps (train.negative_sample_rate = this / N).")
    parser.add_argument("--interval", type=float, default=0.2, help="Seconds between memory samples.")
    parser.add_argument("--executor-memory", default="3g", help="spark.executor.memory on the standalone workers.")
    parser.add_argument("--worker-memory", default="4g", help="Memory each standalone worker offers.")
    parser.add_argument("--step-timeout", type=float, default=6 * 3600, help="Seconds one step may run.")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the step running and the standalone daemons are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    sizes = parse_sizes(args.sizes)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if not LAKESCORE.exists():
        parser.error(f"{LAKESCORE} not found: run `make setup` (this runs the real CLI of the project's venv)")

    parent = args.lake if args.lake is not None else roomiest_disk_folder()
    parent.mkdir(parents=True, exist_ok=True)
    # A folder of its own even under --lake, so that deleting it at the end deletes nothing else.
    base = Path(tempfile.mkdtemp(prefix="lakescore-scale-", dir=parent))
    free = shutil.disk_usage(base).free
    refused = [check_disk(s, ASSUMED_BYTES_PER_ROW, free) for s in sizes]
    refused = [c for c in refused if not c.fits]
    if refused:
        print("refused before starting: these sizes would not fit the disk at the assumed "
              f"{ASSUMED_BYTES_PER_ROW:g} bytes/row (measured again at the smallest size):", file=sys.stderr)
        for check in refused:
            print(f"  {check.explain()}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        return 2
    fields = train_settings_fields()
    started = dt.datetime.now(dt.timezone.utc)

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"lake roots under {base} ({free / 2**30:.1f} GiB free); sizes {', '.join(map(format_size, sizes))}; modes {', '.join(modes)}")
    if "negative_sample_rate" not in fields:
        say("training is NOT downsampled: train.negative_sample_rate is not a setting on this checkout")
    results: list[StepResult] = []
    bytes_per_row = [ASSUMED_BYTES_PER_ROW]
    command = "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:])

    def report_of(done: list[StepResult]) -> str:
        header = (
            f"Scale curve: `{command}`, started {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores; "
            f"sizes {', '.join(map(format_size, sizes))} (rows of the scored day D; the window adds "
            f"{WINDOW_DAYS} x N/10); peak RSS in MiB, sampled every {args.interval:g}s; "
            f"{bytes_per_row[0]:.1f} bytes/row on disk.\n"
        )
        return build_report(done, header, bytes_per_row[0])

    def save(mode_results: list[StepResult]) -> None:
        # Rewritten after every step: a run stopped hours in keeps what it measured.
        if args.report:
            args.report.write_text(report_of(results + mode_results))

    try:
        for mode in modes:
            results += run_mode(mode, sizes, args, base, fields, bytes_per_row, say, on_step=save)
    finally:
        report = report_of(results)
        print("\n" + report, flush=True)
        if args.report:
            args.report.write_text(report)
            print(f"report written to {args.report}")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
