"""Sweep trials under ``torchrun``: rank 0 runs the sweep, the other ranks train with it.

``torchrun --nproc_per_node=N -m mae_tracker.sweep spec.yaml`` trains every trial's MAE (and a
probe / finetune / scratch objective) with DDP over the N ranks. Rank 0 is the sweep as it is
in one process: Optuna, the trial runs, the report. Just before it calls an arm, it sends the
call (the arm's name and config) to the other ranks, which make the same call and so join its
collectives; the arms already keep MLflow and checkpoints on rank 0. Pruning is decided on rank
0 and reaches the others through the arms' per-epoch ``distributed.on_main`` report, so every
rank leaves a pruned trial at the same epoch. When the sweep is done, rank 0 sends ``None``.

Failures that every rank sees at the same point (a pruned trial, a NaN loss) end the trial and
the sweep goes on. Anything else leaves the ranks out of step, so it ends the job: the rank
that hit it exits, and torchrun stops the others (their trial runs end FAILED).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import optuna

from mae_tracker.train import distributed
from mae_tracker.train.loop import TrainingFailed

# Raised on every rank at the same epoch, so the ranks stay in step after it.
IN_STEP_FAILURES = (optuna.TrialPruned, TrainingFailed)


class RanksOutOfStep(BaseException):
    """Rank 0's trial failed where the other ranks did not: the job cannot go on together.

    A BaseException, so that Optuna's ``catch=(Exception,)`` lets it through and it ends the job."""


def enabled() -> bool:
    return distributed.context().enabled


def call_arm(arm: str, config: Any, **kwargs: Any) -> dict[str, Any]:
    """Run ``pretrain`` (arm "pretrain") or ``train_classifier`` (any other arm) with ``config``;
    on rank 0 of a torchrun job, the other ranks are sent the same call first."""
    if enabled():
        distributed.broadcast_object((arm, config))
    try:
        return _arm_function(arm)(config, **kwargs)
    except IN_STEP_FAILURES:
        raise
    except Exception as err:
        if enabled():
            raise RanksOutOfStep(f"rank 0: {type(err).__name__}: {err}") from err
        raise


def follow() -> None:
    """A rank other than 0: make each arm call rank 0 sends, until it sends ``None``."""
    while (call := distributed.broadcast_object(None)) is not None:
        arm, config = call
        try:
            _arm_function(arm)(config, progress=False)
        except IN_STEP_FAILURES:
            continue  # rank 0 saw the same at the same step and goes on with the next trial


@contextlib.contextmanager
def leading() -> Iterator[None]:
    """Rank 0's sweep: when it is done, release the other ranks. On an error they are not
    released: the process exits and torchrun stops them."""
    yield
    if enabled():
        distributed.broadcast_object(None)


def _arm_function(arm: str) -> Any:
    if arm == "pretrain":
        from mae_tracker.train.pretrain import pretrain

        return pretrain
    from mae_tracker.train.downstream import train_classifier

    return train_classifier
