"""Retrain: a challenger on labelled history plus analyst feedback, judged against the champion.

    python jobs/retrain.py --table transactions --name transactions
    lakescore retrain --table transactions                       # the same
    lakescore retrain --reproduce transactions@3                 # train v3 again from its exact data

Safe to run unattended:
1. Labels are the source's `is_anomaly`, overridden by the latest analyst verdict per record
   from `lakescore.feedback` (joined by transaction_id / record_id).
2. The challenger is trained with the ordinary training pipeline (Ray Train) and registered as a
   challenger. Its test window is the holdout; the champion is scored on exactly those rows with
   the same labels, at its own threshold.
3. Promotion needs the challenger's holdout AUCPR to beat the champion's by retrain.min_aucpr_gain
   without lowering precision at threshold (retrain.precision_tolerance). The decision, its figures
   and its reason are written to the challenger's model_registry row, and a promotion archives the
   old champion in the same single Delta commit. Otherwise the champion keeps scoring.

`--reproduce name@version` reads that bundle's lineage (source path, Delta version, date window)
and training settings (architecture, hyper-parameters, seed), trains again from that exact data
version, and reports whether the metrics match; the reproduction is not registered.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import typer
from pyspark.sql import SparkSession

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, setup
from jobs.train import ray_cluster, run_train, training_job_session
from lakescore import lake, registry
from lakescore.bundle import Bundle
from lakescore.config import Settings
from lakescore.feedback import feedback_version, verdicts_for

log = logging.getLogger(__name__)

# Headline metrics compared by --reproduce.
REPRODUCED_METRICS = ("validation_aucpr", "test_aucpr", "test_aucroc", "test_precision", "test_recall", "threshold")


@dataclass(frozen=True)
class RetrainResult:
    challenger: registry.ModelEntry
    champion: registry.ModelEntry | None  # the champion it was compared with (None: first model)
    promoted: bool
    reason: str
    figures: Mapping[str, float]
    feedback_labels: int
    seconds: float


def run_retrain(spark: SparkSession, settings: Settings) -> RetrainResult:
    """Train a challenger for `settings.train.model_name` and promote it if it is better.

    Ray must be initialised. With no champion yet, the new model simply becomes the champion.
    """
    from training.retrain import decide

    started = time.perf_counter()
    t = settings.train
    try:
        champion_entry, champion = registry.load_registered(spark, settings, t.model_name)
    except registry.RegistryError:
        champion_entry, champion = None, None
    version = feedback_version(spark, settings)
    verdicts = verdicts_for(spark, settings, t.table, version)
    log.info("retraining %s on %s with %d analyst verdict(s)", t.model_name, t.table, len(verdicts))
    lineage = {"feedback_table": settings.table("feedback"), "feedback_version": version, "feedback_labels": len(verdicts)}
    run, entry = run_train(spark, settings, label_overrides=verdicts, champion=champion, lineage_extra=lineage)
    if champion is None:
        return RetrainResult(entry, None, True, "first model of this name: champion", {}, len(verdicts), time.perf_counter() - started)

    decision = decide(
        run.evaluation["test"]["model"],
        run.evaluation["test"]["champion"],
        min_aucpr_gain=settings.retrain.min_aucpr_gain,
        precision_tolerance=settings.retrain.precision_tolerance,
    )
    figures = {**decision.figures, "feedback_labels": float(len(verdicts))}
    note = f"{decision.note()} (against {champion_entry.label})"
    registry.record_decision(spark, settings, entry, figures, note, promote=decision.promote)
    return RetrainResult(
        dataclasses.replace(entry, stage="champion" if decision.promote else "challenger"),
        champion_entry,
        decision.promote,
        note,
        figures,
        len(verdicts),
        time.perf_counter() - started,
    )


def reproduction_settings(settings: Settings, bundle: Bundle) -> tuple[Settings, int | None]:
    """Settings that train `bundle` again: its source, window, architecture and hyper-parameters."""
    return settings.with_overrides(bundle.manifest.train_overrides()), bundle.manifest.lineage.source_version


def run_reproduce(spark: SparkSession, settings: Settings, ref: str) -> dict[str, Any]:
    """Train `ref` again from the exact data version it records and compare its metrics."""
    from training.retrain import metrics_match

    entry, bundle = registry.load_registered(spark, settings, ref)
    again_settings, version = reproduction_settings(settings, bundle)
    lineage = bundle.manifest.lineage
    verdicts = None
    if lineage.feedback is not None and lineage.feedback.version is not None:
        # The same analyst verdicts as then: the feedback table at the version it had.
        verdicts = verdicts_for(spark, settings, lineage.source_table, lineage.feedback.version)
    scratch = Path(tempfile.mkdtemp(prefix="lakescore-reproduce-"))
    try:
        run, _ = run_train(
            spark,
            again_settings,
            source_version=version,
            register=False,
            bundle_dir=scratch / "bundle",
            label_overrides=verdicts,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    recorded = bundle.manifest.metrics or {}
    original = {k: recorded[k] for k in REPRODUCED_METRICS if k in recorded}
    again = {k: run.bundle.manifest.metrics[k] for k in original}
    result = metrics_match(original, again, settings.retrain.reproduce_tolerance)
    # Same data version, window and verdicts must give the very same rows and labels per split.
    counts_match = run.bundle.manifest.lineage.counts == lineage.counts
    result.update(model=entry.label, source=lineage.source_path, source_version=version,
                  original=original, reproduced=again, counts_match=counts_match)
    result["match"] = result["match"] and counts_match
    return result


def retrain(
    table: Optional[str] = typer.Option(None, help="Labelled history: catalog table or path (default: train.table)."),
    model_name: Optional[str] = typer.Option(None, "--name", help="Model name whose champion is challenged."),
    reproduce: Optional[str] = typer.Option(None, help="name@version: train it again from its recorded data version."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (default: ray.num_workers)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Train a challenger (labels + analyst feedback), compare it with the champion on the same holdout, promote if better."""
    settings = setup(
        config, set_, {"train.table": table, "train.model_name": model_name, "ray.num_workers": workers}, verbose
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
