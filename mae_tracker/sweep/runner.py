"""Run a sweep: the study and the parent run first, then trials in this process or in workers.

Every invocation works toward the same goal: ``n_trials`` finished (COMPLETE or PRUNED)
trials in the study. That single rule gives resumption (rerun the same command), several
workers on one study, and machines joining through ``--worker`` for free.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import mlflow
import optuna
from optuna.trial import TrialState

from mae_tracker.data.errors import DataError
from mae_tracker.data.files import absolute_spec, resolve_files
from mae_tracker.signals import Terminated, sigterm_as_exit, sigterm_received, without_frames
from mae_tracker.sweep import binding, ranks
from mae_tracker.sweep import parent as parent_run
from mae_tracker.sweep.objective import Objective, TrialContext
from mae_tracker.sweep.sampling import PerTrialSeedSampler, make_pruner
from mae_tracker.sweep.spec import SweepSpec, load_spec
from mae_tracker.sweep.summary import summarize
from mae_tracker.sweep.storage import STORAGE_ENV, make_storage, mask_password, resolve_storage_url, sqlite_path
from mae_tracker.train import distributed, tracking
from mae_tracker.ui_links import run_where

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PARENT_WAIT_S = 30  # how long a process that did not create a new study waits for its parent run
Echo = Callable[[str], None]


def _echo(line: str) -> None:
    print(line, flush=True)


def run_sweep(spec_path: str | Path, *, storage: str | None = None, study_name: str | None = None,
              n_trials: int | None = None, n_workers: int = 1, data: str | None = None,
              progress: bool = False, worker: bool = False, num_threads: int = 0,
              pruner: optuna.pruners.BasePruner | None = None, echo: Echo = _echo) -> dict[str, Any]:
    """Run (or continue) the sweep described by the YAML at ``spec_path``.

    The YAML is validated before anything is written. The study (``storage``, else
    $MAE_TRACKER_OPTUNA_STORAGE, else the tracking store's own: optuna.db beside a SQLite store,
    a file keyed by the URI of a server) and one MLflow parent run are created or reused; a
    study made on other data or another split, or whose parent run is not in this tracking
    store, is refused first. Then trials run until ``n_trials`` of them finished (COMPLETE or
    PRUNED) - in this process, or in ``n_workers`` worker processes sharing the CPU cores. At
    the end the parent run gets the best trial, figures and trials.csv, and the best encoder is
    promoted if the YAML says ``promote: true``. ``worker=True`` only runs trials of an existing
    sweep (how other machines join). ``pruner`` replaces the YAML's pruner (for library use).

    Returns a summary: study, storage (password masked), parent_run_id, counts per state, and
    best_trial / best_value / best_params when a trial completed.
    """
    spec = load_spec(spec_path)
    changes: dict[str, Any] = {}
    if study_name:
        changes["name"] = study_name
    if n_trials is not None:
        if n_trials < 1:
            raise ValueError(f"--n-trials must be >= 1, got {n_trials}")
        changes["n_trials"] = n_trials
    if data:
        changes["fixed"] = {**spec.fixed, "data": absolute_spec(data)}  # file, folder, glob or comma list
    spec = spec.with_overrides(**changes)
    if n_workers < 1:
        raise ValueError(f"--n-workers must be >= 1, got {n_workers}")
    if distributed.launched_by_torchrun():
        if n_workers > 1 or worker:
            raise ValueError("--n-workers and --worker do not combine with torchrun: the ranks of a torchrun "
                             "job train each trial together (start more torchrun jobs to run trials side by side)")
        if not distributed.init(spec.fixed.get("device", "auto")).is_main:
            ranks.follow()  # train each trial with rank 0 until the sweep is done
            return {"rank": distributed.context().rank}
    tracking_uri = tracking.configure_tracking()
    url = resolve_storage_url(storage, tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print
    # SIGTERM (a scheduler's time limit, `kill`) unwinds like Ctrl-C: the trial ends FAIL at
    # once, its runs and the parent KILLED.
    with sigterm_as_exit():
        if worker:
            path = sqlite_path(url)
            if path is not None and not path.exists():  # do not create an empty database by asking
                raise ValueError(f"no Optuna storage at {path}; start the sweep without --worker first")
            data = data_binding(spec, progress)
            storage_obj = _storage(spec, url)
            study = _load_study(spec, url, storage_obj)
            parent_id = parent_run.find_parent(study)  # in this tracking store, or refused
            binding.check_same_data(study, data, str(spec.path), mask_password(url))
            run_trials(study, storage_obj, spec, parent_id, num_threads=num_threads,
                       progress=progress, pruner=pruner, echo=echo)
            return summarize(study, spec, url, parent_id)

        # The data is checked (and the default dataset generated) before the study exists: a
        # missing file must not turn into n_trials failed trials, nor N workers generating it.
        data = data_binding(spec, progress)
        storage_obj = _storage(spec, url)
        study, created = _open_study(spec, url, storage_obj, data)
        parent_id = parent_run.open_parent(study, spec, url, new_study=created)
        echo(f"sweep {spec.name}: {spec.n_trials} trials ({spec.method}, pruner {spec.pruner}, objective "
             f"{spec.objective}) in {mask_password(url)}; MLflow parent run {parent_id}")
        echo(f"[{spec.name}] view the sweep: {run_where(parent_id)}")
        if sqlite_path(url) is not None:
            echo(f"[{spec.name}] Optuna's view: optuna-dashboard {url}")
        with ranks.leading(), parent_run.closing(parent_id):
            if n_workers > 1:
                _spawn_workers(spec, url, n_workers, progress)
            # Alone, or after the workers: finish what is left (trials of workers that died, or
            # still running on other machines), so the report below covers the whole study.
            run_trials(study, storage_obj, spec, parent_id, num_threads=num_threads, progress=progress,
                       pruner=pruner, wait=True, echo=echo)
            from mae_tracker.sweep.outcome import finish

            return finish(study, spec, url, parent_id, echo=echo)


def _open_study(spec: SweepSpec, url: str, storage: optuna.storages.BaseStorage,
                data: binding.DataBinding) -> tuple[optuna.Study, bool]:
    """Create the study, or load it and check it may be continued here, before anything is
    written: same direction, same data and split, its parent run in this tracking store.

    Creation is atomic in the storage: of several processes started together on a new study,
    exactly one creates it (and binds the data, then records the parent run); the others load
    it and wait for the parent, so all share one parent run."""
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.goal)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    else:
        study.set_metric_names([spec.metric])  # optuna-dashboard shows val_auc, not "Objective 0"
        binding.bind(study, data)
        return study, True
    if study.direction.name.lower() != spec.goal:
        raise ValueError(f"study {spec.name!r} in {mask_password(url)} {study.direction.name.lower()}s; "
                         f"the YAML says {spec.goal} (use another name)")
    # parent_here refuses a study whose parent run is in another tracking store.
    if parent_run.parent_here(study) is None and not study.get_trials(deepcopy=False):
        parent_run.wait_for_parent(study, timeout=PARENT_WAIT_S)  # its creator is recording it
    bound = binding.check_same_data(study, data, str(spec.path), mask_password(url))
    if bound is None:  # made by a version that did not bind, or its creator stopped early
        binding.bind(study, data)
    if study.metric_names is None:  # made by a version that did not name its objective
        study.set_metric_names([spec.metric])
    return study, False


def check_continuable(spec: SweepSpec, data: binding.DataBinding, storage: str | None = None) -> None:
    """Raise ValueError where :func:`run_sweep` would refuse to continue the sweep's study (made
    on other data or another split, or its parent run in another tracking store); writes
    nothing. For callers that write something of their own before the sweep (the study)."""
    url = resolve_storage_url(storage, tracking.configure_tracking())
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return
    try:
        study = optuna.load_study(study_name=spec.name, storage=_storage(spec, url))
    except KeyError:
        return
    parent_run.parent_here(study)
    binding.check_same_data(study, data, str(spec.path), mask_password(url))


def _storage(spec: SweepSpec, url: str) -> optuna.storages.RDBStorage:
    return make_storage(url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
                        max_retry=spec.max_retry)


def _load_study(spec: SweepSpec, url: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        raise ValueError(f"no study {spec.name!r} in {mask_password(url)}; start the sweep without --worker first"
                         ) from None


def data_binding(spec: SweepSpec, progress: bool = False) -> binding.DataBinding:
    """Validate the trials' data file (DataError on a bad one; the default dataset is generated
    if missing) and say what it is: path, sha256 and the split of ``spec.fixed``."""
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.data import prepare_data

    if spec.fixed.get("data"):  # a file, folder, glob or list; the study binds to its dataset digest
        try:
            resolve_files(spec.fixed["data"])
        except DataError as err:
            raise FileNotFoundError(f"{spec.path}: fixed.data: no such file or no data files: {err}") from None
    config = PretrainConfig(**spec.fixed)
    prepared = prepare_data(config, progress=progress)
    return binding.DataBinding(str(Path(prepared.path).resolve()), prepared.digest,
                               binding.split_text(config.to_dict()))


def _remaining(study: optuna.Study, spec: SweepSpec, sampler: PerTrialSeedSampler) -> int:
    """Trials still to start: running ones (other workers) will finish and count."""
    if sampler.is_exhausted(study):
        return 0
    started = len(study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,)))
    return spec.n_trials - started


def run_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, spec: SweepSpec, parent_id: str, *,
               num_threads: int = 0, progress: bool = False,
               pruner: optuna.pruners.BasePruner | None = None, wait: bool = False, echo: Echo = _echo) -> None:
    """Run trials in this process until the study has ``spec.n_trials`` finished trials
    (Optuna's MaxTrialsCallback counts only after a trial ends; counting running trials
    before starting one keeps several workers from overshooting).

    With ``wait``, also wait for trials running elsewhere: a live worker's trial finishes and
    is reported; a dead one's heartbeat goes stale, it is failed, and its retry runs here.
    Each trial draws with its own seed (sampling.py), whichever worker runs it.
    """
    sampler = PerTrialSeedSampler(spec)
    study = optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler,
                              pruner=pruner or make_pruner(spec))
    # Trials live where their parent lives (under `mlflow run`, the launcher's experiment).
    experiment_id = mlflow.MlflowClient().get_run(parent_id).info.experiment_id
    objective = Objective(TrialContext(spec, experiment_id, parent_id, progress=progress, num_threads=num_threads))
    on_finish = ProgressLine(spec, parent_id, echo)
    failures, waited = 0, False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # before counting: dead trials are not running
        if _remaining(study, spec, sampler) <= 0:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not wait or not running:
                return
            if not waited:
                echo(f"[{spec.name}] waiting for trial(s) {', '.join(str(t.number) for t in running)} running "
                     f"elsewhere (a dead worker's trial is failed after the {spec.grace_period} s heartbeat grace)")
            waited = True
            time.sleep(spec.heartbeat_interval)
            continue
        # A trial that raises (NaN loss, bad combination of settings) is marked FAIL and the
        # study goes on; a budget of n_trials failures stops a sweep that can only fail.
        if failures >= spec.n_trials:
            echo(f"sweep {spec.name}: stopping this worker after {failures} failed trials")
            return
        stopped = False
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[on_finish])
        except BaseException as err:
            if not (isinstance(err, Terminated) or sigterm_received()):
                raise
            stopped = True
            without_frames(err)
        if stopped or sigterm_received():  # (Optuna catches what a cleanup made of the signal)
            _fail_stopped_trial(study, sampler.last_trial)
            raise Terminated(128 + signal.SIGTERM)
        failures += on_finish.last_failed


def _fail_stopped_trial(study: optuna.Study, number: int | None) -> None:
    """SIGTERM mid-trial: Optuna tells a trial's end only for errors and Ctrl-C, so this trial
    would stay RUNNING until a later worker found its heartbeat stale. Fail it now."""
    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is not None and trial.state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL)


class ProgressLine:
    """One line per finished trial: number, params, value, state, best so far; the value also
    goes onto the parent run as a metric stepped by trial number."""

    def __init__(self, spec: SweepSpec, parent_id: str, echo: Echo) -> None:
        self.spec, self.parent_id, self.echo = spec, parent_id, echo
        self.last_failed = False  # a real failure; a surplus trial (see objective) is not one

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        surplus = bool(trial.user_attrs.get("surplus"))
        self.last_failed = trial.state == TrialState.FAIL and not surplus
        if surplus:
            return
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        value = f"{self.spec.metric}={_fmt(trial.value)}" if trial.value is not None else "no value"
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"{self.spec.monitor_key}={_fmt(trial.intermediate_values[step])} at epoch {step}"
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = "none yet"
        if complete:
            pick = max if self.spec.goal == "maximize" else min
            top = pick(complete, key=lambda t: t.value)
            best = f"{_fmt(top.value)} (trial {top.number})"
        self.echo(f"[{self.spec.name}] trial {trial.number} | {params} | {value} | {trial.state.name} | best {best}")
        if trial.state == TrialState.COMPLETE:
            mlflow.MlflowClient().log_metric(self.parent_id, f"trial_{self.spec.metric}", trial.value,
                                             step=trial.number)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _spawn_workers(spec: SweepSpec, url: str, n_workers: int, progress: bool) -> None:
    """N worker processes on the study, each with an equal share of the CPU cores."""
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    # The storage URL travels in the environment, not argv: `ps` would show a password.
    env.update({STORAGE_ENV: url, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
                "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    base = [sys.executable, "-m", "mae_tracker.sweep", str(spec.path), "--worker", "--study-name", spec.name,
            "--n-trials", str(spec.n_trials), "--threads", str(threads),
            "--progress" if progress else "--no-progress"]
    if spec.fixed.get("data"):
        base += ["--data", spec.fixed["data"]]
    procs = [subprocess.Popen(base, env=env) for _ in range(n_workers)]
    try:
        codes = [proc.wait() for proc in procs]
    except Terminated:  # sent to this process alone (a scheduler, `kill`): stop the workers too
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
        raise
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the workers too (same process group); a SIGINT sent to
        # this process alone does not, so pass it on to any worker still going after a moment.
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait()
        raise
    failed = [f"worker {i} exited {code}" for i, code in enumerate(codes) if code != 0]
    if failed:
        print(f"warning: {'; '.join(failed)}; finished trials are kept, rerun to continue", flush=True)
