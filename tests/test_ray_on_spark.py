"""Ray on a Spark-only cluster (`ray.address = "spark"`): what every node is given."""

import os
import sys
from pathlib import Path

from ray._common.utils import load_class

from training.ray_on_spark import NodeEnvironment, node_environment


def test_every_node_gets_the_ray_command_on_path_and_the_clusters_auth_mode(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = node_environment()
    bin_dir = str(Path(sys.executable).parent)
    # `ray start` is looked up on PATH: the interpreter's own bin folder comes first.
    assert env["PATH"].split(os.pathsep)[0] == bin_dir and env["PATH"].endswith("/usr/bin:/bin")
    assert (Path(bin_dir) / "ray").exists()
    assert env["RAY_AUTH_MODE"] == "disabled"
    # Ray on Spark builds the hook from its dotted name with no arguments, on the driver.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    hook = load_class(env["RAY_ON_SPARK_START_HOOK"])()
    assert isinstance(hook, NodeEnvironment) and hook.is_global is False
    assert hook.custom_environment_variables() == {"PATH": env["PATH"], "RAY_AUTH_MODE": "disabled"}


def test_a_path_that_already_has_the_ray_command_is_left_as_it_is(monkeypatch):
    path = str(Path(sys.executable).parent) + os.pathsep + "/usr/bin"
    monkeypatch.setenv("PATH", path)
    assert node_environment()["PATH"] == path
