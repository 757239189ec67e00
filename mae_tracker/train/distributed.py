"""Distributed data parallel under ``torchrun``: one process per rank, gloo on CPU, NCCL on CUDA.

``torchrun --nproc_per_node=N -m mae_tracker pretrain ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; :func:`init` reads them and joins the process group. Without them
(a plain ``mae-tracker`` command) everything here is a no-op on a world of one, so the arms
run the same code either way.

The rules the arms follow (see loop.train_one_epoch and the arms):

* every rank reads its own shard of each epoch's shuffled order (``iterate_batches(rank=,
  world_size=)``), so the global batch is ``batch_size x world_size``;
* the masks of a step are drawn for the whole global batch on every rank (same seed, same
  stream) and each rank takes its rows, so a DDP run equals a single-process run with the global
  batch, up to float summation order;
* only rank 0 talks to MLflow, evaluates, and writes checkpoints; the others wait at a barrier;
* a rank that dies takes the job down: torchrun stops the others with SIGTERM, which rank 0
  turns into an exception, so its MLflow run ends FAILED with a message, never RUNNING.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_context = Context()


class RankFailed(RuntimeError):
    """Another rank of the job stopped; this one is being taken down with it."""


def context() -> Context:
    """The current process's rank and world (world of one outside torchrun)."""
    return _context


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str = "auto") -> Context:
    """Join the process group if torchrun started us (idempotent); returns the context."""
    global _context
    if not launched_by_torchrun():
        return _context
    if dist.is_initialized():
        return _context
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(seconds=int(os.environ.get("MAE_TRACKER_DIST_TIMEOUT", "1800")))
    dist.init_process_group(backend=backend, timeout=timeout)
    _context = Context(rank=rank, world_size=world, local_rank=local_rank)
    _install_sigterm_handler()
    # Leave the group before the interpreter tears down: a gloo group destroyed during
    # finalisation can abort the process ("terminate called without an active exception").
    atexit.register(shutdown)
    return _context


def device_for(name: str) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK under torchrun on GPUs."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and _context.enabled:
        return torch.device("cuda", _context.local_rank)
    return torch.device(name)


def _install_sigterm_handler() -> None:
    """torchrun sends SIGTERM to the surviving ranks when one fails. Python's default would
    kill us on the spot and leave rank 0's MLflow run RUNNING; an exception unwinds through
    tracked_run, which ends it FAILED."""

    def handler(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM (or torchrun's SIGKILL) ends it
        raise RankFailed(f"rank {_context.rank}: stopped by signal {signal.Signals(signum).name}: another "
                         "rank of the job failed or the launcher was stopped (see the other ranks' errors)")

    signal.signal(signal.SIGTERM, handler)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` on a world > 1, else ``model`` itself.

    DDP broadcasts rank 0's weights at construction, so all ranks start equal.
    """
    if not _context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if not any(p.requires_grad for p in model.parameters()):
        return model
    if device.type == "cuda":
        # BatchNorm (the probe head) normalised over the global batch, as in one process; the
        # BatchNorm modules are swapped inside ``model``, so evaluation and the logged model see
        # the same ones (in eval mode they use running statistics and never communicate).
        # SyncBatchNorm has no CPU implementation: under gloo, BatchNorm stays per rank.
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def barrier() -> None:
    if _context.enabled:
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (pickled; for configs, ids, small states)."""
    if not _context.enabled:
        return value
    box = [value if _context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` run on rank 0 only, its result (or its exception) on every rank.

    For work that must happen once (reading an MLflow run, generating the default dataset,
    loading a logged encoder): the other ranks wait for rank 0 and get the same object."""
    if not _context.enabled:
        return fn(*args, **kwargs)
    result, error = None, None
    if _context.is_main:
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            error = err
    try:
        result, error = broadcast_object((result, error))
    except Exception:  # an unpicklable exception: send its text
        result, error = broadcast_object((None, RuntimeError(f"{type(error).__name__}: {error}")))
    if error is not None:
        raise error
    return result


def sync_rng() -> None:
    """Give every rank rank 0's python/numpy/torch RNG state, so masks and dropout are drawn
    from one stream however much randomness rank-0-only work consumed before."""
    if not _context.enabled:
        return
    import random

    import numpy as np

    state = broadcast_object((random.getstate(), np.random.get_state(), torch.get_rng_state(),
                              torch.cuda.get_rng_state() if torch.cuda.is_available() else None))
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    if state[3] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[3])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op on a world of one)."""
    if _context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    """Leave the process group (end of a command)."""
    global _context
    if dist.is_initialized():
        # DDP wrappers sit in reference cycles and hold the group's C++ work objects; left to
        # the interpreter's final teardown they are freed after Python is gone, which aborts the
        # process ("terminate called without an active exception"). Free them now.
        gc.collect()
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer may already be gone
            pass
    _context = Context()


def fail_fast(err: BaseException) -> None:
    """On a rank that hit an error: say so on stderr with the rank, so torchrun's summary
    and the logs name the rank that took the job down."""
    if _context.enabled:
        print(f"[rank {_context.rank}/{_context.world_size}] {type(err).__name__}: {err}", file=sys.stderr,
              flush=True)
