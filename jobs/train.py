"""Train a model on a lake table with Ray Train and register its bundle.

    python jobs/train.py --table transactions --kind mlp
    spark-submit --jars "$(ls .jars/*.jar | paste -sd,)" jobs/train.py --table shuttle --kind autoencoder

or `lakescore train --table sensors --spec sensors.toml`. The table's feature spec: `--spec FILE`
(or `train.spec`), else the builtin spec whose columns the table has, else one suggested from a
sample of its rows, printed as commented TOML to save and edit. Without a `label` in the spec,
train `--kind autoencoder` (unsupervised). What a run does: pipelines/train.py. Ray runs where
`ray.address` says (unset: in this process with this machine's cores; `auto` or
`ray://host:10001`: an existing cluster; `spark`: started on the Spark cluster for the job's
length). The bundle lands in `<lake>/models/<name>/v<version>/`; the first model of a name
becomes its champion.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup, training_job_session
from lakescore import registry
from lakescore.bundle import Bundle
from pipelines.train import train_job

log = logging.getLogger(__name__)


def train(
    table: Optional[str] = typer.Option(None, help="Catalog table or path (default: train.table)."),
    kind: Optional[str] = typer.Option(None, help="mlp (supervised) or autoencoder."),
    model_name: Optional[str] = typer.Option(None, "--name", help="Model name in the registry (default: train.model_name)."),
    epochs: Optional[int] = typer.Option(None, help="Most epochs (early stopping may end sooner)."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (default: ray.num_workers)."),
    spec: Optional[Path] = typer.Option(
        None, help="The table's feature spec, TOML (default: train.spec, else builtin, else suggested and printed)."
    ),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Train a model with Ray Train on a lake table, evaluate it against IsolationForest, register its bundle.

    \f
    Each parameter is one command-line option (typer reads them from this signature), hence more than seven.
    """
    settings = setup(
        config,
        set_,
        {
            "train.table": table,
            "train.kind": kind,
            "train.model_name": model_name,
            "train.epochs": epochs,
            "ray.num_workers": workers,
            "train.spec": spec,
        },
        verbose,
    )
    spark = training_job_session(settings, "lakescore-train", verbose)
    try:
        started = time.perf_counter()
        try:
            _, run, entry = train_job(spark, settings, on_resolved=_print_suggested)
        except ValueError as exc:  # SpecError, SourceError, TrainingDataError, UnreadableSourceError, BundleError...
            log.debug("training failed", exc_info=True)
            fail(str(exc))
        elapsed = time.perf_counter() - started
        print_summary(run.bundle, entry, run.table, elapsed)
    finally:
        spark.stop()


def _print_suggested(inputs) -> None:
    if inputs.suggested:
        typer.echo("No --spec given; using this suggested spec (save it, edit it, pass it with --spec):")
        typer.echo(inputs.suggested)


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
            f"{_num(epoch['validation_aucpr'])}  loss {_num(epoch.get('validation_loss'))}  "
            f"{epoch['train_rows_per_s']:,.0f} rows/s"
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
