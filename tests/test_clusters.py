"""The jobs on real multi-process clusters that the tests start and stop themselves, on this machine.

- Spark standalone: a master and a worker (tests/localclusters.py) on 127.0.0.1. The jobs go
  through `spark-submit --master spark://127.0.0.1:PORT` with cluster_configs' standalone
  spark-defaults (only its site-specific values replaced), lakescore's code as the `lakescore
  package` zip, and a Python that has the third-party packages but NOT lakescore, for the driver
  and the executors: what a cluster has before code shipping. Executors are JVMs the worker starts.
- Ray: a head and a second node (`ray start --head` / `ray start --address`), one CPU each; the
  train job joins by address and its two Ray Train workers can only fit one per node.

One lake root for the module (Derby: one process at a time, and the jobs run one after the other):
generate on Spark -> train on Ray; generate on Spark -> score on Spark with a test bundle.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from pipelines.package import build_pyfiles_zip
from lakescore import schemas as S
from lakescore.features import TRANSACTIONS_V1
from lakescore.config import SparkSettings
from localclusters import VENV_BIN, bare_python, ray_two_nodes, read_spark_properties, run_job, spark_standalone
from scoring_bundles import build_test_bundle
from udfs.scorer import build_scoring_model, score_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
STANDALONE_DEFAULTS = REPO / "cluster_configs" / "spark" / "spark-defaults.standalone.conf"
FIRST_DAY = dt.date(2026, 11, 1)
DAYS = 4
ROWS_PER_DAY = 1500
SCORE_DAY = dt.date(2026, 11, 4)
SUBMIT_TIMEOUT_S = 480


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """(zip of lakescore's code, a Python without lakescore) as spark-submit ships them."""
    base = tmp_path_factory.mktemp("shipped")
    return build_pyfiles_zip(base / "dist").path, bare_python(base / "env")


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cluster_lake")


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    with spark_standalone(tmp_path_factory.mktemp("standalone"), cores=2, memory="1g") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def submit_args(standalone, shipped, tmp_path_factory):
    """spark-submit flags: the standalone defaults file with its SITE values made local."""
    zip_path, python = shipped
    base = tmp_path_factory.mktemp("submit")
    (base / "events").mkdir()
    properties = read_spark_properties(STANDALONE_DEFAULTS)
    local = {
        "spark.master": None,  # --master names the test's cluster
        # The glob form of the file, pointed at the jars `make jars` resolved.
        "spark.jars": f"{SparkSettings().jars_dir}/*.jar",
        # No metastore service here: lakescore's embedded Derby under the lake root instead.
        "spark.hadoop.hive.metastore.uris": None,
        "spark.sql.warehouse.dir": None,
        "spark.pyspark.python": str(python),
        "spark.pyspark.driver.python": str(python),
        "spark.executor.cores": "2",
        "spark.executor.memory": "512m",
        "spark.driver.memory": "1g",
        "spark.cores.max": "2",
        "spark.sql.shuffle.partitions": "4",
        "spark.eventLog.dir": (base / "events").as_uri(),
        # Loopback only, and no UI ports.
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        # Delta's snapshot state in 2 partitions, not 50: tiny tables on 2 cores.
        "spark.databricks.delta.snapshotPartitions": "2",
    }
    for key, value in local.items():
        if value is None:
            properties.pop(key)
        else:
            properties[key] = value
    conf_file = base / "spark-defaults.conf"
    conf_file.write_text("".join(f"{k} {v}\n" for k, v in properties.items()))
    return ["--properties-file", str(conf_file), "--py-files", str(zip_path)]


@pytest.fixture(scope="module")
def generated(standalone, submit_args, lake_root, tmp_path_factory):
    """The generate job on the standalone cluster: (its output, the application's id)."""
    log = tmp_path_factory.mktemp("generate") / "spark-submit.log"
    result = standalone.submit(
        [*submit_args, "--name", "lakescore-generate",
         str(REPO / "jobs" / "generate_transactions.py"),
         "--days", str(DAYS), "--rows-per-day", str(ROWS_PER_DAY), "--accounts", "300",
         "--anomaly-rate", "0.03", "--start-date", FIRST_DAY.isoformat(), "--set", f"lake.root={lake_root}"],
        log=log, cwd=log.parent, timeout=SUBMIT_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    apps = [a for a in standalone.master_state()["completedapps"] if a["name"] == "lakescore-generate"]
    assert len(apps) == 1, standalone.master_state()
    return result.stdout, apps[0]["id"]


def test_the_generate_job_runs_on_the_standalone_cluster_in_executor_jvms_of_its_worker(standalone, generated, lake_root):
    output, app_id = generated
    # The job reads its table back by name through the catalog and prints one line per day.
    printed = {d: int(n) for d, n in re.findall(r"^(2026-11-\d\d)\s+(\d+)\s", output, re.MULTILINE)}
    assert sorted(printed) == [(FIRST_DAY + dt.timedelta(days=i)).isoformat() for i in range(DAYS)]
    # The executors were JVMs of their own, started by the worker in its work dir.
    executor_logs = sorted((standalone.work_dir / app_id).glob("*/stderr"))
    assert executor_logs, f"no executor ran for {app_id} under {standalone.work_dir}"
    assert "CoarseGrainedExecutorBackend" in executor_logs[0].read_text()
    # Read back without Spark: the Delta table at the lake path holds exactly the rows printed.
    table = DeltaTable(str(lake_root / "tables" / "lakescore" / S.TRANSACTIONS)).to_pandas()
    per_day = table.groupby(table[S.EVENT_DATE].astype(str)).size().to_dict()
    assert per_day == printed


@pytest.fixture(scope="module")
def test_bundle(generated, lake_root, tmp_path_factory):
    """A test-fixture bundle fitted on the days before SCORE_DAY, and the rows of SCORE_DAY."""
    rows = DeltaTable(str(lake_root / "tables" / "lakescore" / S.TRANSACTIONS)).to_pandas()
    dates = rows[S.EVENT_DATE].astype(str)
    train, day = rows[dates < SCORE_DAY.isoformat()], rows[dates == SCORE_DAY.isoformat()]
    directory = tmp_path_factory.mktemp("bundle") / "clustertest"
    bundle = build_test_bundle(
        directory, train, train[S.IS_ANOMALY].to_numpy(), TRANSACTIONS_V1, name="clustertest", version=1
    )
    return bundle, directory, day.reset_index(drop=True)


def test_the_nightly_job_scores_on_the_standalone_cluster_as_the_model_does_in_one_process(
    standalone, submit_args, test_bundle, lake_root, tmp_path
):
    bundle, directory, day_rows = test_bundle
    log = tmp_path / "spark-submit.log"
    result = standalone.submit(
        [*submit_args, "--name", "lakescore-score", str(REPO / "jobs" / "score_nightly.py"),
         "--run-date", SCORE_DAY.isoformat(), "--table", S.TRANSACTIONS, "--bundle", str(directory),
         "--set", f"lake.root={lake_root}", "--set", "score.hash_key=cluster-test-hash-key",
         "--set", "report.enabled=false"],
        log=log, cwd=tmp_path, timeout=SUBMIT_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    app = [a for a in standalone.master_state()["completedapps"] if a["name"] == "lakescore-score"]
    assert len(app) == 1 and list((standalone.work_dir / app[0]["id"]).glob("*/stderr"))

    # What the numpy/torch core says about the same rows, in this process.
    scored = score_rows(build_scoring_model(bundle), day_rows, top_k=3)
    expected = dict(zip(day_rows[S.TRANSACTION_ID], scored.scores))
    expected_flagged = set(day_rows[S.TRANSACTION_ID][scored.flagged])
    assert expected_flagged, "the test bundle flags nothing on the scored day; the comparison would be empty"

    tables = lake_root / "tables" / "lakescore"
    flagged = DeltaTable(str(tables / S.FLAGGED)).to_pandas()
    flagged = flagged[flagged[S.RUN_DATE].astype(str) == SCORE_DAY.isoformat()]
    keys = flagged[S.RECORD_KEY].astype("int64")
    assert set(keys) == expected_flagged
    np.testing.assert_allclose(flagged[S.SCORE].to_numpy(), [expected[t] for t in keys], rtol=1e-6)
    assert set(flagged[S.MODEL_SHA256]) == {bundle.sha256}

    metrics = DeltaTable(str(tables / S.RUN_METRICS)).to_pandas()
    run = metrics[(metrics[S.RUN_DATE].astype(str) == SCORE_DAY.isoformat()) & (metrics[S.SCOPE] == "run")]
    values = dict(zip(run[S.METRIC], run[S.VALUE]))
    assert values["rows_read"] == values["rows_scored"] == len(day_rows)
    assert values["rows_flagged"] == len(expected_flagged)
    assert values[S.RUN_COMPLETE_METRIC] == 1.0


def test_training_on_a_two_node_ray_cluster_puts_one_worker_on_each_node_and_checkpoints_to_shared_storage(
    generated, lake_root, tmp_path
):
    storage = tmp_path / "shared_checkpoints"
    log = tmp_path / "train.log"
    with ray_two_nodes(cpus_per_node=1) as nodes:
        env = {**nodes.env, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        result = run_job(
            [str(VENV_BIN / "lakescore"), "train", "--table", S.TRANSACTIONS, "--name", "clustertrain",
             "--workers", "2", "--epochs", "1",
             "--set", f"lake.root={lake_root}", "--set", f"ray.address={nodes.address}",
             "--set", f"ray.storage_path={storage}", "--set", "ray.cpus_per_worker=1",
             # The driver's own Spark session (catalog, registry) is local; small tables, few tasks.
             "--set", "train.batch_size=256", "--set", "spark.master=local[2]",
             "--set", "spark.conf=spark.databricks.delta.snapshotPartitions=2"],
            log=log, env=env, cwd=tmp_path, timeout=SUBMIT_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stdout[-4000:]
        # Each node logs the worker processes it ran in its own temp folder, an actor's log
        # starting with its class name: one Ray Train worker on each node.
        workers_per_node = [
            sum(":actor_name:RayTrainWorker" in p.read_text(errors="replace")
                for p in node.glob("session_latest/logs/worker-*.out"))
            for node in nodes.temp_dirs
        ]
    assert workers_per_node == [1, 1]
    checkpoints = [c for c in storage.glob("*/checkpoint_*") if c.is_dir()]
    assert checkpoints and all(any(c.iterdir()) for c in checkpoints)
    registry = DeltaTable(str(lake_root / "tables" / "lakescore" / S.MODEL_REGISTRY)).to_pandas()
    entry = registry[registry["name"] == "clustertrain"]
    assert entry["version"].tolist() == [1] and entry["stage"].tolist() == ["champion"]
    assert (Path(entry["path"].iloc[0]) / "manifest.json").is_file()
