"""Ray started on the job's own Spark cluster (`ray.address = "spark"`), for shops that run only Spark.

`ray.util.spark.setup_ray_cluster` starts a Ray head node beside the Spark driver and Ray worker
nodes inside long-running Spark tasks (one task slot each). Two things it leaves to the caller:
- each node is started with the `ray` command found on PATH, which a virtual environment run by
  path (`.venv/bin/lakescore`) has only beside its interpreter;
- `ray start` turns token authentication on when `~/.ray/auth_token` exists (Ray 2.60), while
  setup_ray_cluster's own connection check in the driver carries no token, so the launch fails
  on any machine that has that file (tried here with a per-cluster RAY_AUTH_TOKEN in the driver
  and every node: the check still went out without it).
`NodeEnvironment` (a Ray-on-Spark start hook) hands PATH and RAY_AUTH_MODE=disabled to every
node. The cluster then trusts its network, as Ray on Spark did before 2.59: it lives and dies with
the Spark application, on the Spark nodes' private network; use a standing Ray cluster with token
authentication (KubeRay, the cluster launcher) where that is not enough.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_NODE_ENV = ("PATH", "RAY_AUTH_MODE")


class NodeEnvironment:
    """Ray-on-Spark start hook (the interface of ray.util.spark.start_hook_base.RayOnSparkStartHook,
    without importing ray, which must not be imported before `node_environment` is set): every
    Ray node gets this driver's PATH and its authentication mode."""

    def __init__(self, is_global: bool = False):
        self.is_global = is_global

    def get_default_temp_root_dir(self) -> str:
        return "/tmp"

    def on_ray_dashboard_created(self, port) -> None:
        pass

    def on_cluster_created(self, ray_cluster_handler) -> None:
        pass

    def on_spark_job_created(self, job_group_id) -> None:
        pass

    def custom_environment_variables(self) -> dict[str, str]:
        return {k: os.environ[k] for k in _NODE_ENV if k in os.environ}


def node_environment() -> dict[str, str]:
    """The environment a Ray-on-Spark cluster needs in the driver and every node: PATH with this
    interpreter's bin folder, the authentication mode, and the start hook that passes both on.
    Set it before `ray` is first imported in this process: Ray reads its authentication mode once."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "PATH": path if bin_dir in path.split(os.pathsep) else bin_dir + os.pathsep + path,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ON_SPARK_START_HOOK": f"{__name__}.{NodeEnvironment.__name__}",
    }


@contextlib.contextmanager
def ray_on_spark(spark, *, worker_nodes: int, head_cpus: int) -> Iterator[str]:
    """Start Ray on `spark`'s cluster, yield its address, shut it down at the end (pass or fail).

    The caller sets `node_environment()` into os.environ first (before importing ray)."""
    from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

    address, _ = setup_ray_cluster(max_worker_nodes=worker_nodes, num_cpus_head_node=head_cpus)
    log.info("started Ray on Spark at %s with %d worker node(s)", address, worker_nodes)
    try:
        yield address
    finally:
        shutdown_ray_cluster()
