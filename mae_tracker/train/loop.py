"""Pieces every arm shares: device, seeding, optimiser + schedule, checkpoints."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mae_tracker.data.jetfile import iterate_batches
from mae_tracker.paths import cache_dir




class TrainingFailed(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the run is marked FAILED."""


EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after every epoch with (epoch, metrics); may raise (e.g. optuna.TrialPruned)."""


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(config: Any) -> torch.device:
    """Per-process settings every arm applies before it builds anything: CPU threads,
    seeds (same seed, same data -> same numbers on CPU) and the device."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    return select_device(config.device)


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
    return torch.optim.AdamW(list(groups.values()), lr=lr, betas=(0.9, 0.95))


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
    Ctrl-C during the save leaves the previous epoch's checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any]:
    """Restore model/optimiser/scheduler/RNG state; returns the checkpoint (epoch, extra)."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingFailed(f"loss became {loss.item()} at epoch {epoch}, step {step}; "
                             "lower the learning rate or check the input data")


def train_one_epoch(reader: Any, indices: np.ndarray, preprocessor: Any, config: Any, epoch: int,
                    compute_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler: Any, *, progress: bool = False,
                    desc: str = "") -> dict[str, float]:
    """One shuffled pass over ``indices``: the optimisation loop every arm shares.

    ``compute_loss(images, labels)`` (tensors on the CPU) is the arm's only say. Data loading,
    the step and logging each live in one place here, so a distributed sampler (rank,
    world_size of iterate_batches) and rank-0-only logging slot in without touching the arms.
    The step loss goes to MLflow every ``config.log_every_steps`` steps, in one batch per epoch.
    """
    from mae_tracker.train.tracking import MetricBuffer

    steps_per_epoch = len(indices) // config.batch_size
    batches = iterate_batches(reader, indices, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                              preprocessor=preprocessor, drop_last=True)
    step_metrics = MetricBuffer()
    total_loss, seen, started = 0.0, 0, time.perf_counter()
    for step, (images, labels) in enumerate(tqdm(batches, total=steps_per_epoch, disable=not progress,
                                                 desc=desc, leave=False)):
        loss = compute_loss(images, labels)
        check_finite(loss, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(images)
        seen += len(images)
        global_step = epoch * steps_per_epoch + step
        if config.log_every_steps and global_step % config.log_every_steps == 0:
            step_metrics.add("train_loss_step", loss.item(), global_step)
    step_metrics.flush()
    elapsed = time.perf_counter() - started
    return {"train_loss": total_loss / max(1, seen), "lr": optimizer.param_groups[0]["lr"],
            "throughput_img_s": seen / elapsed, "epoch_time_s": elapsed}
