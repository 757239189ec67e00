"""Closing runs whose client died (``mae-tracker server --close-stale SECONDS``).

MLflow has no run heartbeat: a run whose process was SIGKILLed, ran out of memory or lost its
laptop stays RUNNING forever. This finds them by their last sign of life and ends them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable


@dataclasses.dataclass(frozen=True)
class StaleRun:
    run_id: str
    experiment: str
    run_name: str
    idle_seconds: float


def close_stale_runs(idle_seconds: float, *, experiments: Iterable[str] = (), status: str = "FAILED",
                     dry_run: bool = False, now: float | None = None) -> list[StaleRun]:
    """End RUNNING runs that show no sign of life for ``idle_seconds``: their client died
    (SIGKILL, OOM, a lost laptop) and nobody is left to close them.

    MLflow has no run heartbeat, so "sign of life" is the newest of the run's start time and
    its metrics' timestamps (every arm logs metrics at least once per epoch). Choose
    ``idle_seconds`` longer than the slowest epoch. Each closed run gets status ``status``
    (FAILED or KILLED) and an ``end_reason`` tag. Sweep trials need none of this: a sweep
    fails a dead worker's trial and its runs through Optuna's heartbeat.
    """
    import mlflow

    from mae_tracker.train import tracking

    if status not in ("FAILED", "KILLED"):
        raise ValueError(f"status must be FAILED or KILLED, got {status!r}")
    tracking.configure_tracking()
    client = mlflow.MlflowClient()
    if experiments:
        found = [client.get_experiment_by_name(name) for name in experiments]
        missing = [name for name, exp in zip(experiments, found) if exp is None]
        if missing:
            raise ValueError(f"no experiment named {', '.join(map(repr, missing))}")
    else:
        found = client.search_experiments()
    names = {exp.experiment_id: exp.name for exp in found}
    now_ms = (now if now is not None else time.time()) * 1000
    stale: list[StaleRun] = []
    runs = client.search_runs(list(names), "attributes.status = 'RUNNING'", max_results=5000) if names else []
    for run in runs:
        stamps = [run.info.start_time or 0] + [m.timestamp for m in run.data._metric_objs]
        idle = (now_ms - max(stamps)) / 1000
        if idle < idle_seconds:
            continue
        stale.append(StaleRun(run.info.run_id, names[run.info.experiment_id], run.info.run_name, idle))
        if not dry_run:
            client.set_tag(run.info.run_id, "end_reason",
                           f"no sign of life for {idle:.0f} s (client died?); closed by mae-tracker server "
                           "--close-stale")
            client.set_terminated(run.info.run_id, status=status)
    return stale
