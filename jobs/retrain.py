"""Retrain: a challenger on labelled history plus analyst feedback, judged against the champion.

    python jobs/retrain.py --table transactions --name transactions
    lakescore retrain --table transactions                       # the same
    lakescore retrain --reproduce transactions@3                 # train v3 again from its exact data
    lakescore retrain --table sensors --spec sensors_v2.toml     # a challenger with another feature spec

The challenger follows the champion's recorded feature spec unless --spec (train.spec) names one.

What a run does, step by step, and how it decides: pipelines/retrain.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup, training_job_session
from lakescore import lake
from pipelines.retrain import RetrainResult, run_reproduce, run_retrain
from pipelines.train import ray_cluster


def retrain(
    table: Optional[str] = typer.Option(None, help="Labelled history: catalog table or path (default: train.table)."),
    model_name: Optional[str] = typer.Option(None, "--name", help="Model name whose champion is challenged."),
    reproduce: Optional[str] = typer.Option(None, help="name@version: train it again from its recorded data version."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (default: ray.num_workers)."),
    spec: Optional[Path] = typer.Option(None, help="Feature spec, TOML, for the challenger (default: the champion's)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Train a challenger (labels + analyst feedback), compare it with the champion on the same holdout, promote if better."""
    settings = setup(
        config, set_, {"train.table": table, "train.model_name": model_name, "ray.num_workers": workers, "train.spec": spec}, verbose
    )
    spark = training_job_session(settings, "lakescore-retrain", verbose)
    try:
        with ray_cluster(settings, spark):
            try:
                if reproduce:
                    _print_reproduction(run_reproduce(spark, settings, reproduce))
                else:
                    _print_result(run_retrain(spark, settings))
            except (ValueError, lake.SourceError) as exc:
                fail(str(exc))
    finally:
        spark.stop()


def _print_result(result: RetrainResult) -> None:
    f = result.figures
    typer.echo(f"challenger {result.challenger.label}: {result.reason}")
    if result.champion is not None:
        typer.echo(f"{'holdout':24} {'challenger':>12} {'champion':>12}")
        for metric in ("aucpr", "precision", "recall"):
            typer.echo(f"{metric:24} {f['holdout_' + metric]:>12.4f} {f['champion_holdout_' + metric]:>12.4f}")
        typer.echo(f"{'rows':24} {int(f['holdout_rows']):>12,}")
    typer.echo(f"analyst verdicts used as labels: {result.feedback_labels}; took {result.seconds:.0f}s")
    typer.echo(f"champion now: {result.challenger.label if result.promoted else result.champion.label}")


def _print_reproduction(result: Mapping[str, Any]) -> None:
    typer.echo(
        f"reproduced {result['model']} from {result['source']} at Delta version {result['source_version']}: "
        + ("metrics MATCH" if result["match"] else "metrics DIFFER")
        + f" (largest difference {result['max_abs_difference']:.2g}, tolerance {result['tolerance']})"
    )
    for key, original in result["original"].items():
        typer.echo(f"  {key:20} {original:>10.4f} {result['reproduced'][key]:>10.4f}")


def main() -> None:
    typer.run(retrain)


if __name__ == "__main__":
    main()
