"""The nightly scoring job as an Airflow DAG: one spark-submit a day, the day passed as --run-date.

Deploy: copy this file into the DAGs folder of an Airflow 2.7+ (or 3.x) that has
`apache-airflow-providers-apache-spark`, and on the Airflow workers:
- `spark-submit` (Spark 4.2) with $SPARK_CONF_DIR/spark-defaults.conf = the file of your cluster
  kind from cluster_configs/spark/ (Delta, metastore, Python, sizes live there, not here);
- a lakescore release at LAKESCORE_HOME: jobs/score_nightly.py and dist/lakescore-<version>.zip
  (`make dist`), and .jars/ when the defaults file points spark.jars there;
- an Airflow connection `spark_lakescore` of type Spark: host spark://spark-master.internal,
  port 7077 (or host yarn, or k8s://https://...), extra {"deploy-mode": "client"}.

The task runs `--catch-up`: every date after the last complete run of (source, model) up to
yesterday (UTC), each its own run, so a night that failed or was skipped is scored by the next
one. `{{ ds }}` (the run's logical date, the START of its data interval: the 02:30 run of
2026-11-28 has ds = 2026-11-27, the day that just ended) is passed as `--from`, which a catch-up
uses only when the slice has never been scored. To re-score a date that is already complete, run
`lakescore score --run-date YYYY-MM-DD`: it replaces that date's slice, so a re-run never
duplicates rows.

The job's exit codes (jobs/score_nightly.py) tell a failed task's cause: 2 bad input or config
(fix, then clear), 3 source partition missing or short (the data is late: a retry may succeed),
4 verification failed, 5 a concurrent run committed first, 1 an internal error.
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

LAKESCORE_HOME = "/opt/lakescore"  # SITE: where the release is unpacked on the Airflow workers
LAKESCORE_VERSION = "0.1.0"

with DAG(
    dag_id="lakescore_nightly",
    description="Score yesterday's transactions with the champion model; write flagged and run_metrics.",
    # 02:30 UTC daily: after the day's source partition has landed (SITE: align with ingestion).
    schedule="30 2 * * *",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    # Turning the DAG on does not backfill every day since start_date; backfill explicitly.
    catchup=False,
    # One run at a time, like the spark-operator's concurrencyPolicy Forbid: two runs would
    # compete for the same executors and race on the same tables' commits.
    max_active_runs=1,
    default_args={
        "owner": "lakescore",
        # A failed night is retried; each attempt replaces the date atomically.
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=10),
        "execution_timeout": dt.timedelta(hours=3),
    },
    tags=["lakescore", "spark"],
) as dag:
    score = SparkSubmitOperator(
        task_id="score_nightly",
        conn_id="spark_lakescore",
        application=f"{LAKESCORE_HOME}/jobs/score_nightly.py",
        # lakescore's own code for the driver and the executors (`lakescore package` / `make dist`).
        py_files=f"{LAKESCORE_HOME}/dist/lakescore-{LAKESCORE_VERSION}.zip",
        name="lakescore-nightly-{{ ds }}",
        application_args=[
            "--catch-up",
            "--from", "{{ ds }}",
            "--model", "transactions",
            "--table", "transactions",
        ],
        # lakescore reads its settings from LAKESCORE_* (the driver runs in this task's process
        # in client mode). SITE: the shared lake mount.
        env_vars={"LAKESCORE_LAKE_ROOT": "/mnt/lake"},
        verbose=False,
    )
