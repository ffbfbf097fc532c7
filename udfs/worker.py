"""Tuning a Spark Python worker process for scoring: torch's threads and the garbage collector.

`udfs.broadcast.load_scoring_model` calls both around the first model build on a worker; the
built model itself is kept in `udfs.model_cache`.
"""

from __future__ import annotations

import gc

import torch


def configure_torch_for_worker() -> None:
    """One intra-op thread per Python worker: Spark already runs one worker per core, and a
    single thread keeps reductions in a fixed order, so scores are bit-identical on retry."""
    torch.set_num_threads(1)


def freeze_worker_heap() -> None:
    """Put every object this Python worker holds now beyond the garbage collector's reach.

    Call it once, after the first task has imported torch and built the model: the objects of
    torch, pyarrow, pyspark and the model live as long as the worker. PySpark's daemon runs a
    full `gc.collect()` after every task of a reused worker, which would walk all of them every
    time; frozen, a collection only looks at what later tasks create. Garbage from the build is
    collected first, so nothing collectable is frozen. (Figures: see docs/measurements.md,
    "Scoring worker and UDF".)
    """
    gc.collect()
    gc.freeze()
