"""Training at lake scale: the evaluation's driver memory is bounded by its bins, not its rows;
vocabularies are counted where the rows live; negative downsampling keeps every anomaly and a
deterministic share of the normal rows."""

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import score_histograms as H
from training.data import LABEL_COLUMN

# The bounded-memory test: 20 million scored rows. Holding their scores and labels in this
# process would take 20e6 x (8 + 1) bytes = 180 MB (a pandas frame with the split and type
# columns several times more); the histograms take 2 x 65,538 bins x 8 bytes = 1 MB. After a
# warm-up pass (imports, Ray Data's executor threads: a fixed cost), the driver's RSS may grow by
# a quarter of what the rows would need: room for the transient per-block counts (at most one
# row per occupied bin) while failing loudly if anything collects the rows.
MEMORY_ROWS = 20_000_000
MEMORY_BLOCKS = 20
MAX_DRIVER_GROWTH = MEMORY_ROWS * 9 // 4


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _PeakRss:
    """The driver's peak resident memory while the block runs, sampled every 10 ms."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


@pytest.mark.slow
def test_the_evaluation_of_twenty_million_rows_keeps_the_driver_memory_bounded_by_its_bins(ray_local):
    import ray.data

    def synthetic_scores(batch: dict, bins: H.ScoreBins) -> pd.DataFrame:
        """A block of scored rows, as the pipeline's scorer sees them, counted per bin: 1%
        anomalies scored higher, a few NaN scores. (Nested: Ray's workers pickle it by value.)"""
        ids = batch["id"]
        rng = np.random.default_rng(int(ids[0]))
        labels = rng.random(len(ids)) < 0.01
        scores = 1 / (1 + np.exp(-(rng.normal(size=len(ids)) + 3 * labels)))
        scores[::100_003] = np.nan
        split = np.full(len(ids), "test", dtype=object)
        types = np.where(labels, "spike", "")
        return pd.DataFrame(H.sparse_counts(split, "model", labels, types, bins.index(scores)))

    def evaluate(rows: int, blocks: int) -> dict:
        ds = ray.data.range(rows, override_num_blocks=blocks)
        counts = ds.map_batches(synthetic_scores, fn_kwargs={"bins": bins}, batch_format="numpy", batch_size=None)
        return H.merge_counts(counts.iter_batches(batch_format="numpy", batch_size=None), {"model": bins})

    bins = H.ScoreBins.of(H.LOGIT)
    evaluate(MEMORY_ROWS // 100, 2)  # warm-up
    with _PeakRss() as memory:
        merged = evaluate(MEMORY_ROWS, MEMORY_BLOCKS)
    histograms = merged[("test", "model")]
    figures = H.evaluate(histograms, bins.lower(len(bins.edges) // 2), k=1000)

    assert histograms.rows == MEMORY_ROWS  # every row counted, none collected
    assert 0.01 * MEMORY_ROWS * 0.95 < figures["anomalies"] < 0.01 * MEMORY_ROWS * 1.05
    assert 0.85 < figures["aucroc"] < 0.99 and figures["aucroc_error"] < 1e-3
    print(f"driver RSS grew {memory.growth / 2**20:.1f} MiB over {MEMORY_ROWS:,} rows")
    assert memory.growth < MAX_DRIVER_GROWTH, f"driver grew {memory.growth / 2**20:.0f} MiB"


def test_vocabulary_counts_across_blocks_are_the_exact_top_values_with_ties_broken_by_value(ray_local):
    import ray.data

    from training.pipeline import vocabulary_counts

    city = ["b", "a", "c", "a", None, "b", "d", 7, "c", "a", "b", np.nan, "e", "e"]
    channel = ["web", "pos", "web", "pos", "web", None, "app", "app", "web", "pos", "app", "web", "pos", "app"]
    frame = pd.DataFrame({"city": pd.Series(city, dtype=object), "channel": channel})
    rows = ray.data.from_pandas([frame.iloc[i : i + 3] for i in range(0, len(frame), 3)])  # five blocks

    counts, total = vocabulary_counts(rows, {"city": 3, "channel": 2})

    assert total == 14
    # a=3, b=3 (tie: by value), then c=2 and e=2 tie for the third place: c wins by value.
    # 7, None and NaN are no text values.
    assert counts["city"] == {"a": 3, "b": 3, "c": 2}
    assert counts["channel"] == {"web": 5, "app": 4}


def test_negative_sampling_keeps_every_anomaly_and_the_same_normal_rows_however_the_rows_are_batched():
    from training.pipeline import negative_sample

    rng = np.random.default_rng(1)
    batch = pd.DataFrame({"amount": rng.normal(size=20_000).astype(np.float32), "hour": rng.integers(0, 24, 20_000).astype(np.float32)})
    batch.loc[::97, "amount"] = np.nan  # nulls are hashed like any value
    batch[LABEL_COLUMN] = rng.random(20_000) < 0.02

    keep = negative_sample(batch, ["amount", "hour"], 0.1, seed=7)
    in_parts = np.concatenate([negative_sample(batch.iloc[i : i + 999], ["amount", "hour"], 0.1, seed=7)
                               for i in range(0, 20_000, 999)])

    labels = batch[LABEL_COLUMN].to_numpy()
    assert keep[labels].all()
    assert 0.09 < keep[~labels].mean() < 0.11
    np.testing.assert_array_equal(keep, in_parts)
    assert not np.array_equal(keep, negative_sample(batch, ["amount", "hour"], 0.1, seed=8))
    assert negative_sample(batch, ["amount", "hour"], 1.0, seed=7).all()


def test_downsampling_before_materializing_keeps_the_evaluation_splits_whole_and_marks_a_uniform_training_sample():
    from training.data import SPLIT_COLUMN
    from training.pipeline import UNIFORM_COLUMN, downsample_training_split, negative_sample

    rng = np.random.default_rng(3)
    n = 30_000
    batch = pd.DataFrame({"amount": rng.normal(size=n).astype(np.float32), "hour": rng.integers(0, 24, n).astype(np.float32)})
    batch.loc[::89, "hour"] = np.nan
    batch[LABEL_COLUMN] = rng.random(n) < 0.05
    batch[SPLIT_COLUMN] = rng.choice(["train", "validation", "test"], size=n, p=[0.8, 0.1, 0.1])

    out = downsample_training_split(batch, ["amount", "hour"], 0.2, seed=5)

    training = batch[batch[SPLIT_COLUMN] == "train"]
    kept = out[out[SPLIT_COLUMN] == "train"]
    # Validation and test: every row, in order, marked.
    for split in ("validation", "test"):
        pd.testing.assert_frame_equal(out[out[SPLIT_COLUMN] == split].drop(columns=UNIFORM_COLUMN).reset_index(drop=True),
                                      batch[batch[SPLIT_COLUMN] == split].reset_index(drop=True))
        assert out.loc[out[SPLIT_COLUMN] == split, UNIFORM_COLUMN].all()
    # Training: the rows negative_sample keeps, every anomaly among them.
    expected = training[negative_sample(training, ["amount", "hour"], 0.2, seed=5)]
    pd.testing.assert_frame_equal(kept.drop(columns=UNIFORM_COLUMN).reset_index(drop=True), expected.reset_index(drop=True))
    assert kept[LABEL_COLUMN].sum() == training[LABEL_COLUMN].sum()
    # The marked rows are a uniform sample of the whole split: normals and anomalies at the rate alike.
    marked = kept[kept[UNIFORM_COLUMN]]
    assert 0.18 < len(marked) / len(training) < 0.22
    assert 0.15 < marked[LABEL_COLUMN].sum() / training[LABEL_COLUMN].sum() < 0.25
    assert (~kept[UNIFORM_COLUMN] & ~kept[LABEL_COLUMN]).sum() == 0  # an unmarked kept row is an anomaly
    # An empty batch keeps its columns.
    assert list(downsample_training_split(batch.iloc[:0], ["amount", "hour"], 0.2, seed=5).columns) == [*batch.columns, UNIFORM_COLUMN]


def test_a_small_window_evaluated_in_process_gives_the_pools_histograms_exactly(ray_local):
    """train.evaluate_in_process_rows: the driver scores a small window itself, with the same
    scorer on the same blocks as the actor pool: every histogram count is the same, for the model
    and each baseline, on rows with NaN, nulls, an empty block and a training split left out."""
    import ray.data
    import torch

    from lakescore.models import MLP, build_model
    from lakescore.preprocess import Preprocessing
    from training import baselines as B
    from training.data import SPLIT_COLUMN, TYPE_COLUMN
    from training.pipeline import MODEL, TEST, TRAIN, VALIDATION, score_splits

    rng = np.random.default_rng(5)
    features = ("a", "b", "c")
    n = 3_000
    labels = rng.random(n) < 0.05
    frame = pd.DataFrame({f: rng.normal(size=n) + 2.5 * labels for f in features})
    frame.loc[::37, "a"] = np.nan
    frame.loc[::41, "b"] = None
    frame[LABEL_COLUMN] = labels
    frame[SPLIT_COLUMN] = np.array([TRAIN, VALIDATION, TEST])[np.arange(n) % 3]
    frame[TYPE_COLUMN] = np.where(labels, np.where(np.arange(n) % 2 == 0, "spike", "burst"), None)
    blocks = [frame.iloc[:1000], frame.iloc[1000:1000], frame.iloc[1000:]]  # an empty block among them
    featured = ray.data.from_pandas(blocks).materialize()

    x = frame[list(features)].to_numpy(np.float64)
    preprocessing = Preprocessing.from_statistics(
        features, np.nanmedian(x, 0), np.nanquantile(x, 0.01, 0), np.nanquantile(x, 0.99, 0), np.nanmean(x, 0), np.nanstd(x, 0)
    )
    sample, _ = preprocessing.apply(frame[list(features)].to_numpy(np.float32))
    architecture = {"kind": MLP, "n_features": 3, "hidden": [8], "dropout": 0.0}
    torch.manual_seed(0)
    weights = {k: v.numpy() for k, v in build_model(architecture).state_dict().items()}
    fitted = B.fit_baselines(sample[:600], labels[:600], kind=MLP, supervised=True, seed=0).fitted
    bins = {MODEL: H.ScoreBins.of(H.LOGIT), **{name: H.ScoreBins.of(b.scale) for name, b in fitted.items()}}

    def histograms(in_process: bool):
        return score_splits(featured, (VALIDATION, TEST), features, preprocessing, architecture, weights, fitted, bins,
                            in_process=in_process)

    here, pooled = histograms(True), histograms(False)
    assert set(here) == set(pooled) == {(s, m) for s in (VALIDATION, TEST) for m in bins}
    assert len(bins) == 4  # the model, IsolationForest, HistGradientBoosting and MLPClassifier
    for key in here:
        assert here[key].rows == pooled[key].rows == n // 3
        assert np.array_equal(here[key].normal, pooled[key].normal), key
        assert sorted(here[key].anomalous) == sorted(pooled[key].anomalous) == ["burst", "spike"], key
        for kind in here[key].anomalous:
            assert np.array_equal(here[key].anomalous[kind], pooled[key].anomalous[kind]), (key, kind)
