"""Training a model on a lake table: Spark resolves the source and keeps the registry, Ray trains.

    resolve_training_input -> training.pipeline.train_from_source -> register_run

Spark only resolves the source (catalog name or path -> path, format, pinned Delta version, column
types) and writes the `model_registry` row; the rows are read and trained on with Ray (see
`ray_cluster` for where Ray runs). The bundle lands in `<lake>/models/<name>/v<version>/`; the
first model of a name becomes its champion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pyspark.sql import SparkSession

from lakescore import lake, registry
from lakescore.config import Settings
from lakescore.features import feature_set_for_table

if TYPE_CHECKING:  # training imports torch and ray: only when a run starts
    from training.pipeline import TrainingInput, TrainingRun
    from training.trainer import EpochHook

log = logging.getLogger(__name__)


def run_train(
    spark: SparkSession,
    settings: Settings,
    *,
    source_version: int | None = None,
    bundle_dir: Path | None = None,
    label_overrides: dict[str, bool] | None = None,
    on_epoch_end: "EpochHook | None" = None,
) -> tuple["TrainingRun", registry.ModelEntry | None]:
    """Train `settings.train` on its table, write the bundle and register it.

    Args:
        source_version: read this Delta version of the source (default: the latest, pinned now).
        bundle_dir: write the bundle there and do NOT register it (e.g. a reproduction);
            default: the registry's folder for the next version, registered.
        label_overrides: analysts' verdicts {record key: is_anomaly} replacing source labels.
        on_epoch_end: see training.trainer.fit_model (tests pass one to kill a worker).

    Returns (the training run, the registry entry or None when not registered).
    Ray must already be initialised.
    """
    from training.pipeline import train_from_source

    inputs = resolve_training_input(spark, settings, source_version=source_version, label_overrides=label_overrides)
    register = bundle_dir is None
    version = registry.next_version(spark, settings, settings.train.model_name) if register else 0
    directory = registry.bundle_dir(settings, settings.train.model_name, version) if register else bundle_dir
    _log_start(settings, inputs, version)
    run = train_from_source(settings, inputs, version=version, bundle_dir=directory, on_epoch_end=on_epoch_end)
    return run, register_run(spark, settings, run) if register else None


def resolve_training_input(
    spark: SparkSession,
    settings: Settings,
    *,
    source_version: int | None = None,
    label_overrides: dict[str, bool] | None = None,
) -> "TrainingInput":
    """Resolve `settings.train.table` (pinned at `source_version`, default its latest version) and
    check its columns against the table's feature set; no row is read."""
    from training.data import TableSource
    from training.pipeline import TrainingInput

    source = lake.resolve_source(spark, settings, settings.train.table)
    if source_version is not None:
        if source.format != "delta":
            raise lake.SourceError(f"{source.name} is {source.format}; only a Delta source has versions to pin")
        source = dataclasses.replace(source, version=source_version)
    schema = lake.read_source(spark, source).schema
    types = {f.name: f.dataType.simpleString() for f in schema.fields}
    feature_set = feature_set_for_table(source.name, list(types))
    feature_set.check_columns(types, source.name)
    return TrainingInput(
        source=TableSource(source.name, source.path, source.format, source.version),
        columns=tuple(types),
        feature_set=feature_set,
        label_overrides=dict(label_overrides or {}),
    )


def register_run(spark: SparkSession, settings: Settings, run: "TrainingRun") -> registry.ModelEntry:
    """Register a written bundle; if registering fails, the bundle is removed again."""
    try:
        return registry.register_bundle(spark, settings, run.bundle, run.path)
    except BaseException:
        registry.discard_bundle(run.path)
        raise


def _log_start(settings: Settings, inputs: "TrainingInput", version: int) -> None:
    t, source = settings.train, inputs.source
    log.info("training %s v%d (%s) on %s (%s, version %s)", t.model_name, version, t.kind, source.path, source.format, source.version)


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
