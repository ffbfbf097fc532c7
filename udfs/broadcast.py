"""Shipping a model bundle to Spark executors: broadcast once, verify and build once per worker.

On the driver the bundle is read and verified from the registry (or a path); its files (a few
hundred KB: manifest, weights, reference statistics) are broadcast as a dict of bytes. On an
executor the first task of each Python worker verifies those bytes again (every sha256 in the
manifest, and the manifest's own sha256 against the one the driver saw), builds the model, and
caches it by sha256; later tasks on that worker skip straight to scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping

from pyspark import Broadcast
from pyspark.sql import SparkSession

from lakescore.bundle import MANIFEST, Bundle, BundleError, sha256_bytes, verify_files
from lakescore.features import FeatureSet
from udfs.model_cache import SCORING_MODELS, ModelCache
from udfs.run_totals import RunTotalsLayout
from udfs.scorer import ScoringModel, build_scoring_model
from udfs.worker import configure_torch_for_worker, freeze_worker_heap


@dataclass(frozen=True)
class BroadcastModel:
    """A bundle verified on the driver and shipped to the executors, with what the driver
    derives from it once per job: its feature set and the layout of its run totals."""

    bundle: Bundle
    files: Broadcast  # the bundle's files as bytes, verified again by each Python worker

    @property
    def sha256(self) -> str:
        return self.bundle.sha256

    @property
    def feature_set(self) -> FeatureSet:
        return self.bundle.feature_set

    @cached_property
    def layout(self) -> RunTotalsLayout:
        return RunTotalsLayout.from_bundle(self.bundle)


def broadcast_model(spark: SparkSession, bundle: Bundle) -> BroadcastModel:
    """Broadcast a verified bundle's files (bytes) to the executors; call once per job on the driver.

    Every file is sent, evaluation plots included (a few KB), because executors verify the
    manifest's whole file list again before building the model.
    """
    return BroadcastModel(bundle=bundle, files=spark.sparkContext.broadcast(dict(bundle.files)))


def bundle_from_files(files: Mapping[str, bytes], expected_sha256: str) -> Bundle:
    """Verify broadcast bundle files on an executor; BundleError if anything differs."""
    actual = sha256_bytes(files.get(MANIFEST, b""))
    if actual != expected_sha256:
        raise BundleError(
            f"the broadcast model bundle has sha256 {actual[:12]}..., the driver loaded {expected_sha256[:12]}...: "
            "the broadcast was corrupted; re-run the job"
        )
    return verify_files(files, f"broadcast bundle {expected_sha256[:12]}")


def load_scoring_model(
    bundle_broadcast: Broadcast, sha256: str, cache: ModelCache | None = None
) -> ScoringModel:
    """The worker's model for the broadcast bundle: from the cache, else verified and built.

    Args:
        bundle_broadcast: `broadcast_model(...).files`.
        sha256: the bundle's sha256 as the driver saw it (the cache key).
        cache: defaults to this worker's cache.
    """
    cache = SCORING_MODELS if cache is None else cache

    def build() -> ScoringModel:
        configure_torch_for_worker()
        model = build_scoring_model(bundle_from_files(bundle_broadcast.value, sha256))
        freeze_worker_heap()  # else every task ends with a full collection over torch's objects
        return model

    return cache.get_or_build(sha256, build)
