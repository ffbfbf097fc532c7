"""What a job prints on stderr: lakescore's own lines and real warnings, not py4j tracebacks
(lakescore.spark)."""

from __future__ import annotations

import subprocess
import threading


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
