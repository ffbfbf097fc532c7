"""Retraining: a challenger on labelled history plus analyst feedback, judged against the champion.

    verdicts (lakescore.feedback, the latest per record)
      -> prepare -> fit -> evaluate          (training.pipeline.train_candidate)
      -> the champion on the same test rows  (training.champion)
      -> export, register as challenger      (training.pipeline.export, registry)
      -> decide, and promote in one commit   (training.champion.decide, registry.record_decision)

1. The challenger follows the champion's feature spec, as its bundle records it (`train.spec` /
   `--spec` given: that one instead; no champion, or one from before specs: as `lakescore train`
   picks). Labels are the spec's label column, overridden by the latest analyst verdict per record
   from `lakescore.feedback`, joined on the record key built from the spec's `keys`
   (`lakescore.feedback_keys.record_keys`).
2. The challenger's test window is the holdout; the champion is scored on exactly those rows with
   the same labels, at its own threshold.
3. Promotion needs the challenger's holdout AUCPR to beat the champion's by retrain.min_aucpr_gain
   without lowering precision at threshold (retrain.precision_tolerance). The decision, its figures
   and its reason are written to the challenger's model_registry row, and a promotion archives the
   old champion in the same single Delta commit. Otherwise the champion keeps scoring.

`run_reproduce(name@version)` reads that bundle's lineage (source path, Delta version, date window),
feature spec and training settings, trains again from that exact data version (learning the spec's
vocabularies again, the same way), and reports whether the metrics and the learned vocabularies
match; the reproduction is not registered.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pyspark.sql import SparkSession

from lakescore import registry
from lakescore.bundle import Bundle
from lakescore.config import Settings
from lakescore.feedback import feedback_version, verdicts_for
from lakescore.specs import SourceSpec
from pipelines.train import register_run, resolve_training_input, run_train

log = logging.getLogger(__name__)

# Headline metrics compared by run_reproduce.
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
    from training.champion import decide, evaluate_champion, score_bundle_on_split
    from training.data import TEST
    from training.pipeline import CHAMPION, MODEL, export, train_candidate

    started = time.perf_counter()
    t = settings.train
    try:
        champion_entry, champion = registry.load_registered(spark, settings, t.model_name)
    except registry.RegistryError:
        champion_entry, champion = None, None
    version = feedback_version(spark, settings)
    verdicts = verdicts_for(spark, settings, t.table, version)
    log.info("retraining %s on %s with %d analyst verdict(s)", t.model_name, t.table, len(verdicts))
    inputs = resolve_training_input(spark, settings, label_overrides=verdicts, spec=recorded_spec(settings, champion))
    model_version = registry.next_version(spark, settings, t.model_name)
    candidate = train_candidate(settings, inputs, version=model_version)
    if champion is not None:
        holdout = score_bundle_on_split(candidate.data.featured, TEST, champion)
        candidate = candidate.with_champion(champion, evaluate_champion(holdout, champion, t.precision_at_k))
        log.info("champion %s scored on the same test rows", champion.label)
    lineage = {"feedback_table": settings.table("feedback"), "feedback_version": version, "feedback_labels": len(verdicts)}
    run = export(
        settings, candidate, version=model_version, bundle_dir=registry.bundle_dir(settings, t.model_name, model_version),
        lineage_extra=lineage,
    )
    entry = register_run(spark, settings, run)
    if champion is None:
        note = "first model of this name: champion"
        return RetrainResult(entry, None, True, note, {}, len(verdicts), time.perf_counter() - started)

    decision = decide(
        run.evaluation["test"][MODEL],
        run.evaluation["test"][CHAMPION],
        min_aucpr_gain=settings.retrain.min_aucpr_gain,
        precision_tolerance=settings.retrain.precision_tolerance,
    )
    figures = {**decision.figures, "feedback_labels": float(len(verdicts))}
    note = f"{decision.note()} (against {champion_entry.label})"
    registry.record_decision(spark, settings, entry, figures, note, promote=decision.promote)
    stage = "champion" if decision.promote else "challenger"
    return RetrainResult(
        dataclasses.replace(entry, stage=stage),
        champion_entry,
        decision.promote,
        note,
        figures,
        len(verdicts),
        time.perf_counter() - started,
    )


def recorded_spec(settings: Settings, bundle: Bundle | None) -> SourceSpec | None:
    """The feature spec `bundle` was trained with, unless `train.spec` names one to use instead;
    None (resolve as `lakescore train` does) without a bundle or for one from before specs."""
    if settings.train.spec is not None or bundle is None:
        return None
    fitted = bundle.manifest.feature_set.fitted
    return None if fitted is None else fitted.spec


def reproduction_settings(settings: Settings, bundle: Bundle) -> tuple[Settings, int | None]:
    """Settings that train `bundle` again: its source, window, architecture and hyper-parameters."""
    return settings.with_overrides(bundle.manifest.train_overrides()), bundle.manifest.lineage.source_version


def run_reproduce(spark: SparkSession, settings: Settings, ref: str) -> dict[str, Any]:
    """Train `ref` again from the exact data version it records and compare its metrics."""
    from training.champion import metrics_match

    entry, bundle = registry.load_registered(spark, settings, ref)
    again_settings, version = reproduction_settings(settings, bundle)
    fitted = bundle.manifest.feature_set.fitted
    lineage = bundle.manifest.lineage
    verdicts = None
    if lineage.feedback is not None and lineage.feedback.version is not None:
        # The same analyst verdicts as then: the feedback table at the version it had.
        verdicts = verdicts_for(spark, settings, lineage.source_table, lineage.feedback.version)
    scratch = Path(tempfile.mkdtemp(prefix="lakescore-reproduce-"))
    try:
        run, _ = run_train(
            spark, again_settings, source_version=version, bundle_dir=scratch / "bundle", label_overrides=verdicts,
            spec=None if fitted is None else fitted.spec,
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
    # The vocabularies learned again from the same training rows must be the recorded ones.
    again_fitted = run.bundle.manifest.feature_set.fitted
    vocabularies_match = (fitted.vocabularies if fitted else None) == (again_fitted.vocabularies if again_fitted else None)
    result.update(counts_match=counts_match, vocabularies_match=vocabularies_match,
                  vocabularies=dict(again_fitted.vocabularies) if again_fitted else {})
    result["match"] = result["match"] and counts_match and vocabularies_match
    return result
