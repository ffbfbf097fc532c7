"""The project functions the benchmarks call that live outside `lakescore`: imported here only,
so that when one moves, one import line changes.

The job sequences (generate, score, train, load the real benchmarks) are called as the jobs run
them; the scoring core is what the single-process workloads and `predict_batch_udf` run.
"""

from __future__ import annotations

from jobs.generate_transactions import run_generate
from jobs.load_benchmarks import run_load_benchmarks
from jobs.score_nightly import run_score
from jobs.train import ray_cluster, run_train
from udfs.core import build_scoring_model, score_rows

__all__ = ["build_scoring_model", "ray_cluster", "run_generate", "run_load_benchmarks", "run_score", "run_train", "score_rows"]
