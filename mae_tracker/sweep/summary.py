"""A sweep's state in a few numbers: trial counts by state and the best trial, as the runner
returns them and the outcome records them on the parent run."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from mae_tracker.sweep.spec import SweepSpec
from mae_tracker.sweep.storage import mask_password


def counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials in each state (COMPLETE, PRUNED, FAIL, RUNNING, ...)."""
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states


def summarize(study: optuna.Study, spec: SweepSpec, url: str, parent_id: str) -> dict[str, Any]:
    """The sweep's name, storage (password masked), parent run, trial counts and best trial."""
    summary: dict[str, Any] = {"study": spec.name, "storage": mask_password(url), "parent_run_id": parent_id,
                               "n_trials": spec.n_trials, "states": counts(study), "metric": spec.metric}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                       best_encoder_uri=best.user_attrs.get("encoder_uri"),
                       best_pretrain_run_id=best.user_attrs.get("pretrain_run_id"))
    return summary
