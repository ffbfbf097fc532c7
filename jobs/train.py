"""Train a model on a lake table with Ray Train and register its bundle.

    python jobs/train.py --table transactions --kind mlp
    spark-submit --jars "$(ls .jars/*.jar | paste -sd,)" jobs/train.py --table shuttle --kind autoencoder

or `lakescore train --table transactions`. Spark only resolves the source (catalog name or path ->
path, format, pinned Delta version, column types) and writes the `model_registry` row; the rows
are read and trained on with Ray (`ray.address` unset: a Ray instance started in this process with
this machine's cores; `auto` or `ray://host:10001`: an existing cluster; `spark`: Ray started on
the Spark cluster for the job's length, see `ray_cluster`). The bundle lands in
`<lake>/models/<name>/v<version>/`; the first model of a name becomes its champion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import typer
from pyspark.sql import SparkSession

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup
from lakescore import lake, registry
from lakescore.bundle import Bundle
from lakescore.config import Settings
from lakescore.features import feature_set_for_table
from lakescore.spark import build_spark_session

log = logging.getLogger(__name__)


def run_train(
    spark: SparkSession,
    settings: Settings,
    *,
    source_version: int | None = None,
    register: bool = True,
    bundle_dir: Path | None = None,
    fault_injection: Mapping[str, Any] | None = None,
    label_overrides: Mapping[str, bool] | None = None,
    champion: Bundle | None = None,
    lineage_extra: Mapping[str, Any] | None = None,
):
    """Train `settings.train` on its table, write the bundle and register it.

    Args:
        source_version: read this Delta version of the source (default: the latest, pinned now).
        register: False writes the bundle to `bundle_dir` only (no registry row; e.g. a reproduction).
        bundle_dir: where to write the bundle (default: the registry's folder for the next version).
        fault_injection: test only; see training.trainer.train_loop_per_worker.
        label_overrides: analysts' verdicts {record key: is_anomaly} replacing source labels.
        champion: a bundle to evaluate on the same test rows (retraining).
        lineage_extra: more lineage recorded in the manifest (retraining: the feedback version).

    Returns (training.pipeline.TrainingRun, registry.ModelEntry or None when not registered).
    Ray must already be initialised.
    """
    from training.data import TableSource
    from training.pipeline import train_from_source

    t = settings.train
    source = lake.resolve_source(spark, settings, t.table)
    if source_version is not None:
        if source.format != "delta":
            raise lake.SourceError(f"{source.name} is {source.format}; only a Delta source has versions to pin")
        source = dataclasses.replace(source, version=source_version)
    schema = lake.read_source(spark, source).schema
    types = {f.name: f.dataType.simpleString() for f in schema.fields}
    feature_set = feature_set_for_table(source.name, list(types))
    feature_set.check_columns(types, source.name)
    version = registry.next_version(spark, settings, t.model_name) if register or bundle_dir is None else 0
    if bundle_dir is None:
        if not register:
            raise ValueError("run_train(register=False) needs a bundle_dir to write the bundle into")
        bundle_dir = registry.bundle_dir(settings, t.model_name, version)
    log.info("training %s v%d (%s) on %s (%s, version %s)", t.model_name, version, t.kind, source.path, source.format, source.version)
    run = train_from_source(
        settings,
        TableSource(source.name, source.path, source.format, source.version),
        list(types),
        feature_set,
        version=version,
        bundle_dir=bundle_dir,
        fault_injection=fault_injection,
        label_overrides=label_overrides,
        champion=champion,
        lineage_extra=lineage_extra,
    )
    if not register:
        return run, None
    try:
        entry = registry.register_bundle(spark, settings, run.bundle, bundle_dir)
    except BaseException:
        registry.discard_bundle(bundle_dir)
        raise
    return run, entry


RAY_ON_SPARK = "spark"


@contextlib.contextmanager
def ray_cluster(settings: Settings, spark: SparkSession | None = None) -> Iterator[None]:
    """Ray for the length of a job, as `ray.address` says:

    - unset: a Ray instance started in this process with this machine's cores;
    - `auto` or `ray://host:10001`: join that existing cluster (left running afterwards);
    - `spark`: start Ray on the Spark cluster of `spark` with `ray.util.spark.setup_ray_cluster`
      (a head node in the driver, `ray.spark_worker_nodes` worker nodes as long-running Spark
      tasks), for shops that run only Spark; shut down when the job ends, pass or fail. Leave
      Spark task slots free for the job's own reads and writes: the worker nodes hold theirs.

    Ray already initialised in this process (tests, notebooks) is used as it is.
    """
    on_spark = settings.ray.address == RAY_ON_SPARK
    if on_spark:
        from training.ray_on_spark import node_environment

        # Before ray is first imported: it reads its authentication mode once per process.
        os.environ.update(node_environment())
    import ray
    from ray.data import DataContext

    if ray.is_initialized():
        yield
        return
    with contextlib.ExitStack() as stack:
        if on_spark:
            if spark is None:
                raise ValueError("ray.address = 'spark' needs the job's Spark session to start Ray on")
            from training.ray_on_spark import ray_on_spark

            address = stack.enter_context(
                ray_on_spark(spark, worker_nodes=settings.ray.spark_worker_nodes, head_cpus=settings.ray.spark_head_cpus)
            )
            ray.init(address=address, log_to_driver=False)
        elif settings.ray.address:
            ray.init(address=settings.ray.address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
        stack.callback(ray.shutdown)
        DataContext.get_current().enable_progress_bars = False
        yield


def training_job_session(settings: Settings, app_name: str, verbose: bool) -> SparkSession:
    """The Spark session of a job that trains with Ray (train, retrain): Ray's own loggers at
    WARNING unless --verbose, Spark's at ERROR."""
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    spark = build_spark_session(settings, app_name=app_name)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def train(
    table: Optional[str] = typer.Option(None, help="Catalog table or path (default: train.table)."),
    kind: Optional[str] = typer.Option(None, help="mlp (supervised) or autoencoder."),
    model_name: Optional[str] = typer.Option(None, "--name", help="Model name in the registry (default: train.model_name)."),
    epochs: Optional[int] = typer.Option(None, help="Most epochs (early stopping may end sooner)."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (default: ray.num_workers)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Train a model with Ray Train on a lake table, evaluate it against IsolationForest, register its bundle."""
    settings = setup(
        config,
        set_,
        {
            "train.table": table,
            "train.kind": kind,
            "train.model_name": model_name,
            "train.epochs": epochs,
            "ray.num_workers": workers,
        },
        verbose,
    )
    spark = training_job_session(settings, "lakescore-train", verbose)
    try:
        with ray_cluster(settings, spark):
            started = time.perf_counter()
            try:
                run, entry = run_train(spark, settings)
            except ValueError as exc:  # SourceError, TrainingDataError, UnreadableSourceError, BundleError...
                log.debug("training failed", exc_info=True)
                fail(str(exc))
            elapsed = time.perf_counter() - started
        print_summary(run.bundle, entry, run.table, elapsed)
    finally:
        spark.stop()


def print_summary(bundle: Bundle, entry: registry.ModelEntry, table: str, elapsed: float) -> None:
    """Print what was trained, the per-epoch metrics and the evaluation table."""
    m = bundle.manifest
    training, lineage, threshold = m.training, m.lineage, m.threshold
    counts = lineage.counts
    typer.echo(
        f"{bundle.label} ({bundle.kind}, {entry.stage}) trained on {lineage.source_table} "
        f"(version {lineage.source_version}) in {elapsed:.0f}s: "
        f"{training.epochs_run} epochs, best {training.best_epoch}, "
        f"{len(training.attempts)} worker-group start(s)"
    )
    typer.echo(
        "rows (anomalies): "
        + ", ".join(f"{split} {c['rows']:,} ({c['anomalies']:,})" for split, c in counts.items())
    )
    for epoch in training.history:
        typer.echo(
            f"  epoch {epoch['epoch']:>3}  loss {epoch['train_loss']:.4f}  validation AUCPR "
            f"{_num(epoch['validation_aucpr'])}  {epoch['train_rows_per_s']:,.0f} rows/s"
        )
    typer.echo(
        f"threshold {threshold.value:.6g} ({threshold.policy} {threshold.target})"
        + (f": {threshold.fallback}" if threshold.fallback else "")
    )
    typer.echo("test split:")
    typer.echo(table)
    typer.echo(f"bundle {entry.path} (sha256 {bundle.sha256[:12]}...)")


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main() -> None:
    typer.run(train)


if __name__ == "__main__":
    main()
