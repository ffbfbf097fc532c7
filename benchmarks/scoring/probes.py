"""What the scoring benchmark reads while a stage runs: CPU seconds and RSS from /proc (the
machine's, the JVM's, its JIT compiler threads' and its Python workers'; Linux only), the JVM's
heap through its management beans, and the stage's own wall time through the Spark UI's REST API.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import urllib.request

import numpy as np


def jvm_pid(spark) -> int:
    """The driver JVM's pid: in local mode, also the executor's."""
    return spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()


def _stat_fields(stat_path: str) -> list[str]:
    """The fields of a process's or thread's /proc stat file after its command name: state (0),
    ppid (1), ..., utime (11), stime (12)."""
    with open(stat_path) as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(fields: list[str], tick: int) -> float:
    """User + system CPU seconds from `_stat_fields`."""
    return (int(fields[11]) + int(fields[12])) / tick


def spark_processes(jvm_pid: int) -> tuple[tuple[float, float], dict[int, tuple[float, float]]]:
    """(RSS MiB, CPU seconds so far) of the JVM, and of each of its Python workers by pid, from
    /proc (Linux only)."""
    parents, usage = {}, {}
    tick, page_mib = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE") / 2**20
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(f"/proc/{entry.name}/stat")
            with open(f"/proc/{entry.name}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        usage[pid] = (pages * page_mib, _cpu_seconds(fields, tick))

    def descends(pid: int) -> bool:
        while pid in parents and pid > 1:
            pid = parents[pid]
            if pid == jvm_pid:
                return True
        return False

    workers = {pid: usage[pid] for pid in usage if pid != jvm_pid and descends(pid) and _is_python_worker(pid)}
    return usage.get(jvm_pid, (0.0, 0.0)), workers


def _is_python_worker(pid: int) -> bool:
    """A Python process running pyspark's daemon or worker. The program is checked as well as the
    arguments: a process the JVM forks to run a command (Hadoop's local file system runs `chmod`
    and `stat` while Delta writes) carries the JVM's command line, pyspark's jars included, and
    its memory, until it execs."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"python" in os.path.basename(argv[0]) and any(b"pyspark" in arg for arg in argv[1:])


def python_cpu(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> float:
    """CPU seconds the Python workers spent between two `spark_processes` readings."""
    return sum(cpu - before.get(pid, (0.0, 0.0))[1] for pid, (_, cpu) in after.items())


class StageTimer:
    """Times an action and, through the Spark UI's REST API, its longest stage (the scoring one):
    the stage's own wall time (submission to completion) leaves out planning, the Delta commit
    and catalog calls around it. Falls back to the action's time when the UI is off."""

    def __init__(self, spark):
        self.spark = spark
        sc = spark.sparkContext
        self.jvm_pid = jvm_pid(spark)
        self.api = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}" if sc.uiWebUrl else None

    def measure(self, key: str, action) -> tuple[float, float, tuple[float, float, float, float]]:
        """(stage seconds, action seconds, CPU seconds of the stage: the machine's, the JVM's, the
        Python workers' and the JVM's JIT compiler threads'). The Python workers are read before
        and after the action (only its scoring stage runs Python), the rest between the stage's
        submission and completion."""
        group = f"bench-{key}-{time.monotonic_ns()}"
        self.spark.sparkContext.setJobGroup(group, group)
        _, workers = spark_processes(self.jvm_pid)
        sampler = CpuSampler(self.jvm_pid)
        sampler.start()
        started = time.perf_counter()
        try:
            action()
        finally:
            self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
            sampler.stop()
        seconds = time.perf_counter() - started
        workers_cpu = python_cpu(workers, spark_processes(self.jvm_pid)[1])
        window = self._stage_window(group) or (sampler.times[0], sampler.times[-1])
        machine, jvm, jit = sampler.between(*window)
        return window[1] - window[0], seconds, (machine, jvm, workers_cpu, jit)

    def _stage_window(self, group: str) -> tuple[float, float] | None:
        """(submission, completion) in epoch seconds of the longest stage of `group`: the scoring
        stage on either path (the row count scans briefly, from footers; other stages read Delta
        logs; on the files path the scoring stage's input is its tasks, not the rows)."""
        if self.api is None:
            return None
        stage_ids = [s for job in self._get("/jobs") if job.get("jobGroup") == group for s in job["stageIds"]]
        windows = [
            (_ui_time(attempt["submissionTime"]), _ui_time(attempt["completionTime"]))
            for stage_id in stage_ids
            for attempt in self._get(f"/stages/{stage_id}")
            if attempt.get("completionTime")
        ]
        return max(windows, key=lambda w: w[1] - w[0]) if windows else None

    def _get(self, path: str):
        with urllib.request.urlopen(self.api + path, timeout=30) as response:
            return json.load(response)


def _ui_time(text: str) -> float:
    return dt.datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class _Sampler(threading.Thread):
    """A thread that calls `_sample` now, every `interval` seconds, and once more on `stop`."""

    interval = 0.1

    def __init__(self):
        super().__init__(daemon=True)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._sample()

    def _sample(self) -> None:
        raise NotImplementedError


class CpuSampler(_Sampler):
    """Samples every 20 ms how many CPU seconds the machine (all cores, all processes; /proc/stat),
    the JVM (/proc/PID/stat) and the JVM's JIT compiler threads (/proc/PID/task) have spent, so
    that a stage's CPU time can be read off between its submission and completion: the work a
    stage's wall time on a shared 2-core machine only shows through the noise. Linux only (NaN
    elsewhere)."""

    interval = 0.02

    def __init__(self, jvm_pid: int):
        super().__init__()
        self.jvm_pid = jvm_pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.times: list[float] = []
        self.machine: list[float] = []
        self.jvm: list[float] = []
        self.jit: list[float] = []
        self._is_compiler: dict[str, bool] = {}  # thread id -> whether it is a JIT compiler thread
        self._compiler_cpu: dict[str, float] = {}  # last reading; kept when HotSpot stops the thread
        self._sample()

    def between(self, start: float, end: float) -> tuple[float, float, float]:
        """(machine, JVM, JIT compilers) CPU seconds between two epoch times."""
        return tuple(
            float(np.interp(end, self.times, v) - np.interp(start, self.times, v)) for v in (self.machine, self.jvm, self.jit)
        )

    def _jit_cpu(self) -> float:
        """CPU seconds of the JVM's compiler threads ("C1 CompilerThre", "C2 CompilerThre"), those
        HotSpot has stopped included (it adds and stops them as its compile queue grows and drains)."""
        for tid in os.listdir(f"/proc/{self.jvm_pid}/task"):
            if tid not in self._is_compiler:
                try:
                    with open(f"/proc/{self.jvm_pid}/task/{tid}/comm") as f:
                        self._is_compiler[tid] = "CompilerThre" in f.read()
                except OSError:
                    continue
            if self._is_compiler[tid]:
                try:
                    self._compiler_cpu[tid] = _cpu_seconds(_stat_fields(f"/proc/{self.jvm_pid}/task/{tid}/stat"), self.tick)
                except OSError:
                    pass
        return sum(self._compiler_cpu.values())

    def _sample(self) -> None:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
            # user, nice, system, irq, softirq: not idle, iowait, or time the hypervisor gave to
            # other machines (steal); guest time is already inside user.
            machine = (sum(ticks[0:3]) + ticks[5] + ticks[6]) / self.tick
            jvm = _cpu_seconds(_stat_fields(f"/proc/{self.jvm_pid}/stat"), self.tick)
            jit = self._jit_cpu()
        except (OSError, IndexError, ValueError):
            machine = jvm = jit = float("nan")
        self.times.append(time.time())
        self.machine.append(machine)
        self.jvm.append(jvm)
        self.jit.append(jit)


class RssSampler(_Sampler):
    """Samples every 0.1 s: peak RSS of the JVM, of its largest Python worker, and of all its
    Python workers together (/proc, Linux only), the heap the JVM has committed, and its heap in
    use right after its latest garbage collection (MiB). The JVM's RSS counts the heap G1 has
    committed, garbage included, and G1 commits more as a stage goes on; the heap after a young
    collection still counts old garbage G1 has not needed to collect yet (the memory workloads
    end with `heap_after_full_gc`)."""

    def __init__(self, jvm_pid: int, spark):
        super().__init__()
        self.jvm_pid = jvm_pid
        management = spark.sparkContext._jvm.java.lang.management
        self._memory = management.ManagementFactory.getMemoryMXBean()
        self._collectors = list(management.ManagementFactory.getGarbageCollectorMXBeans())
        self._heap_pools = {
            pool.getName()
            for pool in management.ManagementFactory.getMemoryPoolMXBeans()
            if pool.getType() == management.MemoryType.HEAP
        }
        self.peaks = {"jvm": 0.0, "worker": 0.0, "workers": 0.0, "jvm_heap_committed": 0.0, "jvm_heap_after_gc": 0.0}
        self._sample()

    def _sample(self) -> None:
        (jvm_rss, _), workers = spark_processes(self.jvm_pid)
        rss = [r for r, _ in workers.values()]
        self.peaks["jvm"] = max(self.peaks["jvm"], jvm_rss)
        self.peaks["worker"] = max([self.peaks["worker"]] + rss)
        self.peaks["workers"] = max(self.peaks["workers"], sum(rss))
        committed = self._memory.getHeapMemoryUsage().getCommitted() / 2**20
        self.peaks["jvm_heap_committed"] = max(self.peaks["jvm_heap_committed"], committed)
        self.peaks["jvm_heap_after_gc"] = max(self.peaks["jvm_heap_after_gc"], self._heap_after_gc())

    def heap_after_full_gc(self) -> float:
        """Run a full collection and return the heap still in use (MiB): what the JVM holds once
        the stage is done (a peak after a young collection also counts old garbage that G1 has
        not needed to collect yet)."""
        self._memory.gc()
        return self._memory.getHeapMemoryUsage().getUsed() / 2**20

    def _heap_after_gc(self) -> float:
        """Heap in use (MiB) after the JVM's most recent collection (0 before the first)."""
        latest = None
        for collector in self._collectors:
            info = collector.getLastGcInfo()  # com.sun.management.GcInfo, None before the first
            if info is not None and (latest is None or info.getEndTime() > latest.getEndTime()):
                latest = info
        if latest is None:
            return 0.0
        after = latest.getMemoryUsageAfterGc()
        return sum(after[name].getUsed() for name in self._heap_pools if name in after) / 2**20
