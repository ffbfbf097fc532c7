"""cluster_configs/ parses, sets the keys that matter, and agrees with the code it configures.

Each file is declarative; these tests hold it to the session factory's defaults, the jars `make
jars` resolves, the scoring job's real command-line options, the pinned Ray version and the
settings lakescore reads from LAKESCORE_* variables.
"""

from __future__ import annotations

import py_compile
import re
import runpy
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import ray
import typer
import yaml

from pipelines.package import project_version
from jobs.score_nightly import score
from lakescore.config import SparkSettings, load_settings
from lakescore.spark import DELTA_CATALOG, DELTA_EXTENSION, default_spark_conf, delta_jars
from localclusters import read_spark_properties

CONFIGS = Path(__file__).resolve().parent.parent / "cluster_configs"
SPARK_KINDS = ("local", "standalone", "kubernetes", "yarn")
CLUSTER_KINDS = ("standalone", "kubernetes", "yarn")
# Keys of lakescore's own defaults that a cluster file sets differently on purpose: locations
# (Derby, warehouse, derby.log) and sizes that depend on the data and the cluster.
SITE_KEYS = {
    "spark.app.name",
    "spark.sql.warehouse.dir",
    "spark.hadoop.javax.jdo.option.ConnectionURL",
    "spark.hadoop.datanucleus.schema.autoCreateAll",
    "spark.hadoop.hive.metastore.schema.verification",
    "spark.driver.extraJavaOptions",
    "spark.sql.shuffle.partitions",
}
# Importing torch's CUDA build reserves ~3.4 GB of address space; Spark enforces
# spark.executor.pyspark.memory as RLIMIT_AS, so a smaller value breaks every Python worker.
TORCH_ADDRESS_SPACE_GIB = 4


def spark_defaults(kind: str) -> dict[str, str]:
    return read_spark_properties(CONFIGS / "spark" / f"spark-defaults.{kind}.conf")


def gib(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([kmgt])", size.lower()).groups()
    return int(number) / {"k": 1024**2, "m": 1024, "g": 1, "t": 1 / 1024}[unit]


def score_options(args: list[str]) -> dict:
    """Parse `args` with the nightly job's real command line; return its parameters."""
    app = typer.Typer()
    app.command()(score)
    return typer.main.get_command(app).make_context("score_nightly.py", list(args)).params


@pytest.mark.parametrize("kind", SPARK_KINDS)
def test_every_spark_defaults_file_sets_delta_the_jars_arrow_batches_worker_reuse_and_speculation(kind):
    conf = spark_defaults(kind)
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    assert conf["spark.sql.catalogImplementation"] == "hive"
    assert "spark.jars" in conf or conf["spark.jars.packages"] == "io.delta:delta-spark_4.2_2.13:4.4.0"
    assert int(conf["spark.sql.execution.arrow.maxRecordsPerBatch"]) > 0
    # A UDF's Arrow batch is at most one Parquet reader batch: a smaller reader batch would cap it.
    assert conf["spark.sql.parquet.columnarReaderBatchSize"] == conf["spark.sql.execution.arrow.maxRecordsPerBatch"]
    assert conf["spark.python.worker.reuse"] == "true"
    assert conf["spark.speculation"] in ("true", "false")
    if "spark.executor.pyspark.memory" in conf:
        assert gib(conf["spark.executor.pyspark.memory"]) >= TORCH_ADDRESS_SPACE_GIB


@pytest.mark.parametrize("kind", SPARK_KINDS)
def test_spark_defaults_agree_with_the_session_factory_on_every_key_both_set(kind, tmp_path):
    factory = default_spark_conf(load_settings(overrides={"lake.root": str(tmp_path)}, environ={}))
    conf = spark_defaults(kind)
    shared = (set(conf) & set(factory)) - SITE_KEYS
    assert {"spark.sql.extensions", "spark.python.worker.reuse", "spark.sql.execution.arrow.maxRecordsPerBatch"} <= shared
    assert {k: conf[k] for k in shared} == {k: factory[k] for k in shared}


@pytest.mark.parametrize("kind", CLUSTER_KINDS)
def test_cluster_spark_defaults_name_a_shared_metastore_an_executor_python_and_memory_for_it(kind):
    conf = spark_defaults(kind)
    assert conf["spark.hadoop.hive.metastore.uris"].startswith("thrift://")
    assert not any("derby" in v.lower() for v in conf.values())
    assert conf["spark.pyspark.python"].endswith("/bin/python")
    if kind != "standalone":  # standalone has no containers to size
        assert gib(conf["spark.executor.memoryOverhead"]) >= int(conf["spark.executor.cores"]) * 0.65


def test_the_kubernetes_jar_list_is_the_set_of_jars_make_jars_resolves():
    listed = {Path(j.removeprefix("local://")).name for j in spark_defaults("kubernetes")["spark.jars"].split(",")}
    resolved = {Path(j).name for j in delta_jars(SparkSettings().jars_dir)}
    assert listed == resolved


def test_the_kubernetes_defaults_ship_the_zip_lakescore_package_builds():
    assert spark_defaults("kubernetes")["spark.submit.pyFiles"].endswith(f"/lakescore-{project_version()}.zip")


def test_hive_site_points_clients_at_the_metastore_service_and_keeps_its_schema_managed():
    root = ET.parse(CONFIGS / "spark" / "hive-site.xml").getroot()
    props = {p.findtext("name"): p.findtext("value") for p in root.iter("property")}
    assert props["hive.metastore.uris"] == spark_defaults("standalone")["spark.hadoop.hive.metastore.uris"]
    assert props["javax.jdo.option.ConnectionURL"].startswith("jdbc:postgresql://")
    assert props["datanucleus.schema.autoCreateAll"] == "false"
    assert props["hive.metastore.schema.verification"] == "true"
    assert "javax.jdo.option.ConnectionPassword" not in props


def test_the_scheduled_spark_application_forbids_overlapping_runs_of_the_nightly_job():
    app = yaml.safe_load((CONFIGS / "kubernetes" / "lakescore-nightly.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("sparkoperator.k8s.io/v1beta2", "ScheduledSparkApplication")
    spec = app["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    template = spec["template"]
    assert template["mainApplicationFile"].endswith("/jobs/score_nightly.py")
    assert template["deps"]["pyFiles"][0].endswith(f"/lakescore-{project_version()}.zip")
    # No --run-date: the operator cannot template one, so the job catches up to yesterday.
    params = score_options(template["arguments"])
    assert (params["run_date"], params["model"], params["table"]) == (None, "transactions", "transactions")
    assert params["catch_up"] is True


class _Recorder:
    """Stands in for airflow's DAG and SparkSubmitOperator: records their arguments."""

    made: list = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        _Recorder.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_airflow_dag_compiles_and_catches_up_from_the_logical_date(monkeypatch, tmp_path):
    path = CONFIGS / "airflow" / "lakescore_nightly.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "dag.pyc"), doraise=True)
    airflow = types.ModuleType("airflow")
    airflow.DAG = type("DAG", (_Recorder,), {})
    spark_submit = types.ModuleType("airflow.providers.apache.spark.operators.spark_submit")
    spark_submit.SparkSubmitOperator = type("SparkSubmitOperator", (_Recorder,), {})
    for name in ("airflow.providers", "airflow.providers.apache", "airflow.providers.apache.spark",
                 "airflow.providers.apache.spark.operators"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "airflow", airflow)
    monkeypatch.setitem(sys.modules, spark_submit.__name__, spark_submit)
    monkeypatch.setattr(_Recorder, "made", [])

    runpy.run_path(str(path))

    (dag,) = [m for m in _Recorder.made if type(m).__name__ == "DAG"]
    (task,) = [m for m in _Recorder.made if type(m).__name__ == "SparkSubmitOperator"]
    assert dag.kwargs["max_active_runs"] == 1
    assert task.kwargs["application"].endswith("/jobs/score_nightly.py")
    assert task.kwargs["py_files"].endswith(f"/lakescore-{project_version()}.zip")
    args = task.kwargs["application_args"]
    assert args[args.index("--from") + 1] == "{{ ds }}"
    # Rendered as Airflow would for the run of 2026-11-28 02:30, the job accepts the arguments.
    rendered = [a.replace("{{ ds }}", "2026-11-27") for a in args]
    params = score_options(rendered)
    assert (params["first"], params["catch_up"], params["last"]) == ("2026-11-27", True, None)


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_kuberay_cluster_runs_the_pinned_ray_with_a_gpu_group_and_checkpoints_on_the_lake(tmp_path):
    cluster = yaml.safe_load((CONFIGS / "kubernetes" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = spec["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    env = _env(worker)
    assert env["RAY_TRAIN_V2_ENABLED"] == "1"
    # The variables are real lakescore settings (load_settings refuses unknown ones).
    lakescore_env = {k: v for k, v in env.items() if k.startswith("LAKESCORE_")}
    settings = load_settings(overrides={"lake.root": str(tmp_path)}, environ=lakescore_env)
    assert settings.ray.address == "auto"
    assert Path(env["LAKESCORE_RAY_STORAGE_PATH"]).is_relative_to(env["LAKESCORE_LAKE_ROOT"])
    assert settings.ray.storage_path == Path(env["LAKESCORE_RAY_STORAGE_PATH"])
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _env(head) == env  # head and workers read the same settings
    # Token authentication everywhere, from the secret; the dashboard inside the head pod only.
    assert env["RAY_AUTH_MODE"] == "token"
    for container in (head, worker):
        (token,) = [e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"]["key"] == "ray-auth-token"
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def test_the_ray_cluster_launcher_starts_a_head_and_gpu_workers_with_shared_checkpoint_storage(tmp_path):
    launcher = yaml.safe_load((CONFIGS / "ray" / "cluster-launcher.yaml").read_text())
    nodes = launcher["available_node_types"]
    assert launcher["head_node_type"] in nodes
    assert nodes[launcher["head_node_type"]]["resources"]["CPU"] == 0
    assert any(n["resources"].get("GPU", 0) >= 1 for n in nodes.values())
    assert "ray start --head" in " ".join(launcher["head_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(launcher["worker_start_ray_commands"])
    setup = "\n".join(launcher["setup_commands"])
    assert "pip install --quiet /opt/lakescore" in setup
    exports = dict(re.findall(r"^export (LAKESCORE_\w+)=(\S+)$", setup, re.MULTILINE))
    settings = load_settings(overrides={"lake.root": str(tmp_path)}, environ=exports)
    assert settings.ray.storage_path == Path("/mnt/lake/_checkpoints")
    assert Path(exports["LAKESCORE_RAY_STORAGE_PATH"]).is_relative_to(exports["LAKESCORE_LAKE_ROOT"])
    assert "export RAY_TRAIN_V2_ENABLED=1" in setup
    # Every `ray start` and every shell (drivers) use the cluster's token; the dashboard is on loopback.
    assert "export RAY_AUTH_MODE=token" in setup and "export RAY_AUTH_TOKEN=" in setup
    starts = launcher["head_start_ray_commands"][1:] + launcher["worker_start_ray_commands"][1:]
    assert all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN=" in c for c in starts)
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


CONFIG_FILES = sorted(p for p in CONFIGS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_file_in_cluster_configs_is_valid_yaml_xml_properties_or_python(path, tmp_path):
    if path.suffix in (".yaml", ".yml"):
        assert yaml.safe_load(path.read_text())
    elif path.suffix == ".xml":
        ET.parse(path)
    elif path.suffix == ".conf":
        assert read_spark_properties(path)
    elif path.suffix == ".py":
        py_compile.compile(str(path), cfile=str(tmp_path / "module.pyc"), doraise=True)
    else:
        assert path.suffix == ".md", f"{path}: a file kind these tests do not check"
