"""The sweep's MLflow parent run: one per study, found again when the sweep is rerun."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterator

import mlflow
import optuna
from mlflow.exceptions import MlflowException

from mae_tracker.signals import Terminated, sigterm_received
from mae_tracker.sweep.spec import ParamSpec, SweepSpec
from mae_tracker.sweep.storage import mask_password
from mae_tracker.train import tracking

PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: how workers (any machine) find the parent
STUDY_TAG = "sweep_study"


def find_parent(study: optuna.Study) -> str:
    """The parent run id recorded in the study (worker mode)."""
    run_id = parent_here(study)
    if not run_id:
        raise ValueError(f"study {study.study_name!r} has no MLflow parent run; start the sweep without --worker")
    return run_id


def parent_here(study: optuna.Study) -> str | None:
    """The study's parent run id, checked to be in the current tracking store (None: the study
    has none yet). A study whose parent is elsewhere has its trials' runs elsewhere too:
    continuing it here would train nothing it can report and would rank runs no one can open."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id:
        return None
    why = ""
    try:
        if mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage != "active":
            why = "was deleted from"
    except mlflow.exceptions.MlflowException:
        why = "is not in"
    if why:
        raise ValueError(f"study {study.study_name!r} belongs to MLflow parent run {run_id}, which {why} the "
                         f"tracking store {mlflow.get_tracking_uri()}: its trials' runs live elsewhere. Point "
                         "MLFLOW_TRACKING_URI at the store the sweep was started with, or start a new study "
                         "(--study-name, or another --storage)")
    return run_id


def wait_for_parent(study: optuna.Study, timeout: float) -> str | None:
    """The parent run id of a study another process has just created (it records the parent a
    moment after the study); None if none appears within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        run_id = parent_here(study)
        if run_id or time.monotonic() >= deadline:
            return run_id
        time.sleep(0.5)  # study.user_attrs reads the storage each time


def reopen(client: mlflow.MlflowClient, run_id: str) -> None:
    """Mark a continued parent run RUNNING; why it stopped last time no longer holds."""
    client.update_run(run_id, status="RUNNING")
    if "end_reason" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "end_reason")


def open_parent(study: optuna.Study, spec: SweepSpec, storage_url: str, new_study: bool = False) -> str:
    """Reuse the study's parent run (rerun = resume) or create it; mark it RUNNING. Call
    :func:`parent_here` first: a recorded parent must be in this tracking store. A new study
    gets a new parent, even where an old parent run of the same name is left in the store."""
    client = mlflow.MlflowClient()
    run_id = study.user_attrs.get(PARENT_ATTR) or (None if new_study else _by_tag(client, study, spec))
    masked = mask_password(storage_url)
    # `mlflow run . -e sweep` created a run before we started. Taken out of the environment here,
    # or mlflow.start_run() would resume it as the first trial's run.
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id is None:
        if launcher:  # the launcher's run becomes the parent: no empty run beside the sweep
            run_id = launcher
            for key, value in {STUDY_TAG: spec.name, "sweep_storage": masked, "arm": "sweep",
                               "mlflow.runName": spec.name}.items():
                client.set_tag(run_id, key, value)
            tracking.mark_model_training(client.get_run(run_id).info.experiment_id)
        else:
            run_id = client.create_run(tracking.ensure_experiment(spec.experiment), run_name=spec.name,
                                       tags={STUDY_TAG: spec.name, "sweep_storage": masked, "arm": "sweep"}).info.run_id
        study.set_user_attr(PARENT_ATTR, run_id)
    else:
        reopen(client, run_id)
        if launcher and launcher != run_id:  # a continued sweep: say where its trials are
            client.set_tag(launcher, "sweep_parent_run_id", run_id)
            client.set_tag(launcher, "mlflow.note.content", f"continues sweep {spec.name}: see parent run {run_id}")
    params = {"study": spec.name, "sampler": spec.method, "sampler_seed": spec.seed,
              "pruner": _pruner_text(spec), "objective": spec.objective, "metric": spec.metric,
              "goal": spec.goal, "n_trials": spec.n_trials,
              **{f"space.{name}": _space_text(p) for name, p in spec.parameters.items()}}
    # Params are immutable in MLflow: a rerun with --n-trials 5 keeps the first value as the
    # param and records the current request as a tag.
    existing = client.get_run(run_id).data.params
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()
                                     if k not in existing])
    client.set_tag(run_id, "sweep_n_trials", str(spec.n_trials))
    client.set_tag(run_id, "sweep_storage", masked)
    if spec.description:
        client.set_tag(run_id, "mlflow.note.content", spec.description)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(spec.text)
        client.log_artifact(run_id, str(path))
    return run_id


def _by_tag(client: mlflow.MlflowClient, study: optuna.Study, spec: SweepSpec) -> str | None:
    """A study without a recorded parent (its creator stopped before recording it): the latest
    active parent run of the same name in this store, recorded now."""
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.{STUDY_TAG} = '{spec.name}'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    if runs:
        study.set_user_attr(PARENT_ATTR, runs[0].info.run_id)
        return runs[0].info.run_id
    return None


@contextlib.contextmanager
def closing(run_id: str) -> Iterator[None]:
    """End the parent run honestly: FINISHED, KILLED on Ctrl-C or SIGTERM (rerun continues), FAILED
    on error."""
    client = mlflow.MlflowClient()
    stopped: BaseException | None = None
    try:
        yield
    except (KeyboardInterrupt, Terminated) as err:
        stopped = err
    except BaseException as err:
        if not sigterm_received():
            client.set_tag(run_id, "end_reason", f"{type(err).__name__}: {err}"[:4000])
            client.set_terminated(run_id, status="FAILED")
            raise
        stopped = Terminated(128 + signal.SIGTERM)  # what a cleanup on the way up made of the signal
    else:
        client.set_terminated(run_id, status="FINISHED")
        return
    how = "interrupted (Ctrl-C)" if isinstance(stopped, KeyboardInterrupt) else "stopped by SIGTERM"
    client.set_tag(run_id, "end_reason", f"{how}; rerun the same command to continue")
    client.set_terminated(run_id, status="KILLED")
    raise stopped


def _pruner_text(spec: SweepSpec) -> str:
    options = ",".join(f"{k}={v}" for k, v in spec.pruner_options.items())
    return f"{spec.pruner}({options})" if options else spec.pruner


def _space_text(p: ParamSpec) -> str:
    if p.distribution == "categorical":
        return f"categorical{list(p.values)}"
    step = f" step {p.step}" if p.step else ""
    log = " log" if p.log and p.distribution != "log_uniform" else ""
    return f"{p.distribution}[{p.low}, {p.high}]{step}{log}"


def set_parent_tag(client: mlflow.MlflowClient, run_id: str, key: str, value: str) -> None:
    """``client.set_tag`` on the sweep's parent run, which every worker writes when it finishes: two
    workers setting the same new tag at the same moment both insert it, and the second insert fails
    (SQLite "UNIQUE constraint failed", PostgreSQL "duplicate key"); the retry finds the row and
    updates it. Any other error is raised at once."""
    for attempt in range(4):
        try:
            client.set_tag(run_id, key, value)
            return
        except MlflowException as err:
            if attempt == 3 or not any(race in str(err) for race in ("UNIQUE constraint failed", "duplicate key")):
                raise
            time.sleep(0.05 * (attempt + 1))

