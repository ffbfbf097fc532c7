"""TEST HELPERS: real multi-process clusters on this machine, started and stopped by the tests.

- `spark_standalone(...)`: a Spark standalone master and one worker (`spark-class ...Master` /
  `...Worker`) from pyspark's own bin folder, bound to 127.0.0.1, on free ports;
- `ray_two_nodes(...)`: a Ray head (`ray start --head`) and a second node (`ray start --address`),
  each with one CPU and a temp folder of its own;
- `bare_python(...)`: a virtual environment with this one's third-party packages but NOT lakescore,
  which is what an executor of a real cluster has before code shipping.

Every daemon starts in a session of its own and is stopped through its process group, then by
its own temp folder on the command line, at the end of the `with` block, pass or fail. Nothing
else on the machine is touched (no `ray stop`, which would stop every Ray on it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyspark

VENV_BIN = Path(sys.executable).parent
SPARK_HOME = Path(pyspark.__file__).resolve().parent
SITE_PACKAGES = Path(pyspark.__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, logs: Sequence[Path] = ()) -> None:
    """Poll `check` until it is true; on timeout fail with `what` and the tail of each log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}:\n{tail(p)}" for p in logs)
    raise TimeoutError(f"{what} within {timeout:.0f}s\n{tails}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(unreadable: {exc})"


def start_daemon(command: Sequence[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """Start `command` in a new session (its own process group), output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )


def stop_group(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group of `process`, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not processes_in_group(process.pid):
            return


def run_job(command: Sequence[str], log: Path, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a job to completion in a session of its own, output to `log`; its whole process
    group (a JVM it started, Python workers) is killed when it ends or after `timeout` seconds."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            stop_group(process, grace=1.0)
    output = Path(log).read_text(errors="replace")
    if returncode is None:
        raise TimeoutError(f"{command[0]} ... did not finish within {timeout:.0f}s; its output ends:\n{output[-4000:]}")
    return subprocess.CompletedProcess(list(command), returncode, output, "")


def processes_in_group(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (Linux /proc)."""
    return [pid for pid, group, _, _ in _processes() if group == pgid]


def processes_mentioning(marker: str) -> list[int]:
    """Live pids whose command line contains `marker` (a temp folder only these tests create)."""
    return [pid for pid, _, _, cmdline in _processes() if marker in cmdline and pid != os.getpid()]


def kill_processes_mentioning(marker: str) -> None:
    for pid in processes_mentioning(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in session `sid`."""
    return [(pid, cmdline) for pid, _, session, cmdline in _processes() if session == sid]


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, process group, session, command line) of every live process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append((int(entry.name), int(fields[2]), int(fields[3]), cmdline))
        except (OSError, ValueError):
            continue
    return found


def bare_python(dest: Path) -> Path:
    """A virtual environment that sees this one's third-party packages but not lakescore.

    Its site-packages holds one .pth line naming this environment's site-packages as a plain path,
    so the editable-install hook there (which is what makes lakescore importable) never runs.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (dest / "lib" / version / "site-packages" / "third_party.pth").write_text(f"{SITE_PACKAGES}\n")
    return dest / "bin" / "python"


def clean_env(**extra: str) -> dict:
    """This process's environment without the variables that would point a child at this checkout
    or at another Spark/Ray (PYTHONPATH, PYSPARK_*, SPARK_*, RAY_ADDRESS)."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("PYSPARK_", "SPARK_", "LAKESCORE_")) and k not in ("PYTHONPATH", "RAY_ADDRESS")
    }
    env.update(extra)
    return env


def read_spark_properties(path: Path) -> dict[str, str]:
    """Spark's properties syntax as cluster_configs uses it: `spark.key value` lines and `#`
    comments. A key set twice or a line continuation is refused (Spark would keep the last value
    silently, or join lines)."""
    properties: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(spark\.\S+)\s+(\S.*)$", line)
        if not match or match.group(2).endswith("\\"):
            raise ValueError(f"{path}:{number}: not a one-line `spark.key value` property: {line!r}")
        key, value = match.groups()
        if key in properties:
            raise ValueError(f"{path}:{number}: {key} is set twice")
        properties[key] = value
    return properties


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# --- Spark standalone -----------------------------------------------------------------------------


@dataclass
class SparkStandalone:
    master_url: str  # spark://127.0.0.1:PORT
    master_webui: str  # http://127.0.0.1:PORT
    worker_webui: str
    work_dir: Path  # the worker's folder: one sub-folder per application, one per executor
    env: dict
    logs: list[Path] = field(default_factory=list)

    def master_state(self) -> dict:
        return http_json(self.master_webui + "/json/")

    def submit(self, args: Sequence[str], log: Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        """`spark-submit --master <this cluster> ARGS` (see `run_job`)."""
        command = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", self.master_url, *args]
        return run_job(command, log, self.env, cwd, timeout)


@contextlib.contextmanager
def spark_standalone(base: Path, cores: int = 2, memory: str = "1g") -> Iterator[SparkStandalone]:
    """A master and one worker on 127.0.0.1; both process groups (the worker's holds its
    executors and their Python workers) are killed on exit."""
    base.mkdir(parents=True, exist_ok=True)
    conf_dir = base / "conf"  # empty: no spark-defaults.conf from anywhere else
    conf_dir.mkdir(exist_ok=True)
    work_dir = base / "work"
    ports = {name: free_port() for name in ("master", "master_ui", "worker", "worker_ui")}
    env = clean_env(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_CONF_DIR=str(conf_dir),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOG_DIR=str(base / "logs"),
        # The master's REST submission server would take port 6066 on every interface.
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
    )
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    master_log, worker_log = base / "master.log", base / "worker.log"
    started: list[subprocess.Popen] = []
    try:
        started.append(start_daemon(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(ports["master"]), "--webui-port", str(ports["master_ui"])],
            master_log, env,
        ))
        cluster = SparkStandalone(
            master_url=f"spark://127.0.0.1:{ports['master']}",
            master_webui=f"http://127.0.0.1:{ports['master_ui']}",
            worker_webui=f"http://127.0.0.1:{ports['worker_ui']}",
            work_dir=work_dir,
            env=env,
            logs=[master_log, worker_log],
        )
        started.append(start_daemon(
            [spark_class, "org.apache.spark.deploy.worker.Worker", cluster.master_url, "--host", "127.0.0.1",
             "--port", str(ports["worker"]), "--webui-port", str(ports["worker_ui"]),
             "--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir)],
            worker_log, env,
        ))

        def worker_alive() -> bool:
            try:
                return cluster.master_state().get("aliveworkers") == 1
            # Not up yet: no listener, or (seen on a quiet host) the UI's HTML page served
            # before its /json/ endpoint is attached.
            except (OSError, json.JSONDecodeError):
                return False

        wait_until(worker_alive, 90, "the Spark worker did not register with the master", cluster.logs)
        yield cluster
    finally:
        for process in reversed(started):
            stop_group(process)


# --- Ray ------------------------------------------------------------------------------------------


@dataclass
class RayNodes:
    address: str  # GCS address the second node and drivers join: 127.0.0.1:PORT
    temp_dirs: list[Path]  # [head, second node]: each node's sessions, logs and sockets
    env: dict  # what a driver needs to join (the cluster's auth token)


@contextlib.contextmanager
def ray_two_nodes(cpus_per_node: int = 1, object_store_bytes: int = 100 * 1024**2) -> Iterator[RayNodes]:
    """`ray start --head` and `ray start --address` on this machine, each node with its own temp
    folder (short paths under /tmp: Ray's socket names have a length limit) and its own ports.

    Token authentication with a token made for this cluster only, passed by environment, so the
    user's ~/.ray/auth_token is neither read nor written. Ray registers the nodes under this
    machine's routable address: `ray start` replaces 127.0.0.1 with it and refuses a second node
    when told to stay on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); traffic stays on this host.
    """
    root = Path(tempfile.mkdtemp(prefix="lsray-", dir="/tmp"))
    env = clean_env(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TRAIN_V2_ENABLED="1",
    )
    ray_bin = str(VENV_BIN / "ray")
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    started: list[subprocess.Popen] = []
    temp_dirs = [root / "head", root / "node2"]
    logs = [root / "head.log", root / "node2.log"]
    try:
        for i, (temp_dir, log) in enumerate(zip(temp_dirs, logs)):
            temp_dir.mkdir()
            command = [ray_bin, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                       f"--num-cpus={cpus_per_node}", "--num-gpus=0", f"--object-store-memory={object_store_bytes}",
                       # Two nodes on one machine: every port of the second must differ from the head's.
                       f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                       f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                       f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                       # 0 and 0: each worker process gets a port the OS picks.
                       "--min-worker-port=0", "--max-worker-port=0"]
            if i == 0:
                command += ["--head", f"--port={gcs_port}", "--include-dashboard=false"]
            else:
                command += [f"--address={address}"]
            started.append(start_daemon(command, log, env))
            wait_until(lambda: "Ray runtime started" in tail(log, 100_000), 120,
                       f"ray start ({'head' if i == 0 else 'second node'}) did not come up", logs[: i + 1])
        yield RayNodes(address=address, temp_dirs=temp_dirs, env=env)
    finally:
        for process in reversed(started):
            stop_group(process, grace=2.0)
        # Workers and agents a raylet started outside its group still name the node's temp folder.
        kill_processes_mentioning(str(root))
        shutil.rmtree(root, ignore_errors=True)
