"""Faults to inject into a training run from outside, to prove that Ray Train recovers.

Production code never passes these: the train loop only calls whatever `on_epoch_end` hook its
caller gives `training.trainer.fit_model`. Tests and the GPU check pass `kill_worker_once`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from training.trainer import EpochHook


def kill_worker_once(after_epoch: int, marker: str | os.PathLike) -> EpochHook:
    """An epoch hook that SIGKILLs the last worker once, after `after_epoch`'s checkpoint is
    committed, and leaves `marker` (a file naming the worker) so the replacement worker group,
    which runs the same hook, does not die again."""
    marker = Path(marker)

    def kill(epoch: int, rank: int, world: int) -> None:
        if epoch != after_epoch or rank != world - 1 or marker.exists():
            return
        import ray.train
        from ray.train import CheckpointConsistencyMode

        marker.write_text(f"killed worker rank {rank} (pid {os.getpid()}) after epoch {epoch}\n")
        # The controller must have committed this epoch's checkpoint before the worker dies.
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        os.kill(os.getpid(), signal.SIGKILL)

    return kill
