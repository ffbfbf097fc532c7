"""One session-scoped Spark fixture and one Ray fixture for the whole suite.

The Spark session uses an embedded Derby metastore under a temporary lake root; Derby admits
one process at a time, so tests that start jobs in subprocesses give them a lake root of their own.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest

from lakescore import schemas as S
from lakescore.config import Settings, SparkSettings, load_settings

# Spark's Python workers and Ray's must run this interpreter, with the project installed.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# The secret of the keyed hash that replaces sensitive columns (account_id, in the transactions
# spec): a scoring run refuses to start without one. Jobs the tests start in subprocesses inherit
# it from the environment; the session's settings name it too.
TEST_HASH_KEY = "lakescore-tests-only-hash-key"
os.environ.setdefault("LAKESCORE_HASH_KEY", TEST_HASH_KEY)
# No nightly report (a page rendered after each published night, a few seconds) but where a test
# asks for one (tests/test_report.py): off in the session's settings and, by environment, in jobs
# the tests start in subprocesses.
os.environ.setdefault("LAKESCORE_REPORT_ENABLED", "false")

SMALL = {
    "generate.days": "4",
    "generate.rows_per_day": "3000",
    "generate.accounts": "600",
    "generate.anomaly_rate": "0.02",
    "generate.start_date": "2026-11-01",
    # Card-testing bursts come about twice a day at 3,000 rows; seed 7 (the default) draws none on
    # the two training days and 18 rows on the test day, so a supervised model is tested on a kind
    # it never saw. The `transactions` fixture checks that every kind is in every split.
    "generate.seed": "11",
}


def pytest_configure(config):
    """Every JVM the suite starts (its session, each job in a subprocess) is short-lived on tiny data:
    C1 only, and Spark's classes mapped from one archive, start it faster (docs/measurements.md).
    spark-submit reads SPARK_SUBMIT_OPTS; the jobs tests start in subprocesses inherit it."""
    if "SPARK_SUBMIT_OPTS" not in os.environ:
        from jvm_archive import archive_flags

        os.environ["SPARK_SUBMIT_OPTS"] = archive_flags(SparkSettings().jars_dir, "-XX:TieredStopAtLevel=1")


@pytest.fixture(scope="session")
def lake_root(tmp_path_factory):
    return tmp_path_factory.mktemp("lake")


@pytest.fixture(scope="session")
def settings(lake_root) -> Settings:
    return load_settings(
        overrides={
            "lake.root": str(lake_root),
            "spark.master": "local[2]",
            "spark.shuffle_partitions": "2",
            "spark.arrow_batch_size": "1000",
            "score.hash_key": TEST_HASH_KEY,
            "report.enabled": "false",
            **SMALL,
        },
        environ={},
    )


@pytest.fixture(scope="session")
def spark(settings):
    from lakescore.spark import build_spark_session

    session = build_spark_session(settings, app_name="lakescore-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def transactions(spark, settings):
    """A small generated transactions table (4 days), registered as lakescore.transactions."""
    from pipelines.generate import run_generate

    summary = run_generate(spark, settings)
    table = settings.table(settings.generate.table)
    kinds = spark.sql(
        f"SELECT {S.EVENT_DATE}, COUNT(DISTINCT {S.ANOMALY_TYPE}) AS kinds FROM {table} GROUP BY {S.EVENT_DATE}"
    ).collect()
    assert len(summary) == 4 and all(r["kinds"] == len(S.ANOMALY_TYPES) for r in kinds), (
        f"the test data lacks an anomaly kind on some day ({kinds}): pick another generate.seed in SMALL"
    )
    return table


@pytest.fixture(scope="session")
def ray_local():
    """Ray started in-process once for the suite, with this machine's two cores."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory):
    """An mlp bundle on the transactions features (tests/transactions_rows.py), one per test module."""
    from transactions_rows import transactions_bundle

    return transactions_bundle(tmp_path_factory.mktemp("b") / "mlp")


@pytest.fixture(scope="module")
def ae_bundle(tmp_path_factory):
    """The autoencoder beside `mlp_bundle`, one per test module."""
    from scoring_bundles import AUTOENCODER
    from transactions_rows import transactions_bundle

    return transactions_bundle(tmp_path_factory.mktemp("b") / "ae", AUTOENCODER)


@pytest.fixture
def day():
    return dt.date(2026, 11, 4)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server on loopback for every test of a shared metastore (tests/postgres.py);
    each test module makes its own database on it (`server.create_database`)."""
    from postgres import postgres_server as start_postgres

    with start_postgres() as server:
        yield server
