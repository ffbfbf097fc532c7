"""The project functions the benchmarks call that live outside `lakescore`: imported here only,
so that when one moves, one import line changes.

The job sequences (generate, score, train, load the real benchmarks) are the `pipelines` calls the
jobs make; the scoring core is what the single-process workloads and `predict_batch_udf` run.
"""

from __future__ import annotations

from pipelines.generate import run_generate
from pipelines.load_benchmarks import run_load_benchmarks
from pipelines.nightly import run_nightly as run_score
from pipelines.train import ray_cluster, resolve_training_input, run_train
from udfs.arrow_output import to_arrow
from udfs.scorer import build_scoring_model, score_rows

__all__ = ["build_scoring_model", "ray_cluster", "run_generate", "run_load_benchmarks", "resolve_training_input", "run_score", "run_train", "score_rows", "to_arrow"]
