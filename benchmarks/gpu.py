"""Checks for a machine with a CUDA GPU: Ray Train with `ray.use_gpu=true`, and scoring on CUDA.

    RAY_TRAIN_V2_ENABLED=1 python -m benchmarks.gpu [--train-rows 200000] [--score-rows 2000000,20000000]

1. Ray Train: `training.trainer.fit_model`, the TorchTrainer that `lakescore train` runs, on the
   same synthetic table three times: `ray.use_gpu=false` (one CPU worker), `ray.use_gpu=true`
   (one worker holding the GPU; Ray Train then uses NCCL), and `true` again with the worker
   killed after epoch 1's checkpoint. Each epoch's history names the device its workers trained
   on; the runs must learn the table (validation AUCPR), their training rows/s are printed side
   by side, and the killed run must resume from epoch 1's checkpoint, on the GPU, with the same
   losses as the run that was not killed.
2. Scoring: the GPU run's weights score the same rows with `lakescore.models.score_batch` and
   `explain_batch` (the functions the Spark UDF calls) on the CPU, with one torch thread as in a
   Spark Python worker, and on CUDA. Scores must agree to float32 rounding, the flags at a 0.5%
   alert threshold must be the same rows, and so must the top-3 reasons of the flagged rows.
   Rows/s of each (CUDA: copies to and from the device included).

Needs only torch, numpy, scikit-learn and Ray (no Spark, no Java). Exits 2 without a CUDA device,
1 if a check fails; `--out FILE` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lakescore.config import RaySettings, Settings, TrainSettings
from lakescore.models import MLP, build_model, explain_batch, score_batch

FEATURES = 21
ARCHITECTURE = {"kind": MLP, "n_features": FEATURES, "hidden": [64, 32], "dropout": 0.0}
ALERT_RATE = 0.005


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal features; 2% positives, mostly linear in four of them, with a square."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    signal = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + 0.3 * x[:, 3] ** 2
    y = (signal > np.quantile(signal, 0.98)).astype(np.float32)
    return x, y


def train(x: np.ndarray, y: np.ndarray, use_gpu: bool, storage: str, kill_after_epoch: int | None = None) -> dict:
    """One `fit_model` run; with `kill_after_epoch`, its worker is killed once after that
    epoch's checkpoint and Ray Train restarts it from there."""
    import ray
    from ray.data.extensions import ArrowTensorArray

    from training.faults import kill_worker_once
    from training.trainer import fit_model

    def dataset(rows: slice) -> "ray.data.Dataset":
        return ray.data.from_arrow(pa.table({"x": ArrowTensorArray.from_numpy(x[rows]), "y": y[rows]})).materialize()

    split = int(len(x) * 0.8)
    train_set, validation = dataset(slice(0, split)), dataset(slice(split, None))
    started = time.perf_counter()
    trained = fit_model(
        train_set,
        validation,
        architecture=ARCHITECTURE,
        settings=Settings(
            train=TrainSettings(epochs=4, patience=10, batch_size=1024, learning_rate=3e-3),
            ray=RaySettings(num_workers=1, use_gpu=use_gpu, cpus_per_worker=1.0, max_failures=1, storage_path=Path(storage)),
        ),
        run_name=("gpu" if use_gpu else "cpu") + ("-resumed" if kill_after_epoch is not None else ""),
        on_epoch_end=None if kill_after_epoch is None else kill_worker_once(kill_after_epoch, os.path.join(storage, "killed")),
    )
    history = trained.history
    return {
        "model": trained,
        "device": "cuda" if use_gpu else "cpu",
        "killed_after_epoch": kill_after_epoch,
        "seconds": time.perf_counter() - started,
        "devices": sorted({h["device"] for h in history}),
        "best_validation_aucpr": trained.best_validation_aucpr,
        "train_rows_per_s": [round(h["train_rows_per_s"]) for h in history],
        "train_loss": [round(h["train_loss"], 5) for h in history],
        "attempts": trained.attempts,
    }


def training_failures(uninterrupted: dict, resumed: dict, *others: dict) -> list[str]:
    """What went wrong in `train` results: a run off its device or not learning, or a killed run
    (`resumed`) that did not resume from its checkpoint with `uninterrupted`'s losses."""
    failures = []
    for run in (uninterrupted, resumed, *others):
        name = run["device"] + (f", killed after epoch {run['killed_after_epoch']}" if run["killed_after_epoch"] is not None else "")
        print(
            f"Ray Train on {name}: devices {run['devices']}, best validation AUCPR {run['best_validation_aucpr']:.4f}, "
            f"loss {run['train_loss']}, rows/s {run['train_rows_per_s']}, {run['seconds']:.1f} s"
        )
        if run["devices"] != [run["device"]]:
            failures.append(f"the run on {name} trained on {run['devices']}")
        if not run["best_validation_aucpr"] > 0.5:
            failures.append(f"the run on {name} did not learn: validation AUCPR {run['best_validation_aucpr']:.4f}")
    epoch = resumed["killed_after_epoch"]
    print(f"the killed run's worker-group starts: {resumed['attempts']}")
    if [a["resumed_from_epoch"] for a in resumed["attempts"]] != [None, epoch]:
        failures.append(f"the killed run did not resume from epoch {epoch}'s checkpoint: {resumed['attempts']}")
    if resumed["train_loss"] != uninterrupted["train_loss"]:
        failures.append(f"the killed run's losses {resumed['train_loss']} differ from the uninterrupted {uninterrupted['train_loss']}")
    return failures


def _timed(fn, repeats: int = 3) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best, result


def _model(state_dict: dict, device: str) -> torch.nn.Module:
    model = build_model(ARCHITECTURE)
    model.load_state_dict(state_dict)
    return model.eval().to(device)


def compare_scoring(state_dict: dict, rows: list[int]) -> dict:
    model, on_gpu = _model(state_dict, "cpu"), _model(state_dict, "cuda")
    torch.set_num_threads(1)  # as in a Spark Python worker (udfs.worker.configure_torch_for_worker)

    figures: dict = {"rows": {}}
    x, _ = synthetic(rows[0], seed=11)
    cpu_seconds, cpu_scores = _timed(lambda: score_batch(model, MLP, x))
    score_batch(on_gpu, MLP, x[:1000], device="cuda")  # CUDA context and kernels, before timing
    gpu_seconds, gpu_scores = _timed(lambda: score_batch(on_gpu, MLP, x, device="cuda"))
    threshold = float(np.quantile(cpu_scores, 1 - ALERT_RATE))
    cpu_flagged, gpu_flagged = cpu_scores >= threshold, gpu_scores >= threshold
    near = np.abs(cpu_scores - threshold) < 1e-6
    flagged = np.flatnonzero(cpu_flagged)
    cpu_order, cpu_top = explain_batch(model, MLP, x[flagged], 3)
    gpu_order, gpu_top = explain_batch(on_gpu, MLP, x[flagged], 3, device="cuda")
    figures.update(
        threshold=threshold,
        max_abs_score_difference=float(np.abs(cpu_scores - gpu_scores).max()),
        flagged=int(cpu_flagged.sum()),
        flags_differing=int((cpu_flagged != gpu_flagged).sum()),
        flags_differing_away_from_threshold=int(((cpu_flagged != gpu_flagged) & ~near).sum()),
        reasons_rows_differing=int((cpu_order != gpu_order).any(axis=1).sum()),
        max_abs_contribution_difference=float(np.abs(cpu_top - gpu_top).max()) if len(flagged) else 0.0,
    )
    figures["rows"][rows[0]] = {"cpu_rows_per_s": rows[0] / cpu_seconds, "cuda_rows_per_s": rows[0] / gpu_seconds}
    for n in rows[1:]:
        big, _ = synthetic(n, seed=12)
        seconds, _ = _timed(lambda: score_batch(on_gpu, MLP, big, device="cuda"))
        figures["rows"][n] = {"cuda_rows_per_s": n / seconds}
        del big
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--score-rows", default="2000000,20000000", help="comma-separated; the CPU scores the first")
    parser.add_argument("--out", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch: run this on a machine with a GPU (and torch's CUDA build)", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; ray {ray.__version__}")
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    x, y = synthetic(args.train_rows, seed=7)
    with tempfile.TemporaryDirectory() as storage:
        runs = {
            "cpu": train(x, y, False, storage),
            "cuda": train(x, y, True, storage),
            # The worker dies after epoch 1's checkpoint; the new one resumes on the GPU from it.
            "cuda_resumed": train(x, y, True, storage, kill_after_epoch=1),
        }
    ray.shutdown()
    failures = training_failures(runs["cuda"], runs["cuda_resumed"], runs["cpu"])

    rows = [int(r) for r in args.score_rows.split(",")]
    scoring = compare_scoring(runs["cuda"]["model"].state_dict, rows)
    print(json.dumps(scoring, indent=2))
    if scoring["max_abs_score_difference"] > 1e-5:
        failures.append(f"CPU and CUDA scores differ by up to {scoring['max_abs_score_difference']:.3g}")
    if scoring["flags_differing_away_from_threshold"]:
        failures.append(f"{scoring['flags_differing_away_from_threshold']} rows flagged on one device only")
    if scoring["reasons_rows_differing"] > max(1, 0.001 * scoring["flagged"]):
        failures.append(f"{scoring['reasons_rows_differing']} of {scoring['flagged']} flagged rows have other reasons on CUDA")
    if scoring["max_abs_contribution_difference"] > 1e-4:
        failures.append(f"reason contributions differ by up to {scoring['max_abs_contribution_difference']:.3g}")
    if args.out:
        summary = {name: {k: v for k, v in run.items() if k != "model"} for name, run in runs.items()}
        with open(args.out, "w") as f:
            json.dump({"train": summary, "scoring": scoring, "failures": failures}, f, indent=2)
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    print("all GPU checks passed" if not failures else f"{len(failures)} GPU check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
