"""A sweep's side of promotion: offer the best trial's encoder to the model registry with the
value and error of the run that measured the sweep's objective."""

from __future__ import annotations

from mlflow import MlflowClient

from mae_tracker.registry.promotion import PromotionResult, get_run, promote
from mae_tracker.sweep.objective import DOWNSTREAM_KEYS
from mae_tracker.train.tracking import configure_tracking


def promote_from_sweep(pretrain_run_id: str, *, metric: str, value: float, study: str, trial: int,
                       goal: str | None = None) -> PromotionResult:
    """Promote a sweep's best trial's encoder with the study's objective value.

    The value and its error are read from the run that measured them: the trial's probe or
    finetune run (the trial run's ``downstream_run_id`` tag; the pretrain run is nested under
    the trial run) for ``val_auc`` / ``val_acc``, else the pretrain run itself. ``goal``
    defaults from the metric name: names containing "loss" are minimised, anything else (AUC,
    accuracy) maximised.
    """
    goal = goal or ("minimize" if "loss" in metric.lower() else "maximize")
    measured_by, key = sweep_measurement(pretrain_run_id, metric)
    return promote(pretrain_run_id, metric=metric, value=value, goal=goal, study=study, trial=trial,
                   metric_run_id=measured_by, metric_key=key)


def sweep_measurement(pretrain_run_id: str, metric: str) -> tuple[str, str]:
    """(run id, metric key) where a sweep trial's objective ``metric`` was logged with its error."""
    if metric not in DOWNSTREAM_KEYS:
        return pretrain_run_id, metric
    configure_tracking()
    client = MlflowClient()
    trial_id = get_run(client, pretrain_run_id).data.tags.get("mlflow.parentRunId", "")
    downstream = get_run(client, trial_id).data.tags.get("downstream_run_id", "") if trial_id else ""
    if not downstream:
        raise ValueError(f"cannot find the run that measured {metric} for pretrain run {pretrain_run_id} (no trial "
                         "run with a downstream_run_id tag above it); promote a downstream run by hand")
    return downstream, DOWNSTREAM_KEYS[metric]


# --------------------------------------------------------------------------- checks
