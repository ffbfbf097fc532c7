"""A shared Hive metastore on PostgreSQL (issue 28): `lakescore metastore init` makes the schema,
the nightly job, a training run and an analyst's queries use it at the same time, and the
password stays out of command lines, logs and reprs.

The server is the session's `postgres_server` (tests/postgres.py); this module keeps one
database on it for the shared lake and makes throw-away ones for the error cases.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lakescore import metastore
from lakescore.config import ConfigError, load_settings
from postgres import PASSWORD_ENV, catalog_overrides, free_port

RUN_DATE = "2026-11-03"
# A lake small enough for three jobs at once on two cores: three days of 1,000 rows.
TINY_LAKE = {
    "spark.master": "local[1]",
    "spark.shuffle_partitions": "1",
    "spark.arrow_batch_size": "1000",
    "generate.days": "3",
    "generate.rows_per_day": "1000",
    "generate.accounts": "200",
    "generate.anomaly_rate": "0.02",
    "generate.start_date": "2026-11-01",
    # No UI (C1 only comes with every test JVM: tests/conftest.py).
    "spark.conf": "spark.ui.enabled=false",
}
TINY_TRAINING = {"train.batch_size": "256", "train.sample_rows": "2000", "train.shuffle_buffer_rows": "0", "ray.num_workers": "1"}
# Every table of Hive 2.3's model (package.jdo), made by init whatever the first session touches.
HIVE_2_3_TABLES = 45

# One process, one JVM: init (twice: the second finds the schema), then the data the jobs share.
_PREPARE = textwrap.dedent(
    """
    import dataclasses, json, shutil, sys
    from lakescore import registry
    from lakescore.bundle import load_bundle
    from lakescore.config import load_settings
    from lakescore.metastore import init_metastore
    from lakescore.spark import build_spark_session
    from pipelines.generate import run_generate

    overrides, bundle_dir = json.loads(sys.argv[1]), sys.argv[2]
    settings = load_settings(None, overrides)  # the password from the environment
    reports = [dataclasses.asdict(init_metastore(settings)) for _ in range(2)]
    spark = build_spark_session(settings, "prepare-shared-lake")
    run_generate(spark, settings)
    bundle = load_bundle(bundle_dir)
    target = registry.bundle_dir(settings, bundle.name, bundle.version)
    shutil.copytree(bundle_dir, target)
    registry.register_bundle(spark, settings, load_bundle(target), target)
    spark.stop()
    print("REPORTS " + json.dumps(reports))
    """
)


@dataclasses.dataclass(frozen=True)
class SharedLake:
    root: Path
    database: str
    overrides: dict
    env: dict
    init_reports: list
    bundle_name: str


def _job_env(catalog_env: dict) -> dict:
    return {
        **os.environ, **catalog_env,
        "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    }


def _flags(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def _start_job(args: list[str], overrides: dict, env: dict, log: Path) -> subprocess.Popen:
    """`python -m jobs.cli ARGS --set ...` in the background, output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *args, *_flags(overrides)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )


@pytest.fixture(scope="module")
def shared_lake(postgres_server, tmp_path_factory) -> SharedLake:
    """A lake whose catalog is a metastore on PostgreSQL: initialised, with the tiny transactions
    table and a registered champion, made once for the module in one subprocess."""
    from transactions_rows import transactions_bundle

    database = "lakescore_shared"
    postgres_server.create_database(database)
    catalog, env = catalog_overrides(postgres_server, database)
    base = tmp_path_factory.mktemp("shared")
    bundle = transactions_bundle(base / "bundle")
    overrides = {**catalog, **TINY_LAKE, "lake.root": str(base / "lake")}
    done = subprocess.run(
        [sys.executable, "-c", _PREPARE, json.dumps(overrides), str(base / "bundle")],
        env=_job_env(env), capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert postgres_server.password not in done.stdout + done.stderr
    reports = json.loads(done.stdout.split("REPORTS ", 1)[1])
    return SharedLake(base / "lake", database, overrides, env, reports, bundle.name)


@pytest.mark.slow
def test_init_creates_the_hive_2_3_schema_once_and_a_second_init_changes_nothing(shared_lake, postgres_server):
    first, again = shared_lake.init_reports
    url = postgres_server.url(shared_lake.database)
    assert first == {"url": url, "version": "2.3.0", "tables": HIVE_2_3_TABLES, "created": True}
    assert again == {"url": url, "version": "2.3.0", "tables": HIVE_2_3_TABLES, "created": False}
    tables = postgres_server.tables(shared_lake.database)
    # Beyond what a first session touches: privileges (DROP TABLE reads them) and functions.
    assert {"VERSION", "DBS", "TBLS", "SDS", "TBL_PRIVS", "DB_PRIVS", "FUNCS", "NOTIFICATION_LOG"} <= tables
    assert postgres_server.psql('SELECT "SCHEMA_VERSION" FROM "VERSION"', shared_lake.database) == "2.3.0"


@pytest.mark.slow
def test_the_nightly_job_a_training_run_and_an_analyst_share_the_metastore_at_the_same_time(shared_lake, postgres_server, tmp_path):
    env = _job_env(shared_lake.env)
    password = shared_lake.env[PASSWORD_ENV]
    jobs = {
        "score": ["score", "--run-date", RUN_DATE, "--model", shared_lake.bundle_name, "--table", "transactions"],
        "train": ["train", "--table", "transactions", "--name", "trio", "--epochs", "1", *_flags(TINY_TRAINING)],
        "sql": ["sql", "SELECT (SELECT COUNT(*) FROM transactions) AS transactions, "
                       "(SELECT COUNT(*) FROM model_registry) AS models_at_start"],
    }
    seen_on_command_lines = []
    running_when_the_first_ended: list[set] = []
    running = {name: _start_job(args, shared_lake.overrides, env, tmp_path / f"{name}.log") for name, args in jobs.items()}
    started = time.monotonic()

    # Every process's command line, while the jobs run (their JVMs and Ray's workers included).
    def watch() -> None:
        while any(p.poll() is None for p in running.values()):
            still = {name for name, p in running.items() if p.poll() is None}
            if len(still) < len(running) and not running_when_the_first_ended:
                running_when_the_first_ended.append(still)
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if password.encode() in cmdline.read_bytes():
                        seen_on_command_lines.append(cmdline.parent.name)
                except OSError:
                    pass
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        codes = {name: p.wait(timeout=420) for name, p in running.items()}
    finally:
        for p in running.values():
            if p.poll() is None:
                p.kill()
        watcher.join(timeout=10)
    outputs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in jobs}
    assert codes == {"score": 0, "train": 0, "sql": 0}, {n: o[-3000:] for n, o in outputs.items() if codes[n]}
    print(f"three jobs at once in {time.monotonic() - started:.0f}s")
    # At once: the first job to end did all its work while the other two still ran (the embedded
    # Derby metastore would have refused the second process to open it).
    assert len(running_when_the_first_ended) == 1 and len(running_when_the_first_ended[0]) == 2

    # The analyst saw the shared catalog's tables while the others wrote to it.
    sql_lines = outputs["sql"].strip().splitlines()
    assert sql_lines[-3].split() == ["transactions", "models_at_start"]
    transactions = DeltaTable(str(shared_lake.root / "tables" / "lakescore" / "transactions")).to_pandas()
    assert transactions["event_date"].nunique() == 3
    assert sql_lines[-1].split() == [str(len(transactions)), "1"], sql_lines[-3:]

    # The night's flagged rows and metrics, and the new model, are in the lake and in the catalog.
    metrics = DeltaTable(str(shared_lake.root / "tables" / "lakescore" / "run_metrics")).to_pandas()
    night = metrics[(metrics["run_date"].astype(str) == RUN_DATE) & (metrics["scope"] == "run")].set_index("metric")["value"]
    day_rows = (transactions["event_date"].astype(str) == RUN_DATE).sum()
    assert (night["rows_read"], night["rows_scored"], night["run_complete"]) == (day_rows, day_rows, 1), night.to_dict()
    registry = DeltaTable(str(shared_lake.root / "tables" / "lakescore" / "model_registry")).to_pandas()
    assert sorted(zip(registry["name"], registry["version"], registry["stage"])) == sorted(
        [(shared_lake.bundle_name, 1, "champion"), ("trio", 1, "champion")]
    )
    catalog_tables = postgres_server.psql('SELECT "TBL_NAME" FROM "TBLS" ORDER BY 1', shared_lake.database).split()
    assert {"transactions", "flagged_all", "run_metrics", "model_registry"} <= set(catalog_tables), catalog_tables

    # The password was on no command line, in no job's output and in no file of the lake.
    assert seen_on_command_lines == []
    for name, output in outputs.items():
        assert password not in output, name
    for path in shared_lake.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert password.encode() not in path.read_bytes(), path


def test_a_wrong_password_names_the_user_and_the_fix_without_showing_either_password(spark, postgres_server):
    catalog = _catalog(postgres_server, "postgres", password="not-the-password")
    with pytest.raises(metastore.MetastoreError) as refused:
        metastore.check_schema(spark._jvm, catalog)
    message = str(refused.value)
    assert "refused the login of user 'lakescore'" in message and "LAKESCORE_CATALOG_PASSWORD" in message
    assert "not-the-password" not in message and postgres_server.password not in message


def test_a_database_without_the_schema_asks_for_metastore_init(spark, postgres_server):
    postgres_server.create_database("lakescore_empty")
    catalog = _catalog(postgres_server, "lakescore_empty")
    with pytest.raises(metastore.MetastoreError, match="has no Hive metastore schema yet; create it once with `lakescore metastore init`"):
        metastore.check_schema(spark._jvm, catalog)
    assert metastore.check_schema(spark._jvm, catalog, schema_required=False) is None
    with pytest.raises(metastore.MetastoreError, match="no such database"):
        metastore.check_schema(spark._jvm, _catalog(postgres_server, "lakescore_missing"))


def test_a_session_refused_by_the_metastore_leaves_a_running_spark_context_running(spark, postgres_server):
    from pyspark import SparkConf

    catalog = _catalog(postgres_server, "lakescore_empty2")
    postgres_server.create_database("lakescore_empty2")
    with pytest.raises(metastore.MetastoreError, match="lakescore metastore init"):
        metastore.start_context(SparkConf(), catalog)
    assert not spark.sparkContext._jsc.sc().isStopped()  # this process's context was not the check's to stop
    assert spark.sparkContext._jsc.hadoopConfiguration().get(metastore.PASSWORD_KEY) is None


def test_an_unreachable_server_fails_the_command_before_spark_starts(postgres_server, tmp_path):
    closed = f"jdbc:postgresql://127.0.0.1:{free_port()}/metastore"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "metastore", "init",
         *_flags({"catalog.url": closed, "lake.root": str(tmp_path / "lake")})],
        env=_job_env({PASSWORD_ENV: postgres_server.password}), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr[-3000:]
    message = " ".join(done.stderr.split())
    assert f"cannot reach the metastore database at 127.0.0.1:{closed.split(':')[3].split('/')[0]}" in message
    assert "Start the PostgreSQL server or fix catalog.url" in message
    assert "Spark" not in done.stderr and not (tmp_path / "lake" / "_metastore").exists()
    print(f"refused in {time.monotonic() - started:.1f}s")


def test_the_password_comes_from_the_environment_or_a_file_never_a_flag_and_stays_out_of_repr(tmp_path):
    url = {"catalog.url": "jdbc:postgresql://db.internal:5432/metastore", "lake.root": str(tmp_path)}
    from_env = load_settings(None, url, environ={PASSWORD_ENV: "s3cret-env"})
    assert from_env.catalog.password == "s3cret-env" and "s3cret-env" not in repr(from_env)
    secret = tmp_path / "metastore.password"
    secret.write_text("s3cret-file\n")
    from_file = load_settings(None, {**url, "catalog.password_file": str(secret)}, environ={})
    assert from_file.catalog.password == "s3cret-file" and "s3cret-file" not in repr(from_file)
    with pytest.raises(ConfigError, match="cannot be given on the command line"):
        load_settings(None, {**url, "catalog.password": "s3cret-flag"}, environ={})
    with pytest.raises(ConfigError, match="is not a PostgreSQL JDBC URL"):
        load_settings(None, {"catalog.url": "jdbc:mysql://db/metastore", "lake.root": str(tmp_path)}, environ={})


def test_without_a_url_the_embedded_derby_metastore_stays_the_default(settings):
    from lakescore.spark import default_spark_conf

    conf = default_spark_conf(settings)
    assert settings.catalog.url == "" and conf["spark.hadoop.javax.jdo.option.ConnectionURL"].startswith("jdbc:derby:")
    assert "spark.driver.extraClassPath" not in conf


def test_with_a_url_jobs_neither_create_the_schema_nor_skip_its_check(settings, tmp_path):
    shared = settings.with_overrides({"catalog.url": "jdbc:postgresql://db.internal/metastore", "catalog.user": "hive"})
    from lakescore.spark import default_spark_conf

    job, init = default_spark_conf(shared), default_spark_conf(shared, create_metastore_schema=True)
    assert job["spark.hadoop.javax.jdo.option.ConnectionURL"] == "jdbc:postgresql://db.internal/metastore"
    assert Path(job["spark.driver.extraClassPath"]).name.startswith("postgresql-")
    assert (job["spark.hadoop.datanucleus.schema.autoCreateAll"], job["spark.hadoop.hive.metastore.schema.verification"]) == ("false", "true")
    assert (init["spark.hadoop.datanucleus.schema.autoCreateAll"], init["spark.hadoop.hive.metastore.schema.verification"]) == ("true", "false")
    assert len(init["spark.hadoop.datanucleus.autoStartClassNames"].split(",")) == 30
    assert not any("password" in key.lower() for key in job)
    assert metastore.address(shared.catalog) == ("db.internal", 5432)


def _catalog(server, database: str, password: str | None = None):
    overrides, env = catalog_overrides(server, database)
    if password is not None:
        env = {PASSWORD_ENV: password}
    return load_settings(None, {**overrides, "lake.root": "/tmp"}, environ=env).catalog
