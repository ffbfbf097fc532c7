"""Score quantiles for run_metrics: the fixed fine histogram (udfs.run_totals.ScoreGrid) against
datasketches' KLL and REQ sketches, as the scoring UDF would use them.

    python -m benchmarks.quantile_sketches

Synthetic scores of both model kinds (2 M rows: mlp-like probabilities with a thin tail towards
1, autoencoder-like log-normal reconstruction errors), split over 8 tasks, added in 5,000-row
batches. Prints per method: update time per batch, bytes per task (pickled counts or the
serialized sketch), whether merging the tasks in reverse order gives the same quantiles, whether
rebuilding one task's sketch from the same rows (a retried task) gives the same bytes, and each
quantile's relative error and rank against the exact inverted-CDF quantile. Decision: docs/decisions.md.
"""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
from datasketches import kll_doubles_sketch, kll_floats_sketch, req_floats_sketch

from lakescore.models import AUTOENCODER, MLP
from udfs.run_totals import ScoreGrid

ROWS, BATCH, TASKS = 2_000_000, 5_000, 8
QUANTILES = (0.5, 0.9, 0.99, 0.999)
SKETCHES = {
    "KLL floats k=200": lambda: kll_floats_sketch(200),
    "KLL doubles k=200": lambda: kll_doubles_sketch(200),
    "REQ floats k=12 HRA": lambda: req_floats_sketch(12, True),
}


def synthetic_scores(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tail = ROWS // 200
    logits = np.concatenate([rng.normal(-6, 1.5, ROWS - tail), rng.normal(3, 2, tail)])
    rng.shuffle(logits)
    return {MLP: 1 / (1 + np.exp(-logits)), AUTOENCODER: rng.lognormal(-2, 1, ROWS)}


def _batches(task: np.ndarray):
    return (task[b : b + BATCH] for b in range(0, len(task), BATCH))


def measure_grid(kind: str, tasks: list[np.ndarray]) -> tuple[float, int, list[float], bool, bool]:
    grid = ScoreGrid.for_kind(kind)

    def count(task):
        counts = np.zeros(grid.bins, np.int64)
        for batch in _batches(task):
            counts += np.bincount(grid.index(batch), minlength=grid.bins)
        return counts

    start = time.perf_counter()
    per_task = [count(task) for task in tasks]
    per_batch = (time.perf_counter() - start) / (ROWS / BATCH)
    merged = sum(per_task)
    order_free = np.array_equal(merged, sum(reversed(per_task)))
    retry_same = np.array_equal(count(tasks[0]), per_task[0])
    return per_batch, len(pickle.dumps(per_task[0])), [grid.quantile(merged, q) for q in QUANTILES], order_free, retry_same


def measure_sketch(make, tasks: list[np.ndarray]) -> tuple[float, int, list[float], bool, bool]:
    def sketch(task):
        sk = make()
        for batch in _batches(task):
            sk.update(batch)
        return sk

    def quantiles(order):
        merged = make()
        for sk in order:
            merged.merge(sk)
        return [merged.get_quantile(q, inclusive=True) for q in QUANTILES]

    start = time.perf_counter()
    per_task = [sketch(task) for task in tasks]
    per_batch = (time.perf_counter() - start) / (ROWS / BATCH)
    forward = quantiles(per_task)
    order_free = forward == quantiles(list(reversed(per_task)))
    retry_same = sketch(tasks[0]).serialize() == per_task[0].serialize()
    return per_batch, len(per_task[0].serialize()), forward, order_free, retry_same


def main() -> None:
    for kind, scores in synthetic_scores().items():
        ordered = np.sort(scores)
        exact = [float(ordered[max(1, math.ceil(q * ROWS)) - 1]) for q in QUANTILES]
        print(f"\n{kind}: exact " + ", ".join(f"p{q * 100:g}={v:.6g}" for q, v in zip(QUANTILES, exact)))
        tasks = np.array_split(scores, TASKS)
        methods = {"ScoreGrid": lambda: measure_grid(kind, tasks)}
        methods.update({name: (lambda make=make: measure_sketch(make, tasks)) for name, make in SKETCHES.items()})
        for name, measure in methods.items():
            per_batch, size, estimates, order_free, retry_same = measure()
            print(
                f"  {name:<20} {per_batch * 1e6:5.0f} us/batch  {size:6d} B/task  "
                f"merge order-free={order_free}  retry identical={retry_same}"
            )
            for q, value, truth in zip(QUANTILES, estimates, exact):
                rank = np.searchsorted(ordered, value, side="right") / ROWS
                print(f"    p{q * 100:<5g} {value:<10.6g} rel.err {abs(value - truth) / truth:.1e}  rank {rank:.5f}")


if __name__ == "__main__":
    main()
