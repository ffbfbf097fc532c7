"""The per-worker model: broadcast bundle verification, the model cache and the worker's tuning, without Spark."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from lakescore.bundle import WEIGHTS, BundleError
from lakescore.models import score_batch
from scoring_bundles import AUTOENCODER
from udfs.broadcast import bundle_from_files, load_scoring_model
from udfs.model_cache import ModelCache


@pytest.fixture(autouse=True)
def _collect_as_usual_after_each_test():
    """load_scoring_model freezes the heap, as a Spark worker wants: this test process does not."""
    yield
    gc.unfreeze()


class _FakeBroadcast:
    """Stands in for a pyspark Broadcast on a worker: `.value` holds the files; reads are counted."""

    def __init__(self, files):
        self._files = files
        self.reads = 0

    @property
    def value(self):
        self.reads += 1
        return self._files


def test_a_worker_builds_the_model_once_per_bundle_sha256_and_reuses_it(mlp_bundle, ae_bundle):
    cache = ModelCache()
    broadcast = _FakeBroadcast(mlp_bundle.files)
    first = load_scoring_model(broadcast, mlp_bundle.sha256, cache)
    again = load_scoring_model(broadcast, mlp_bundle.sha256, cache)
    assert again is first and cache.builds == 1 and broadcast.reads == 1
    other = load_scoring_model(_FakeBroadcast(ae_bundle.files), ae_bundle.sha256, cache)
    assert other.kind == AUTOENCODER and cache.builds == 2
    assert torch.get_num_threads() == 1


def test_a_worker_freezes_what_it_holds_once_its_model_is_built(mlp_bundle):
    # PySpark's daemon runs gc.collect() after every task of a reused worker: over torch's objects
    # that is a full pass every task, unless they are frozen (udfs.worker.freeze_worker_heap).
    assert gc.get_freeze_count() == 0
    cache = ModelCache()
    scoring = load_scoring_model(_FakeBroadcast(mlp_bundle.files), mlp_bundle.sha256, cache)
    frozen = gc.get_freeze_count()
    assert frozen > 50_000  # torch, pyarrow, pyspark and the model
    assert len(gc.get_objects()) < frozen / 100  # what a collection still walks
    # Frozen objects still score, and a cache hit freezes nothing more: what a task makes after
    # the build (here `later`) stays where a collection sees it. (The frozen count itself may
    # fall: refcounting still frees a frozen object that dies.)
    x = np.zeros((3, len(scoring.feature_set.features)), np.float32)
    assert score_batch(scoring.model, scoring.kind, x).shape == (3,)
    later = [[] for _ in range(10)]
    assert load_scoring_model(_FakeBroadcast(mlp_bundle.files), mlp_bundle.sha256, cache) is scoring
    assert gc.get_freeze_count() <= frozen
    assert any(o is later for o in gc.get_objects())


def test_the_cache_evicts_the_least_recently_used_model_beyond_its_capacity():
    cache = ModelCache()
    for key in ("a", "b", "c"):
        cache.add(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recent
    cache.add("d", "D")
    assert cache.get("b") is None and [cache.get(k) for k in ("a", "c", "d")] == ["A", "C", "D"]


def test_executors_refuse_broadcast_bundle_files_that_fail_verification(mlp_bundle):
    altered = dict(mlp_bundle.files)
    weights = bytearray(altered[WEIGHTS])
    weights[-1] ^= 1
    altered[WEIGHTS] = bytes(weights)
    with pytest.raises(BundleError, match="weights.safetensors has sha256"):
        bundle_from_files(altered, mlp_bundle.sha256)
    with pytest.raises(BundleError, match="the driver loaded"):
        bundle_from_files(mlp_bundle.files, "0" * 64)
    cache = ModelCache()
    with pytest.raises(BundleError):
        load_scoring_model(_FakeBroadcast(altered), mlp_bundle.sha256, cache)
    assert cache.builds == 0
