"""What a job prints on stderr: lakescore's own lines and real warnings, not Spark's noise or py4j
tracebacks (lakescore/log4j2.properties, lakescore.spark)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lakescore.config import load_settings
from lakescore.spark import LOG4J2_PROPERTIES, default_spark_conf

ROOT = Path(__file__).resolve().parent.parent
# Lines every session printed before lakescore shipped its own log4j2 file.
SPARK_NOISE = (
    "Using Spark's default log4j profile",
    "Setting default log level to",
    "NativeCodeLoader",
    "resolves to a loopback address",
    "Couldn't find corresponding Hive SerDe",
    "METASTORE_FILTER_HOOK",
    "hive.internal.ss.authz.settings.applied.marker",
)


def driver_java_options(overrides: dict[str, str]) -> list[str]:
    settings = load_settings(overrides={"lake.root": "/lake", **overrides}, environ={})
    return shlex.split(default_spark_conf(settings)["spark.driver.extraJavaOptions"])


def test_the_driver_jvm_logs_with_lakescores_log4j2_file_at_warn_unless_told_otherwise():
    assert LOG4J2_PROPERTIES.is_file()
    assert driver_java_options({}) == [
        "-Dderby.system.home=/lake/_metastore",
        f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES}",
        "-Dlakescore.spark.logLevel=warn",
    ]
    assert "-Dlakescore.spark.logLevel=info" in driver_java_options({"spark.log_level": "INFO"})


def test_a_fork_that_runs_python_in_the_child_leaves_the_jvm_connections_of_other_threads_open(spark, caplog):
    """`ray.init` starts each Ray process with subprocess.Popen(preexec_fn=...): without the
    at-fork hook, the child shut down the sockets of this process's other py4j threads, and their
    next call logged a "Connection reset by peer" traceback before reconnecting."""
    caplog.set_level("INFO")  # py4j logs that traceback at INFO on the root logger
    client = spark.sparkContext._gateway._gateway_client
    jvm = spark.sparkContext._jvm
    first_call_done, forked = threading.Event(), threading.Event()
    seen = {}

    def local_port() -> int:
        # Not the connection itself: a reference to it here would keep it open in the child.
        return client.get_thread_connection().socket.getsockname()[1]

    def other_thread() -> None:
        seen["before"] = (jvm.java.lang.Math.abs(-1), local_port())
        first_call_done.set()  # its connection now waits, idle, in py4j's pool
        forked.wait(60)
        seen["after"] = (jvm.java.lang.Math.abs(-2), local_port())

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert first_call_done.wait(60)
    subprocess.run(["true"], preexec_fn=lambda: None, check=True)
    forked.set()
    thread.join(60)

    assert seen["before"][0] == 1 and seen["after"][0] == 2
    assert seen["after"][1] == seen["before"][1], "the thread had to open a new connection to the JVM"
    assert not [r for r in caplog.records if "Exception while sending command" in r.getMessage()]


@pytest.mark.slow
def test_a_job_that_succeeds_prints_its_own_lines_and_no_traceback_or_spark_noise(tmp_path):
    settings = load_settings(overrides={}, environ={})
    job = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "sql", "SELECT 41 + 1 AS answer",
         "--set", f"lake.root={tmp_path / 'lake'}", "--set", "spark.master=local[1]",
         "--set", f"spark.jars_dir={settings.spark.jars_dir}"],
        cwd=ROOT,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert job.returncode == 0, job.stderr
    assert job.stdout.split() == ["answer", "------", "42"]
    assert "INFO lakescore.spark: Spark " in job.stderr
    assert "Traceback" not in job.stderr
    assert not [line for line in job.stderr.splitlines() if "py4j" in line.lower()]
    assert not [noise for noise in SPARK_NOISE if noise in job.stderr], job.stderr
