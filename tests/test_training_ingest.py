"""How a Ray Train worker gets its training batches: its shard pulled once into tensors and
shuffled whole each epoch (`ShardCache`), or streamed every epoch when it does not fit
`train.worker_cache_mb`; both train reproducibly and report seconds per stage."""

import math
import os

import numpy as np
import pytest
import torch

from training.trainer import ShardCache, StageClock, fits_worker_cache

# Ray Train's controller collects each epoch's report on this interval (default 2 s); read when
# Ray starts, so set at import (as tests/test_train_job.py does).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

ARCHITECTURE = {"kind": "mlp", "n_features": 4, "hidden": [8], "dropout": 0.0}


def ray_unmaterialized():
    import ray

    return ray.data.range(10)


def _cache(rows: int) -> ShardCache:
    x = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2)
    return ShardCache(x, x[:, 0] / 2)


def test_an_epoch_of_the_cache_yields_every_row_once_as_views_of_one_permuted_copy():
    cache, clock = _cache(10), StageClock()
    batches = list(cache.epoch_batches(4, seed=3, clock=clock))
    assert [len(b["y"]) for b in batches] == [4, 4, 2]
    x = torch.cat([b["x"] for b in batches])
    assert sorted(x[:, 0].tolist()) == [float(2 * i) for i in range(10)]
    assert torch.equal(torch.cat([b["y"] for b in batches]), x[:, 0] / 2)  # rows keep their label
    assert batches[1]["x"].untyped_storage().data_ptr() == batches[0]["x"].untyped_storage().data_ptr()
    assert clock.seconds["shuffle"] > 0


def test_the_cache_shuffles_the_same_for_the_same_seed_and_differently_for_another():
    def order(seed: int) -> list[float]:
        return [v for b in _cache(50).epoch_batches(16, seed, StageClock()) for v in b["y"].tolist()]

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_truncating_the_cache_keeps_its_first_rows():
    cache = _cache(10)
    cache.truncate(7)
    assert len(cache) == 7 and cache.y.tolist() == [float(i) for i in range(7)]


def test_a_shard_fits_the_worker_cache_only_when_twice_its_share_is_within_the_budget(ray_local):
    import ray

    train = ray.data.from_numpy(np.zeros((1 << 16, 4), np.float32)).materialize()
    twice_mb = math.ceil(2 * train.size_bytes() / 2**20)  # the shard and its shuffled copy, one worker
    assert fits_worker_cache(train, num_workers=1, cache_mb=twice_mb)
    assert not fits_worker_cache(train, num_workers=1, cache_mb=twice_mb - 1)
    assert fits_worker_cache(train, num_workers=2, cache_mb=math.ceil(twice_mb / 2))
    assert not fits_worker_cache(train, num_workers=1, cache_mb=0)
    # Not materialized: its size is unknown without running it, so the worker streams.
    assert not fits_worker_cache(ray.data.range(10), num_workers=1, cache_mb=1024)


@pytest.fixture(scope="module")
def splits(ray_local):
    import ray

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1600, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 1.5).astype(np.float32)
    rows = [{"x": a, "y": b} for a, b in zip(x, y)]
    return ray.data.from_items(rows[:1200]).materialize(), ray.data.from_items(rows[1200:]).materialize()


def _fit(splits, settings, tmp_path, name: str, **overrides):
    from training.trainer import fit_model

    train, validation = splits
    run_settings = settings.with_overrides({
        "train.epochs": "3", "train.patience": "10", "train.batch_size": "128", "train.learning_rate": "0.05",
        "ray.num_workers": "1", "ray.storage_path": str(tmp_path / "checkpoints"), **overrides,
    })
    return fit_model(train, validation, architecture=ARCHITECTURE, settings=run_settings, run_name=name, pos_weight=3.0)


def test_a_cached_shard_trains_the_same_model_twice_and_reports_its_stages(splits, settings, tmp_path):
    first = _fit(splits, settings, tmp_path, "cached-1")
    second = _fit(splits, settings, tmp_path, "cached-2")
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    assert all(h["ingest"] == "whole" and h["train_rows"] == 1200 for h in first.history)
    # The shard is read once per worker-group start: in the first epoch only.
    assert first.history[0]["read_seconds"] > 0 and first.history[0]["to_tensor_seconds"] > 0
    assert [h["read_seconds"] for h in first.history[1:]] == [0.0, 0.0]
    assert all(h["shuffle_seconds"] > 0 and h["forward_seconds"] > 0 and h["backward_seconds"] > 0 for h in first.history)


def test_two_workers_slice_small_splits_read_whole_or_take_ray_datas_shards_and_train_on_every_row(
    splits, settings, tmp_path
):
    from training.trainer import reads_whole

    assert reads_whole(*splits, whole_read_mb=1)  # 1,600 rows: each worker reads both, keeps its half
    assert not reads_whole(*splits, whole_read_mb=0) and not reads_whole(splits[0], ray_unmaterialized(), 1024)
    whole = _fit(splits, settings, tmp_path, "whole", **{"ray.num_workers": "2"})
    # As a large table: Ray Data's split coordinators hand out the shards.
    split = _fit(splits, settings, tmp_path, "split", **{"ray.num_workers": "2", "train.whole_read_mb": "0"})
    for run in (whole, split):
        assert [h["train_rows"] for h in run.history] == [1200] * 3 and all(h["workers"] == 2 for h in run.history)
        assert run.best_validation_aucpr > 0.9
    assert {h["ingest"] for h in whole.history} == {"whole"} and {h["ingest"] for h in split.history} == {"cache"}
    # Read whole, the first epoch reads both splits; the other epochs read nothing.
    assert whole.history[0]["read_seconds"] > 0 and [h["read_seconds"] for h in whole.history[1:]] == [0.0, 0.0]


def test_a_worker_keeps_its_contiguous_slice_of_a_split_read_whole(ray_local):
    import ray

    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    ds = ray.data.from_items([{"x": row, "y": float(i)} for i, row in enumerate(x)]).materialize()
    parts = [ShardCache.pull(ds.iterator(), torch.device("cpu"), StageClock(), (rank, 3)) for rank in range(3)]
    assert [p.y.tolist() for p in parts] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    assert torch.equal(torch.cat([p.x for p in parts]), torch.from_numpy(x))


def test_a_shard_over_the_cache_budget_is_streamed_every_epoch_and_trains_as_well(splits, settings, tmp_path):
    streamed = _fit(splits, settings, tmp_path, "streamed", **{"train.worker_cache_mb": "0"})
    assert all(h["ingest"] == "stream" and h["train_rows"] == 1200 for h in streamed.history)
    assert all(h["wait_seconds"] > 0 and h["shuffle_seconds"] == 0.0 for h in streamed.history)
    assert streamed.best_validation_aucpr > 0.9
