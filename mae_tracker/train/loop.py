"""Pieces every arm shares: device, seeding, optimiser + schedule, checkpoints, the epoch loop.

The same loop serves one CPU process, one GPU and a torchrun DDP job (see distributed.py):

* CPU: fp32 (bf16 autocast is 13-18x slower there), fused AdamW, batches read + preprocessed by
  background threads (data/loader.py) while the step runs;
* CUDA: bf16 autocast where the GPU supports it, TF32 matmuls, fused AdamW, optional
  torch.compile, pinned batches copied with non_blocking=True, and no host sync per step: the
  loss is summed on the device and read back only at logging points (every
  ``log_every_steps`` steps and at the end of the epoch), which is also where a NaN is caught.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mae_tracker.atomic import atomic_path
from mae_tracker.data.jetfile import iterate_batches
from mae_tracker.data.loader import prefetch
from mae_tracker.paths import cache_dir
from mae_tracker.progress import progress_bar, progress_line
from mae_tracker.train import distributed
from mae_tracker.train.config import CommonConfig

class TrainingFailed(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the run is marked FAILED."""


EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after every epoch with (epoch, metrics); may raise (e.g. optuna.TrialPruned)."""


def epoch_done(callback: EpochCallback | None, epoch: int, metrics: dict[str, float]) -> None:
    """Give an epoch's metrics to the caller's callback (a sweep's pruner). The arms call it through
    ``distributed.on_main``: rank 0 decides, and its exception (``TrialPruned``) stops every rank."""
    if callback is not None:
        callback(epoch, metrics)


def run_epochs(start_epoch: int, epochs: int, *, train: Callable[[int], dict[str, float]],
               evaluate: Callable[[int, dict[str, float]], dict[str, float]],
               checkpoint: Callable[[int], None], log_metrics: Callable[..., None],
               callback: EpochCallback | None = None,
               stop: Callable[[int], bool] | None = None) -> dict[str, float]:
    """The epoch skeleton every trained arm shares (pretrain, finetune, probe, scratch, the CNN).

    Each epoch: ``train(epoch)`` on every rank (its metrics); rank 0 alone evaluates (validation,
    figures) and every rank receives its numbers; they are logged with the epoch as step; rank 0
    writes the checkpoint; then the caller's callback (a sweep's pruner) sees them on rank 0,
    and its verdict (``TrialPruned``) stops every rank at once. ``stop(epoch)`` (early stopping,
    decided on rank 0) ends training after that epoch on every rank. Returns the last epoch's metrics.
    """
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        metrics = train(epoch)
        metrics.update(distributed.on_main(evaluate, epoch, metrics))
        log_metrics(metrics, step=epoch)
        checkpoint(epoch)
        distributed.on_main(epoch_done, callback, epoch, metrics)
        if stop is not None and distributed.on_main(stop, epoch):
            break
    return metrics


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(config: CommonConfig) -> torch.device:
    """Per-process settings every arm applies before it builds anything: the process group
    under torchrun, CPU threads, seeds (same seed, same data -> same numbers on CPU; the same
    on every rank) and the device (cuda:LOCAL_RANK under torchrun), TF32 matmuls on CUDA."""
    distributed.init(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    device = distributed.device_for(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    return device


def global_batch_size(config: CommonConfig) -> int:
    """Images per optimiser step over all ranks: batch_size x world size."""
    return config.batch_size * distributed.context().world_size


def peak_lr(config: CommonConfig) -> float:
    """The learning rate the schedule peaks at: ``lr``, or with ``lr_scaling='linear'`` the MAE
    paper's rule lr x global batch / 256 (``lr`` is then the base lr per 256 images)."""
    scaling = config.lr_scaling
    if scaling == "none":
        return config.lr
    if scaling == "linear":
        return config.lr * global_batch_size(config) / 256
    raise ValueError(f"lr_scaling must be 'none' or 'linear', got {scaling!r}")


def steps_per_epoch(n_jets: int, config: CommonConfig) -> int:
    """Optimiser steps per epoch: whole global batches only (the same on every rank, and the
    same as a single process running the global batch)."""
    return n_jets // global_batch_size(config)


def scale_info(config: CommonConfig) -> dict[str, Any]:
    """Params that say how a run was spread: world size, global batch, the lr actually used."""
    return {"world_size": distributed.context().world_size, "global_batch_size": global_batch_size(config),
            "peak_lr": peak_lr(config)}


def for_training(model: torch.nn.Module, config: CommonConfig, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: DDP-wrapped on a world > 1, torch.compile'd with
    ``compile``. Evaluation, checkpoints and logged models keep using ``model`` itself (same
    parameters). Also puts every rank on rank 0's RNG stream."""
    distributed.sync_rng()
    wrapped = distributed.wrap(model, device)
    if config.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def autocast(device: torch.device, config: CommonConfig) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA GPUs that support it (``bf16``); fp32 everywhere else."""
    if device.type == "cuda" and config.bf16 and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mask_noise(batch: int, num_patches: int, device: torch.device) -> torch.Tensor:
    """MAE masking noise for this rank's ``batch`` images.

    Drawn for the whole global batch on every rank (one RNG stream) and split the way the
    batch is (rank r holds global rows r, r + W, ...), so a DDP step masks each image exactly as
    a single process with the global batch does; on one process it is the draw the encoder
    itself would make."""
    ctx = distributed.context()
    noise = torch.rand(batch * ctx.world_size, num_patches, device=device)
    return noise[ctx.rank::ctx.world_size] if ctx.enabled else noise


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0
                   ) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, the MAE way: no weight decay on biases, norms and
    tokens (1-d tensors); with ``layer_decay`` < 1, transformer block i of depth D learns at
    lr * layer_decay ** (D + 1 - i), so pretrained early layers move least and the head most."""
    depth = len(getattr(getattr(model, "encoder", model), "blocks", ()))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = _layer_id(name, depth)
        decay = param.ndim > 1 and not name.endswith(("cls_token", "pos_embed", "mask_token"))
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * layer_decay ** (depth + 1 - layer)})
        group["params"].append(param)
    # Fused AdamW: one kernel over all tensors (+12 % on a 2-core CPU, measured; the GPU default).
    fused = bool(groups) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                 for g in groups.values() for p in g["params"])
    return torch.optim.AdamW(list(groups.values()), lr=lr, betas=(0.9, 0.95), fused=fused or None)


def _layer_id(name: str, depth: int) -> int:
    """0 for everything before the transformer (patch embedding, conv stages, cls token),
    i + 1 for block i, depth + 1 for the final norm and the head."""
    parts = name.split(".")
    if parts[0] == "head" or parts[:2] == ["encoder", "norm"]:
        return depth + 1
    if parts[:2] == ["encoder", "blocks"]:
        return int(parts[2]) + 1
    return 0


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero, stepped once per batch (the MAE recipe)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def checkpoint_path(checkpoint_dir: str, run_id: str) -> Path:
    root = Path(checkpoint_dir) if checkpoint_dir else cache_dir() / "checkpoints"
    return root / run_id / "checkpoint.pt"


def save_checkpoint(path: Path, *, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, extra: dict[str, Any] | None = None) -> None:
    """Everything needed to continue exactly where we stopped; written atomically so a
    Ctrl-C during the save leaves the previous epoch's checkpoint intact. Rank 0 only."""
    if not distributed.context().is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": _numpy_rng_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as tensors and numbers (a pickled ndarray would need
    torch.load(weights_only=False))."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["position"],
                         state["has_gauss"], state["cached_gaussian"]))


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any]:
    """Restore model/optimiser/scheduler/RNG state; returns the checkpoint (epoch, extra).

    Under torchrun, rank 0 reads its checkpoint and every rank gets the same state (no
    shared filesystem needed)."""

    def read() -> dict[str, Any]:
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint to resume from at {path}")
        # weights_only: a checkpoint is tensors, numbers and strings; loading one never runs code,
        # whoever wrote the file.
        return torch.load(path, map_location="cpu", weights_only=True)

    state = distributed.on_main(read)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    _set_numpy_rng_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingFailed(f"loss became {loss.item()} at epoch {epoch}, step {step}; "
                             "lower the learning rate or check the input data")


def _read_back(running: torch.Tensor, last: torch.Tensor, epoch: int, step: int) -> tuple[float, float]:
    """The one host sync of a logging point: (summed loss so far, this step's loss), summed
    over ranks; a NaN/inf anywhere so far fails the run here, on every rank at once."""
    values = torch.stack([running, last.to(running.dtype)])
    distributed.all_reduce_sum(values)
    total, step_loss = values.tolist()
    if not math.isfinite(total):
        raise TrainingFailed(f"loss became {total} at epoch {epoch}, by step {step} (checked every "
                             "log_every_steps steps); lower the learning rate or check the input data")
    return total, step_loss / distributed.context().world_size


def train_one_epoch(reader: Any, indices: np.ndarray, preprocessor: Any, config: CommonConfig, epoch: int,
                    compute_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler: Any, *, progress: bool = False,
                    desc: str = "", device: torch.device | None = None) -> dict[str, float]:
    """One shuffled pass over ``indices``: the optimisation loop every arm shares.

    ``compute_loss(images, labels)`` (tensors already on ``device``) is the arm's only say.
    Under torchrun each rank reads its shard of the epoch's order (rank, world_size of
    iterate_batches) and all ranks run ``len(indices) // global batch`` steps. Batches come from
    ``config.loader_workers`` background threads. The loss stays on the device; it is read back
    (summed over ranks) every ``config.log_every_steps`` steps, for the step metric and the NaN
    check, and once at the end. Step metrics go to MLflow in one batch per epoch, from rank 0.
    Returns train_loss (mean over the epoch's steps, all ranks), lr, throughput_img_s (global)
    and epoch_time_s.
    """
    from mae_tracker.train.tracking import MetricBuffer

    ctx = distributed.context()
    if device is None:
        device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    steps = steps_per_epoch(len(indices), config)
    batches = iterate_batches(reader, indices, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                              preprocessor=preprocessor, drop_last=True, rank=ctx.rank, world_size=ctx.world_size)
    source = prefetch(batches, workers=config.loader_workers, pin_memory=device.type == "cuda",
                      n_batches=steps, processes=config.loader_processes)
    step_metrics = MetricBuffer()
    log_every = config.log_every_steps
    running = torch.zeros((), dtype=torch.float64, device=device)
    last = running
    started = time.perf_counter()
    try:
        shown = progress and ctx.is_main
        # A bar on a terminal; in a log (mlflow run, > file) one line per epoch, printed below.
        for step, (images, labels) in enumerate(progress_bar(source, total=steps, enabled=shown, desc=desc,
                                                             lines=False, leave=False)):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, config):
                loss = compute_loss(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            last = loss.detach()
            running += last
            global_step = epoch * steps + step
            if log_every and global_step % log_every == 0:
                _, step_loss = _read_back(running, last, epoch, step)
                step_metrics.add("train_loss_step", step_loss, global_step)
    finally:
        if hasattr(source, "close"):
            source.close()
    total, _ = _read_back(running, last, epoch, steps - 1)
    elapsed = time.perf_counter() - started
    if ctx.is_main:
        step_metrics.flush()
    seen = steps * global_batch_size(config)
    progress_line(f"{desc}: {steps} steps, train_loss {total / max(1, steps * ctx.world_size):.4g}, "
                  f"{seen / elapsed:.0f} img/s, {elapsed:.1f} s", enabled=shown)
    return {"train_loss": total / max(1, steps * ctx.world_size), "lr": optimizer.param_groups[0]["lr"],
            "throughput_img_s": seen / elapsed, "epoch_time_s": elapsed}
