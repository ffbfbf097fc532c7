"""Data-parallel training with Ray Train (V2 API, `RAY_TRAIN_V2_ENABLED=1`).

Three tiers, as in Ray's own examples: the loss and optimiser builders, `train_loop_per_worker`
(every hyperparameter unpacked at the top), and the driver `fit_model` that builds the
`ScalingConfig`, `RunConfig` and `TorchTrainer`.

What differs from a single-process torch loop is marked "Ray:" below. In short: each worker
reads its shard of the training split (`get_dataset_shard` + `iter_torch_batches`), the model is
wrapped in DDP by `prepare_model` (gradients all-reduced; gloo on CPU, nccl on GPU), every epoch
ends with `ray.train.report` and a checkpoint, and a worker group that lost a worker is
restarted by Ray Train (`FailureConfig`) and resumes from the last checkpoint.

Ingest: when twice its shard fits `train.worker_cache_mb`, a worker pulls the shard once into one
contiguous tensor on its device (`ShardCache`) and each epoch shuffles all of it with a seeded
permutation, then hands torch views of it: no per-batch conversion, copy or shuffle buffer.
Otherwise it streams the shard every epoch through Ray Data's `iter_torch_batches` with a local
shuffle buffer. Either way the epoch metrics carry the seconds per stage (`StageClock`), so the
bottleneck has a name; docs/scaling.md has the figures. Splits under `train.whole_read_mb` are not
split by Ray Data at all: every worker reads all of their rows once and keeps its own contiguous
slice of each (starting Ray Data's split coordinators, an actor per split and run, cost more than
reading a few thousand rows twice).

Early stopping on validation AUCPR: the validation split is sharded across the workers too; each
scores its shard into a fine score histogram (training.score_histograms: counts per bin, so its
size does not depend on the rows), the histograms are summed with one all_reduce, and every worker
computes the same AUCPR from the same counts, so all stop at the same epoch (a collective that one
worker skipped would hang the others).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from lakescore.models import AUTOENCODER, MLP, build_model
from training.score_histograms import ScoreBins, average_precision, roc_auc

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

# Called on every worker after each epoch's checkpoint: (epoch, rank, world size).
EpochHook = Callable[[int, int, int], None]

_MODEL_FILE = "model.pt"
_OPTIMIZER_FILE = "optimizer.pt"
_BEST_FILE = "best.pt"
_STATE_FILE = "state.json"


# --- builders -------------------------------------------------------------------------------


def build_loss(kind: str, pos_weight: float | None, device: torch.device) -> nn.Module:
    """mlp: BCEWithLogitsLoss on the raw logit (sigmoid inside, numerically stable), with the
    positive class up-weighted for the imbalance; autoencoder: mean squared reconstruction error."""
    if kind == MLP:
        weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32, device=device)
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    return nn.MSELoss()


def batch_loss(model: nn.Module, loss_fn: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == MLP:
        return loss_fn(model(x), y)
    return loss_fn(model(x), x)


def validation_histogram(model: nn.Module, kind: str, batches, bins: ScoreBins) -> np.ndarray:
    """This worker's validation figures as one float64 vector, to be summed over the workers:
    counts per bin of the anomalous rows' scores, then of the normal rows', then the sum and
    count of the scores (sigmoid probability or mean squared reconstruction error)."""
    model.eval()
    anomalous, normal = np.zeros(bins.size), np.zeros(bins.size)
    score_sum, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            x = batch["x"]
            if kind == MLP:
                s = torch.sigmoid(model(x))
            else:
                s = ((model(x) - x) ** 2).mean(dim=1)
            scores = s.double().cpu().numpy()
            labels = batch["y"].cpu().numpy().astype(bool)
            index = bins.index(scores)
            anomalous += np.bincount(index[labels], minlength=bins.size)
            normal += np.bincount(index[~labels], minlength=bins.size)
            score_sum += float(scores.sum())
            count += len(scores)
    return np.concatenate([anomalous, normal, [score_sum, count]])


def _validation_figures(summed: np.ndarray, bins: ScoreBins) -> tuple[float, float, float]:
    """(AUCPR, AUCROC, mean score) from `validation_histogram` vectors summed over the workers."""
    anomalous, normal = summed[: bins.size], summed[bins.size : 2 * bins.size]
    score_sum, count = summed[-2], summed[-1]
    aucpr, _ = average_precision(anomalous, normal, bins.point_top)
    aucroc, _ = roc_auc(anomalous, normal, bins.point_top)
    return aucpr, aucroc, score_sum / count if count else math.nan


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without a better validation figure (higher is better: the
    AUCPR, or without labels the negated validation reconstruction loss); remember the best epoch.

    Its fields travel in every checkpoint (`state.json`), so a resumed run keeps counting.
    """

    patience: int
    best_aucpr: float = -math.inf  # no epoch yet (a negated loss can be below -1)
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, aucpr: float) -> bool:
        """Record `epoch`'s validation AUCPR; True if it is the best so far. NaN never improves."""
        if not math.isnan(aucpr) and aucpr > self.best_aucpr + 1e-6:
            self.best_aucpr, self.best_epoch, self.bad_epochs = aucpr, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience


# --- the loop every worker runs --------------------------------------------------------------


def _ordered_ingest() -> Any:
    """The ingest options of a dataset shard: the driver's Ray Data execution options, as Ray
    Train's defaults carry them over, with the blocks kept in order."""
    from ray.data.context import DataContext

    options = copy.deepcopy(DataContext.get_current().execution_options)
    options.preserve_order = True
    return options


class StageClock:
    """Seconds a worker spends per ingest and training stage, summed over an epoch.

    Stages: `read` (pulling the shard's blocks from the object store), `to_tensor` (one contiguous
    tensor on the device), `shuffle` (the epoch's permutation of the cached shard), `wait` (the
    loop waiting for its next batch: when streaming, Ray Data's read, local shuffle and
    conversion together), then the step: `forward` (with the loss), `backward` (with DDP's
    gradient all-reduce, which waits for the slowest worker) and `optimizer`. On a GPU the
    figures are host-side: kernels run asynchronously, so device time can show up in a later stage.
    """

    STAGES = ("read", "to_tensor", "shuffle", "wait", "forward", "backward", "optimizer")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def metrics(self) -> dict[str, float]:
        return {f"{stage}_seconds": value for stage, value in self.seconds.items()}


class ShardCache:
    """A worker's shard of the training split as two tensors on its device, pulled once per
    worker-group start (Ray Data serves the shard's blocks from the object store, zero-copy).

    Each epoch permutes all of it with a generator seeded from (seed, epoch, rank): a full
    shuffle of the shard, the same after a resume, in one gather; the batches are then slices
    (views) of the permuted copy.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def pull(cls, shard, device: torch.device, clock: StageClock, part: tuple[int, int] | None = None) -> "ShardCache":
        """Read `shard` ({"x", "y"}) whole, block by block, into float32 tensors on `device`;
        with `part` = (rank, world), keep only that worker's contiguous slice of its rows."""
        started = time.perf_counter()
        xs, ys = [], []
        for block in shard.iter_batches(batch_size=None, batch_format="numpy"):
            xs.append(block["x"])
            ys.append(block["y"])
        read = time.perf_counter()
        clock.add("read", read - started)
        x = np.concatenate(xs).astype(np.float32, copy=False) if xs else np.empty((0, 0), np.float32)
        y = np.concatenate(ys).astype(np.float32, copy=False) if ys else np.empty(0, np.float32)
        if part is not None:
            rows = slice(*(round(len(y) * k / part[1]) for k in (part[0], part[0] + 1)))
            x, y = np.ascontiguousarray(x[rows]), np.ascontiguousarray(y[rows])
        # One copy to the device for the whole run (none on the CPU: from_numpy shares the memory).
        cache = cls(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
        clock.add("to_tensor", time.perf_counter() - read)
        return cache

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """The rows in their order, in slices (views) of `batch_size`: the validation pass."""
        return _slices(self.x, self.y, batch_size)

    def truncate(self, rows: int) -> None:
        """Keep the first `rows`: every DDP worker must take the same number of steps."""
        self.x, self.y = self.x[:rows], self.y[:rows]

    def epoch_batches(self, batch_size: int, seed: int, clock: StageClock) -> Iterator[dict[str, torch.Tensor]]:
        """The epoch's batches: permuted here, at once (not on the first batch), then sliced."""
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator).to(self.x.device)
        x, y = self.x[order], self.y[order]
        clock.add("shuffle", time.perf_counter() - started)
        return _slices(x, y, batch_size)


def _slices(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `batch_size` rows (the last one shorter), as views of `x` and `y`."""
    return ({"x": x[i : i + batch_size], "y": y[i : i + batch_size]} for i in range(0, len(y), batch_size))


def _shard_rows_agreed(rows: int, device: torch.device, world: int) -> int:
    """The fewest rows any worker's cached shard holds (Ray's equal split gives them all the same)."""
    if world == 1:
        return rows
    import torch.distributed as dist

    fewest = torch.tensor([rows], dtype=torch.int64, device=device)
    dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
    return int(fewest.item())


def _materialized_bytes(*datasets: "ray.data.Dataset") -> int | None:
    """The datasets' bytes together, from their blocks' metadata; None unless all are materialized
    (a lazy dataset's size is unknown without running it)."""
    from ray.data.dataset import MaterializedDataset

    if not all(isinstance(d, MaterializedDataset) for d in datasets):
        return None
    sizes = [d.size_bytes() for d in datasets]
    return None if None in sizes else sum(sizes)


def reads_whole(train: "ray.data.Dataset", validation: "ray.data.Dataset", whole_read_mb: int) -> bool:
    """Whether the workers read both splits whole and slice them: both together are at most
    `whole_read_mb` MiB. Known only for materialized datasets."""
    size = _materialized_bytes(train, validation)
    return size is not None and size <= whole_read_mb * 2**20


def fits_worker_cache(train: "ray.data.Dataset", num_workers: int, cache_mb: int) -> bool:
    """Whether each worker can hold its shard of `train` and its shuffled copy in `cache_mb` MiB.
    Known only for a materialized dataset (its size is in the block metadata); otherwise False."""
    size = _materialized_bytes(train) if cache_mb > 0 else None
    return size is not None and 2 * size / num_workers <= cache_mb * 2**20


def train_loop_per_worker(config: Mapping[str, Any]) -> None:
    """Train one worker's share; resume from the last checkpoint if Ray Train passes one.

    Longer than the other functions on purpose, as in Ray Train's own examples: every
    hyperparameter is unpacked at the top and the epoch loop stays in view; its steps (resume,
    one epoch, agreeing on the figures, the checkpoint) are functions below.
    """
    import ray.train
    import ray.train.torch

    architecture = config["architecture"]
    kind = architecture["kind"]
    epochs = config["epochs"]
    batch_size = config["batch_size"]
    learning_rate = config["learning_rate"]
    weight_decay = config["weight_decay"]
    patience = config["patience"]
    seed = config["seed"]
    pos_weight = config.get("pos_weight")
    shuffle_buffer = config.get("shuffle_buffer_rows") or None
    cache_shard = config.get("cache_shard", False)  # fit_model's decision, the same on every worker
    whole = config.get("read_whole", False)  # every worker reads the splits whole (fit_model)
    threads = max(1, int(config.get("cpus_per_worker", 1)))
    on_epoch_end = config.get("on_epoch_end")  # see fit_model
    supervised = config.get("supervised", True)  # False: stop on the validation loss, not AUCPR
    # Negative downsampling: the weighted loss per trained row, times this, is the loss per row of
    # the whole training split (see training.pipeline.fit); 1 without downsampling.
    loss_scale = config.get("train_loss_scale", 1.0)

    torch.manual_seed(seed)
    np.random.seed(seed)
    # Ray sets OMP_NUM_THREADS from the worker's CPUs; say it to torch too, whatever the
    # environment says, so a worker computes on exactly the cores it reserved.
    torch.set_num_threads(threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()  # Ray: the GPU Ray assigned to this worker, or CPU

    model = build_model(architecture)
    # Ray: after a failure the new worker group starts here with the last reported checkpoint.
    state, best_state, optimizer_state = _resume(model, ray.train.get_checkpoint())
    start_epoch = state["epoch"] + 1

    # Ray: moves the model to `device` and wraps it in DistributedDataParallel when world > 1;
    # the gradients then live in DDP's all-reduce buckets (no copy into and out of them per step).
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    plain = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_fn = build_loss(kind, pos_weight, device)

    # Ray: this worker's shards of the training and of the validation split.
    train_shard = ray.train.get_dataset_shard("train")
    validation = ray.train.get_dataset_shard("validation")
    bins = ScoreBins.for_kind(kind)

    cache = validation_cache = None
    stopping = EarlyStopping(patience, state["best_aucpr"], state["best_epoch"], state["bad_epochs"])
    for epoch in range(start_epoch, epochs):
        if stopping.stop:
            break
        started = time.perf_counter()
        clock = StageClock()
        epoch_seed = seed * 100_003 + epoch * 101 + rank
        if cache_shard:
            if cache is None:  # the first epoch of this worker-group start pays the read
                cache = ShardCache.pull(train_shard, device, clock, (rank, world) if whole else None)
                cache.truncate(_shard_rows_agreed(len(cache), device, world))
                if whole:
                    validation_cache = ShardCache.pull(validation, device, clock, (rank, world))
            batches = cache.epoch_batches(batch_size, epoch_seed, clock)
        else:
            batches = train_shard.iter_torch_batches(
                batch_size=batch_size,
                dtypes=torch.float32,
                device=device,
                local_shuffle_buffer_size=shuffle_buffer,
                local_shuffle_seed=epoch_seed,
                pin_memory=device.type == "cuda",
            )
        rows, loss_sum = _train_one_epoch(model, optimizer, loss_fn, kind, batches, clock)
        train_seconds = time.perf_counter() - started

        if validation_cache is not None:
            validation_batches = validation_cache.batches(4096)
        else:
            validation_batches = validation.iter_torch_batches(batch_size=4096, dtypes=torch.float32, device=device)
        shard = validation_histogram(plain, kind, validation_batches, bins)
        summed, total_rows, total_loss = _agree(shard, rows, loss_sum, device, world)
        aucpr, aucroc, mean_score = _validation_figures(summed, bins)
        # The autoencoder's score is its reconstruction error: their mean is its validation loss.
        validation_loss = mean_score if kind != MLP else math.nan

        if stopping.update(epoch, aucpr if supervised else -validation_loss):
            best_state = {k: v.detach().cpu().clone() for k, v in plain.state_dict().items()}
        state.update(best_aucpr=stopping.best_aucpr, best_epoch=stopping.best_epoch, bad_epochs=stopping.bad_epochs)
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(total_rows, 1.0) * loss_scale,
            "validation_aucpr": aucpr,
            "validation_aucroc": aucroc,
            "validation_loss": validation_loss,
            "train_rows": int(total_rows),
            "train_seconds": train_seconds,
            "train_rows_per_s": total_rows / train_seconds if train_seconds > 0 else math.nan,
            "ingest": ("whole" if whole else "cache") if cache_shard else "stream",
            **clock.metrics(),  # this worker's (rank 0's in the history); see StageClock
            "epoch_seconds": time.perf_counter() - started,
            "best_epoch": stopping.best_epoch,
            "early_stopped": stopping.stop,
            "workers": world,
            "device": device.type,  # "cuda" when ray.use_gpu put this worker on a GPU
        }
        state["epoch"] = epoch
        state["history"].append(metrics)
        _report(metrics, state, {_MODEL_FILE: plain.state_dict(), _BEST_FILE: best_state, _OPTIMIZER_FILE: optimizer.state_dict()}, rank)
        if on_epoch_end is not None:
            on_epoch_end(epoch, rank, world)


def _resume(model: nn.Module, checkpoint) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict | None]:
    """(loop state, best weights, optimizer state) from Ray Train's last checkpoint, loading its
    weights into `model`; a fresh start's when there is none. Records this worker-group start."""
    state: dict[str, Any] = {"epoch": -1, "best_aucpr": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": [], "attempts": []}
    best_state = copy.deepcopy(model.state_dict())
    optimizer_state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            directory = Path(directory)
            # Onto the CPU first: a GPU run's tensors then load on any worker, and prepare_model
            # and the optimizer move them to this worker's device.
            model.load_state_dict(torch.load(directory / _MODEL_FILE, weights_only=True, map_location="cpu"))
            best_state = torch.load(directory / _BEST_FILE, weights_only=True, map_location="cpu")
            optimizer_state = torch.load(directory / _OPTIMIZER_FILE, weights_only=True, map_location="cpu")
            state = json.loads((directory / _STATE_FILE).read_text())
    resumed = state["epoch"] if checkpoint is not None else None
    state["attempts"].append({"start_epoch": state["epoch"] + 1, "resumed_from_epoch": resumed})
    return state, best_state, optimizer_state


def _train_one_epoch(
    model: nn.Module, optimizer, loss_fn: nn.Module, kind: str, batches: Iterable[Mapping[str, torch.Tensor]], clock: StageClock
) -> tuple[int, float]:
    """One pass over this worker's shard; (rows, summed loss) of this worker. The time spent
    waiting for each batch and in each step goes to `clock`."""
    model.train()
    rows, loss_sum = 0, None
    batches = iter(batches)
    while True:
        waited = time.perf_counter()
        batch = next(batches, None)
        stepped = time.perf_counter()
        clock.add("wait", stepped - waited)
        if batch is None:
            break
        x, y = batch["x"], batch["y"]
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, loss_fn, kind, x, y)
        forward = time.perf_counter()
        loss.backward()  # Ray/DDP: gradients are averaged across workers here
        backward = time.perf_counter()
        optimizer.step()
        # Summed on the device: reading a loss back to the host would sync a GPU every step.
        weighted = loss.detach().double() * len(y)
        loss_sum = weighted if loss_sum is None else loss_sum + weighted
        rows += len(y)
        clock.add("forward", forward - stepped)
        clock.add("backward", backward - forward)
        clock.add("optimizer", time.perf_counter() - backward)
    return rows, 0.0 if loss_sum is None else float(loss_sum)


def _agree(
    validation: np.ndarray, rows: int, loss_sum: float, device: torch.device, world: int
) -> tuple[np.ndarray, float, float]:
    """(validation vector, rows, loss) summed over the workers: each worker's validation
    histogram and its training rows and loss. Every worker gets the same sums, so every worker
    computes the same figures and takes the same decision."""
    figures = torch.tensor(np.r_[validation, rows, loss_sum], dtype=torch.float64, device=device)
    if world > 1:
        import torch.distributed as dist

        # Ray: one all_reduce over the process group Ray Train set up (gloo on CPU, nccl on GPU).
        dist.all_reduce(figures)
    summed = figures.cpu().numpy()
    return summed[:-2], float(summed[-2]), float(summed[-1])


def _report(metrics: dict[str, Any], state: dict[str, Any], tensors: Mapping[str, Any], rank: int) -> None:
    """Report the epoch to Ray Train with a checkpoint of `tensors` (file name -> state dict) and
    the loop's `state`."""
    import ray.train

    # Ray: rank 0 writes the checkpoint (all workers hold the same weights under DDP); every
    # worker calls report, which is a barrier.
    with tempfile.TemporaryDirectory() as directory:
        reported = None
        if rank == 0:
            directory = Path(directory)
            for name, tensors_of_file in tensors.items():
                torch.save(tensors_of_file, directory / name)
            (directory / _STATE_FILE).write_text(json.dumps(state))
            reported = ray.train.Checkpoint.from_directory(str(directory))
        ray.train.report(metrics, checkpoint=reported)


# --- the driver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """What training hands to evaluation and export."""

    architecture: Mapping[str, Any]
    state_dict: Mapping[str, torch.Tensor]  # the best epoch's weights (CPU)
    history: list[dict[str, Any]]  # one entry per epoch run, in order
    attempts: list[dict[str, Any]]  # one entry per worker-group start (more than one after a failure)
    best_epoch: int
    best_validation_aucpr: float
    checkpoint_path: str


def checkpoint_storage(settings) -> Path:
    """Where Ray Train persists a run's checkpoints: `ray.storage_path`, else the lake's folder."""
    return Path(settings.ray.storage_path or settings.lake.checkpoints_dir)


def fit_model(
    train: "ray.data.Dataset",
    validation: "ray.data.Dataset",
    *,
    architecture: Mapping[str, Any],
    settings,
    run_name: str,
    pos_weight: float | None = None,
    on_epoch_end: EpochHook | None = None,
    supervised: bool = True,
    train_loss_scale: float = 1.0,
) -> TrainedModel:
    """Train with Ray Train's TorchTrainer on `train` ({"x", "y"}), early-stopping on `validation`.

    Args:
        train, validation: preprocessed datasets (materialize them first). A worker pulls its shard
            of `train` once when twice the shard fits `train.worker_cache_mb` (`fits_worker_cache`),
            else streams it every epoch; `validation` is re-read every epoch.
        architecture: the manifest's architecture entry (kind, n_features, hidden, dropout).
        settings: lakescore Settings: `train` (epochs, batch size, learning rate, patience, seed),
            `ray` (num_workers, use_gpu, cpus_per_worker, max_failures) and the checkpoint
            storage (`checkpoint_storage`; shared storage on a multi-node cluster).
        run_name: the run's folder under the checkpoint storage.
        pos_weight: the positive-class weight of the mlp loss (None: unweighted).
        on_epoch_end: `f(epoch, rank, world_size)`, called on every worker after the epoch's
            checkpoint is reported; it must pickle (Ray ships it to the workers). Tests pass one
            that kills a worker to prove that training resumes from the last checkpoint.
        supervised: False when the source has no label: early stopping then follows the
            validation reconstruction loss (the autoencoder), and no AUCPR is recorded.
        train_loss_scale: the reported train_loss is the loss per trained row times this
            (negative downsampling: the loss per row of the whole training split).

    Returns the best epoch's weights with the per-epoch history. Raises ray.train's
    TrainingFailedError if the workers fail more often than `ray.max_failures`.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t, ray_settings = settings.train, settings.ray
    storage_path = checkpoint_storage(settings)
    cache_shard = fits_worker_cache(train, ray_settings.num_workers, t.worker_cache_mb)
    config = {
        "architecture": dict(architecture),
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "patience": t.patience,
        "seed": t.seed,
        "pos_weight": pos_weight,
        "shuffle_buffer_rows": t.shuffle_buffer_rows,
        "cache_shard": cache_shard,
        # Only where the shards are held: a streamed whole split would train every worker on every row.
        "read_whole": cache_shard and reads_whole(train, validation, t.whole_read_mb),
        "cpus_per_worker": ray_settings.cpus_per_worker,
        "on_epoch_end": on_epoch_end,
        "supervised": supervised,
        "train_loss_scale": train_loss_scale,
    }
    resources = {"CPU": ray_settings.cpus_per_worker}
    if ray_settings.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=ray_settings.num_workers, use_gpu=ray_settings.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=ray_settings.max_failures),
            # The checkpoint holds the best weights too, so the latest two are all we need.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train, "validation": validation},
        # Both splits are sharded (validation without dropping rows: see _ShardedIngest), and read
        # in their materialized order, so a run is reproducible (see prepare_datasets).
        dataset_config=_sharded_ingest(split=not config["read_whole"]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint; see the Ray Train logs under {storage_path}")
    with result.checkpoint.as_directory() as directory:
        directory = Path(directory)
        best = torch.load(directory / _BEST_FILE, weights_only=True)
        state = json.loads((directory / _STATE_FILE).read_text())
    return TrainedModel(
        architecture=dict(architecture),
        state_dict=best,
        history=state["history"],
        attempts=state["attempts"],
        best_epoch=state["best_epoch"],
        best_validation_aucpr=state["best_aucpr"] if supervised else math.nan,
        checkpoint_path=result.checkpoint.path,
    )


def _sharded_ingest(split: bool = True):
    """Ray Train's DataConfig with the training split sharded in equal parts (DDP needs the same
    steps on every worker) and the validation split in parts that drop no row; without `split`,
    every worker gets both whole (`reads_whole`: each keeps its slice)."""
    from ray.train import DataConfig

    if not split:
        return DataConfig(datasets_to_split=[], execution_options=_ordered_ingest())

    class _ShardedIngest(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            others = {k: v for k, v in datasets.items() if k != "validation"}
            output = super().configure(others, world_size, worker_handles, worker_node_ids, **kwargs)
            if "validation" in datasets:
                ds = datasets["validation"].copy(datasets["validation"])
                if ds.name is None:
                    ds.set_name("validation")
                ds.context.execution_options = self._resolve_execution_options("validation")
                # Ray: equal=False hands out whole blocks; equal=True would drop up to world-1 rows.
                for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                    output[i]["validation"] = split
            return output

    return _ShardedIngest(datasets_to_split=["train"], execution_options=_ordered_ingest())


def make_architecture(kind: str, n_features: int, train_settings) -> dict[str, Any]:
    """The manifest's architecture entry for `kind` from the settings."""
    if kind == MLP:
        return {"kind": MLP, "n_features": n_features, "hidden": list(train_settings.hidden), "dropout": train_settings.dropout}
    if kind == AUTOENCODER:
        # No dropout in the autoencoder: it would make the reconstruction error noisy.
        return {"kind": AUTOENCODER, "n_features": n_features, "hidden": list(train_settings.autoencoder_hidden), "dropout": 0.0}
    raise ValueError(f"unknown model kind {kind!r}; use mlp or autoencoder")
