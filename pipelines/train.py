"""Training a model on a lake table: Spark resolves the source and keeps the registry, Ray trains.

    resolve_training_input -> training.pipeline.train_from_source -> register_run

Spark only resolves the source (catalog name or path -> path, format, pinned Delta version, column
types), picks and checks the table's feature spec against its schema and a small sample of its
rows, and writes the `model_registry` row; the rows are read and trained on with Ray (see
`ray_cluster` for where Ray runs). A wrong spec fails before Ray starts, so it leaves no bundle
and no registry row. The bundle lands in `<lake>/models/<name>/v<version>/`; the first model of a
name becomes its champion.

The feature spec (`lakescore.specs`), first that applies: the one passed in (retraining: the
champion's), `train.spec` (`--spec FILE`), the builtin spec whose columns the table has
(transactions_v1, shuttle_v1, breast_cancer_v1), else one suggested from a sample of the table,
logged and returned as commented TOML so the job prints what it assumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakescore import lake, registry
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.features import builtin_spec_for_table
from lakescore.specs import SourceSpec, SpecError, load_spec, render_suggestion, spec_name_for, suggest_spec

if TYPE_CHECKING:  # training imports torch and ray: only when a run starts
    from training.pipeline import TrainingInput, TrainingRun
    from training.trainer import EpochHook

log = logging.getLogger(__name__)

# Rows of the source `SourceSpec.check_sample` sees (labels, key uniqueness), and a suggested spec
# is drafted from: collected to the driver, so a few thousand.
CHECK_SAMPLE_ROWS = 5000


def train_job(
    spark: SparkSession, settings: Settings, *, on_resolved: "Callable[[TrainingInput], None] | None" = None
) -> tuple["TrainingInput", "TrainingRun", registry.ModelEntry | None]:
    """The train job's sequence: resolve the source and check its feature spec (Spark only: a
    wrong spec fails here, before Ray starts, writing nothing), call `on_resolved` (the job prints
    a suggested spec), then start Ray (`ray_cluster`) and train, write and register.

    Returns (what was trained on, the training run, the registry entry)."""
    inputs = resolve_training_input(spark, settings)
    if on_resolved is not None:
        on_resolved(inputs)
    with ray_cluster(settings, spark):
        run, entry = run_train(spark, settings, inputs=inputs)
    return inputs, run, entry


def run_train(
    spark: SparkSession,
    settings: Settings,
    *,
    source_version: int | None = None,
    bundle_dir: Path | None = None,
    label_overrides: dict[str, bool] | None = None,
    on_epoch_end: "EpochHook | None" = None,
    spec: SourceSpec | None = None,
    inputs: "TrainingInput | None" = None,
) -> tuple["TrainingRun", registry.ModelEntry | None]:
    """Train `settings.train` on its table, write the bundle and register it.

    Args:
        source_version: read this Delta version of the source (default: the latest, pinned now).
        bundle_dir: write the bundle there and do NOT register it (e.g. a reproduction);
            default: the registry's folder for the next version, registered.
        label_overrides: analysts' verdicts {record key: is_anomaly} replacing source labels.
        on_epoch_end: see training.trainer.fit_model (tests pass one to kill a worker).
        spec: train with this feature spec (default: see `resolve_training_input`).
        inputs: already resolved (a job resolves before starting Ray, so a wrong spec costs
            nothing); the arguments above that resolve are then unused.

    Returns (the training run, the registry entry or None when not registered).
    Ray must already be initialised.
    """
    from training.pipeline import train_from_source

    if inputs is None:
        inputs = resolve_training_input(
            spark, settings, source_version=source_version, label_overrides=label_overrides, spec=spec
        )
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
    spec: SourceSpec | None = None,
) -> "TrainingInput":
    """Resolve `settings.train.table` (pinned at `source_version`, default its latest version),
    pick its feature spec (see the module docstring) and check it against the table's schema and
    a sample of `CHECK_SAMPLE_ROWS` rows; nothing is trained and Ray is not needed.

    Raises SpecError (a ValueError naming the spec's key and the fix) when the spec does not fit
    the table or the model kind, lake.SourceError when the table cannot be resolved.
    """
    from training.data import TableSource, source_dates
    from training.pipeline import TrainingInput

    t = settings.train
    source = lake.resolve_source(spark, settings, t.table)
    if source_version is not None:
        if source.format != "delta":
            raise lake.SourceError(f"{source.name} is {source.format}; only a Delta source has versions to pin")
        source = dataclasses.replace(source, version=source_version)
    frame = lake.read_source(spark, source)
    types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    suggested = None
    if spec is None and t.spec is not None:
        spec = load_spec(t.spec)
    if spec is None:
        spec = builtin_spec_for_table(types)
    # Samples are the first rows as stored: a cheap read (a partition or two), enough to see a
    # label's values and duplicated keys, and to draft a spec from.
    if spec is None:
        sample = frame.limit(CHECK_SAMPLE_ROWS).toPandas()
        partitions = lake.partition_columns(spark, source)
        suggestion = suggest_spec(types, sample, name=spec_name_for(source.name), partition_columns=partitions)
        spec, notes = suggestion.spec, dict(suggestion.notes)
        if spec.date_column is not None and spec.date_column not in partitions and spec.keys:
            # The time split reads dates from partitions: without one, split by the keys.
            notes["date_column"] = f"{spec.date_column} is no partition column, so the split is by the keys"
            spec = dataclasses.replace(spec, date_column=None)
        suggested = render_suggestion(spec, notes, suggestion.left_out)
        log.warning("no feature spec given for %s; using this suggested spec:\n%s", source.name, suggested)
    spec.check_schema(types, source.name)
    if spec.label is None and t.kind == S.MLP:
        raise SpecError(
            f"{source.name}: spec {spec.name} has no `label`, and train.kind = mlp learns from one; add "
            "`label = \"<a true/false column>\"` to the spec, or train an autoencoder (--kind autoencoder), "
            "which needs no label"
        )
    table_source = TableSource(source.name, source.path, source.format, source.version)
    if spec.date_column is None and not spec.keys:
        raise SpecError(
            f"{source.name}: spec {spec.name} has neither `date_column` (a time split) nor `keys` (a split by a "
            "hash of the key); name the date partition column or the column(s) that identify a row"
        )
    if spec.date_column is not None and not source_dates(table_source, spec.date_column):
        raise SpecError(
            f"{source.name}: `date_column` {spec.date_column!r} of spec {spec.name} is no partition column of the "
            f"table, and the time split reads its dates from the partitions; write the table partitioned by "
            f"{spec.date_column}, or drop `date_column` to split by the spec's `keys`"
        )
    if label_overrides and not spec.keys:
        raise SpecError(
            f"{source.name}: `keys` of spec {spec.name} is empty, but analysts' verdicts name rows by their key; "
            "list the column(s) that identify a row in `keys`"
        )
    if suggested is None:  # the label and keys only: a wide table's features are not collected
        needed = [c for c in (*spec.keys, spec.label) if c is not None]
        # Quoted: a column name may hold spaces or dots (`a.b` is no struct field here).
        quoted = [F.col("`" + c.replace("`", "``") + "`") for c in needed]
        sample = frame.select(*quoted).limit(CHECK_SAMPLE_ROWS).toPandas() if needed else frame.limit(0).toPandas()
    spec.check_sample(sample, source.name)
    return TrainingInput(
        source=table_source,
        columns=tuple(types),
        spec=spec,
        label_overrides=dict(label_overrides or {}),
        suggested=suggested,
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
# Ray Train's controller collects a worker's report (one per epoch, with its checkpoint) when it
# polls the worker group, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S seconds (Ray's default: 2), and
# a worker's next report waits until the last one is collected. On a table of a few hundred rows
# that wait was most of an epoch (docs/measurements.md, "Training a small table"). A value in the
# job's environment wins.
TRAIN_POLL_INTERVAL_S = "0.2"


def job_environment() -> dict[str, str]:
    """Environment variables for the Ray processes of a training job (its runtime_env)."""
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_INTERVAL_S)}


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
    runtime_env = {"env_vars": job_environment()}
    with contextlib.ExitStack() as stack:
        if on_spark:
            if spark is None:
                raise ValueError("ray.address = 'spark' needs the job's Spark session to start Ray on")
            from training.ray_on_spark import ray_on_spark

            address = stack.enter_context(
                ray_on_spark(spark, worker_nodes=settings.ray.spark_worker_nodes, head_cpus=settings.ray.spark_head_cpus)
            )
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        elif settings.ray.address:
            ray.init(address=settings.ray.address, log_to_driver=False, runtime_env=runtime_env)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
        stack.callback(ray.shutdown)
        DataContext.get_current().enable_progress_bars = False
        yield
