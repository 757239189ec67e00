"""One Optuna trial: an MLflow child run `trial-<n>` that pretrains and then scores the encoder.

The arms nest their own runs under whatever run is active in this thread, so the pretrain
(and probe / finetune) runs appear under the trial run, which sits under the sweep's parent.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import optuna
from mlflow.entities import Metric

from mae_tracker.signals import Terminated, sigterm_received, without_frames
from mae_tracker.sweep import ranks
from mae_tracker.sweep.sampling import SEED_ATTR, trial_seed
from mae_tracker.sweep.spec import FROM_PRETRAIN, SweepSpec
from mae_tracker.train.config import DownstreamConfig, PretrainConfig

# Per-epoch pretrain metrics copied into the trial run, so the trial's curves sit one click
# from the sweep. test_loss is deliberately absent: nothing in a sweep looks at the test split.
CURVE_KEYS = ("val_probe_auc", "train_loss", "train_eval_loss")
# The objective's metric name -> the key the downstream arm returns for its selected epoch.
DOWNSTREAM_KEYS = {"val_auc": "best_val_auc", "val_acc": "best_val_acc"}


def objective_metric(metric: str) -> str:
    """The trial run's metric holding the value Optuna optimised, e.g. ``objective_val_auc``."""
    return f"objective_{metric}"


class TrialFailed(RuntimeError):
    """The trial produced no usable value (e.g. NaN); Optuna marks it FAIL and the study goes on."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one worker process shares."""

    spec: SweepSpec
    experiment_id: str
    parent_run_id: str
    progress: bool = False
    num_threads: int = 0  # this worker's share of the CPU cores; 0 = torch's default


def pretrain_config(spec: SweepSpec, params: dict[str, Any], ctx: TrialContext, number: int) -> PretrainConfig:
    values = {**spec.fixed, **params, "experiment": spec.experiment, "run_name": f"trial-{number}-pretrain"}
    if ctx.num_threads and not spec.fixed.get("num_threads"):
        values["num_threads"] = ctx.num_threads
    return PretrainConfig(**values)


def downstream_config(spec: SweepSpec, pretrain: PretrainConfig, encoder_uri: str, number: int) -> DownstreamConfig:
    # Same file, split and device as the pretraining: the encoder is scored on validation jets
    # it has never seen, and the split fields are what makes that true.
    shared = {name: getattr(pretrain, name) for name in FROM_PRETRAIN}
    return DownstreamConfig.for_arm(spec.objective, **{**spec.downstream, **shared}, encoder_uri=encoder_uri,
                                    experiment=spec.experiment, run_name=f"trial-{number}-{spec.objective}")


class Objective:
    """Callable for ``study.optimize``: runs one trial and returns its objective value."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx

    def __call__(self, trial: optuna.Trial) -> float:
        spec, ctx = self.ctx.spec, self.ctx
        # The seed its parameters were drawn with (sampling.py): differs for every trial.
        trial.set_user_attr(SEED_ATTR, trial_seed(spec.seed, trial.number))
        _check_not_surplus(trial, spec.n_trials)
        params = {name: p.suggest(trial) for name, p in spec.parameters.items()}
        run = mlflow.start_run(
            run_name=f"trial-{trial.number}", experiment_id=ctx.experiment_id, parent_run_id=ctx.parent_run_id,
            tags={"optuna_study": spec.name, "optuna_trial": str(trial.number), "optuna_state": "RUNNING",
                  "sweep_objective": spec.objective, "worker": f"{socket.gethostname()}:{os.getpid()}"})
        run_id = run.info.run_id
        stopped = False
        try:
            # Recorded first, so whoever finds this trial stale (another worker) can close its run.
            trial.set_user_attr("mlflow_run_id", run_id)
            mlflow.log_params(params)
            value = self._run(trial, params, run_id)
        except optuna.TrialPruned as pruned:
            # Pruned is not finished: KILLED keeps it out of "finished runs" views.
            _end(run_id, "KILLED", "PRUNED", f"pruned: {pruned}")
            raise
        except KeyboardInterrupt:
            _end(run_id, "KILLED", "FAIL", "interrupted (Ctrl-C); rerun the sweep to continue")
            raise
        except BaseException as err:
            # SIGTERM, or an error its cleanup raised on the way up (an arm's run could not be closed)
            stopped = isinstance(err, Terminated) or sigterm_received()
            if not stopped:
                _end(run_id, "FAILED", "FAIL", f"{type(err).__name__}: {err}")
                raise
            without_frames(err)
        if stopped:  # closed here, outside the except block (see signals.without_frames)
            try:
                _end(run_id, "KILLED", "FAIL", "stopped by SIGTERM; rerun the sweep to continue")
            except Exception as err:  # stop anyway; the trial is failed by the runner all the same
                print(f"warning: could not close the runs of trial {trial.number} ({err})", flush=True)
            raise Terminated(128 + signal.SIGTERM)  # Optuna tells no end for SystemExit: the runner does
        # Also as objective_<metric>: sorted first in the compare view, the number that chose the winner.
        mlflow.log_metrics({spec.metric: value, objective_metric(spec.metric): value})
        _end(run_id, "FINISHED", "COMPLETE")
        return value

    def _run(self, trial: optuna.Trial, params: dict[str, Any], run_id: str) -> float:
        spec, ctx = self.ctx.spec, self.ctx
        config = pretrain_config(spec, params, ctx, trial.number)
        result = ranks.call_arm("pretrain", config, callback=_EpochReporter(trial, spec, run_id),
                                progress=ctx.progress)
        trial.set_user_attr("pretrain_run_id", result["run_id"])
        trial.set_user_attr("encoder_uri", result["encoder_uri"])
        mlflow.set_tags({"pretrain_run_id": result["run_id"], "encoder_uri": result["encoder_uri"]})
        if spec.objective == "reconstruction":
            # Pretraining has no validation reconstruction loss, and test_loss is on the test
            # split, which must never choose anything. train_eval_loss (fixed masks over
            # pretraining jets) is the reconstruction figure that touches neither val nor test.
            # It measures fit rather than generalisation; on short runs it tracked test_loss
            # within 1% (4 tiny pretrain runs checked), and test_loss stays in the run to look at.
            value = float(result["train_eval_loss"])
        else:
            scoring = downstream_config(spec, config, result["encoder_uri"], trial.number)
            scored = ranks.call_arm(spec.objective, scoring, progress=ctx.progress)
            trial.set_user_attr("downstream_run_id", scored["run_id"])
            mlflow.set_tag("downstream_run_id", scored["run_id"])
            value = float(scored[DOWNSTREAM_KEYS[spec.metric]])
        if not math.isfinite(value):
            raise TrialFailed(f"objective {spec.metric} is {value}")
        trial.set_user_attr("metric", spec.metric)
        return value


def _check_not_surplus(trial: optuna.Trial, n_trials: int) -> None:
    """Two workers that look at the study at the same moment can both start "the last" trial;
    the later one steps back before it costs anything (FAIL, not counted, no MLflow run)."""
    others = [t for t in trial.study.get_trials(deepcopy=False, states=_COUNTED) if t.number != trial.number]
    if len(others) >= n_trials:
        trial.set_user_attr("surplus", True)
        raise TrialFailed(f"surplus trial: the study already has {n_trials} finished or running trials")


_COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


class _EpochReporter:
    """Pretrain's per-epoch callback: curves into the trial run, the value to the pruner."""

    def __init__(self, trial: optuna.Trial, spec: SweepSpec, trial_run_id: str) -> None:
        self.trial, self.key, self.run_id = trial, spec.monitor_key, trial_run_id

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        # The active run here is the nested pretrain run: log to the trial run by id.
        curves = [Metric(k, float(metrics[k]), now, epoch) for k in CURVE_KEYS if k in metrics]
        if curves:
            mlflow.MlflowClient().log_batch(self.run_id, metrics=curves)
        value = metrics.get(self.key)
        if value is None or not math.isfinite(value):
            return  # nothing to prune on (e.g. probe_train_jets=0); the objective decides
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.key}={value:.4f}")


def _end(run_id: str, status: str, optuna_state: str, reason: str = "") -> None:
    """Close the trial run (the active one) with an honest status and the Optuna state."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, "optuna_state", optuna_state)
    if reason:
        client.set_tag(run_id, "end_reason", reason[:4000])
    # Normally the trial run is the only active run; an arm's run left open by an unexpected
    # error is closed too, or the next trial could not start its run under the parent.
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status=status)
        if active.info.run_id == run_id:
            return
    client.set_terminated(run_id, status=status)
