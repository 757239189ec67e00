"""Everything that talks to MLflow lives here, so the training loops stay readable."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator, TypeVar

# Artifact downloads print a progress bar per call; in a training log that is noise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# On a tracking server MLflow prints "🏃 View run <name> at: <url>" and "🧪 View experiment at:
# <url>" when a run ends (TrackingServiceClient._log_url); those URLs lack the UI's
# workflowType=machine_learning and open the GenAI view (Traces). Our commands print the run's
# link in the training view instead (ui_links, next_steps). Set the variable to false to get
# MLflow's lines back. Read by MLflow when each run ends, so setting it here is enough.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from mae_tracker.signals import Terminated, sigterm_as_exit, without_frames  # noqa: E402

ConfigT = TypeVar("ConfigT")

TRACKED_PACKAGES = ("mae-tracker", "torch", "timm", "numpy", "h5py", "mlflow", "optuna",
                    "scikit-learn", "pythia8mc", "fastjet")


def default_tracking_uri() -> str:
    """MLflow's own default (``mlflow.db`` in the working directory), made absolute so the
    store does not move when a command is started from elsewhere."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def configure_tracking() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow 3's UI opens an experiment in its GenAI view (traces, prompts) unless it is tagged as
# model training; a physicist should land on runs, metrics, images and models.
MODEL_TRAINING_KIND = "custom_model_development"


def ensure_experiment(name: str) -> str:
    """Id of the experiment ``name``, created if missing and tagged as model training.

    With a SQLite store MLflow would put a new experiment's artifacts under ``./mlruns`` of
    whatever directory the command runs in; we put them beside the database instead, so the
    results stay together wherever a command is started. A server store keeps its own
    (proxied) artifact location.
    """
    uri = configure_tracking()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel worker
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING_KIND:
            return experiment_id
    mark_model_training(experiment_id)
    return experiment_id


def mark_model_training(experiment_id: str) -> None:
    """Tag an experiment (e.g. one `mlflow run --experiment-name` created) as model training."""
    mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import torch  # the local build tag (+cpu, +cu130) matters for reproducing numbers

    versions["torch"] = torch.__version__
    return versions


def git_commit() -> str:
    """Commit of the source tree mae_tracker runs from, '+dirty' if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str = "", resume_run_id: str = "",
                tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume) a run and always close it with an honest status.

    If a run is active in this thread (a sweep trial, a label-efficiency grid), the arm's
    run is nested under it, in the same experiment. Under ``mlflow run`` the launcher has
    already created the run (MLFLOW_RUN_ID), and we join it. Errors end the run FAILED;
    Ctrl-C, SIGTERM (a batch scheduler's time limit, ``kill``) and a pruned sweep trial end it
    KILLED: no run stays RUNNING, and none that stopped early looks finished.
    """
    import optuna

    configure_tracking()
    system = system_metrics_settings()
    active = mlflow.active_run()
    if resume_run_id:
        run = start_existing_run(resume_run_id, nested=active is not None, log_system_metrics=system)
    elif active is not None:
        run = mlflow.start_run(experiment_id=active.info.experiment_id, run_name=run_name or None, nested=True,
                               log_system_metrics=system)
    elif os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` names its runs at random: give ours
        run = mlflow.start_run(log_system_metrics=system)
        if run_name:
            mlflow.set_tag("mlflow.runName", run_name)
        mark_model_training(run.info.experiment_id)
    else:
        run = mlflow.start_run(experiment_id=ensure_experiment(experiment), run_name=run_name or None,
                               log_system_metrics=system)
    stopped: tuple[BaseException, str] | None = None
    try:
        with sigterm_as_exit():
            if tags:
                mlflow.set_tags(tags)
            yield run
    # A signal can land inside an MLflow call whose frames (kept by the traceback) hold the SQLite
    # store's read lock: drop them and end the run outside the except block, or it waits and fails.
    except Terminated as err:
        stopped = (without_frames(err), "stopped by SIGTERM; resume with --resume " + run.info.run_id)
    except KeyboardInterrupt as err:
        stopped = (without_frames(err), "interrupted (Ctrl-C); resume with --resume " + run.info.run_id)
    except optuna.TrialPruned:
        _end_run("KILLED", "pruned")
        raise
    except BaseException as err:
        _end_run("FAILED", f"{type(err).__name__}: {err}"[:4000])
        raise
    else:
        mlflow.end_run(status="FINISHED")
    if stopped is not None:
        _end_run("KILLED", stopped[1])
        raise stopped[0]


def _end_run(status: str, reason: str) -> None:
    """Tag why the active run stopped and end it with ``status``, whatever signal arrives meanwhile.

    Under torchrun the surviving ranks get SIGTERM just as their collectives fail. A signal
    handler that raises inside these MLflow writes would abort them, and MLflow's exit hook
    would then close the still-active run as FINISHED. So the signals wait until the run is
    ended, then take effect."""
    with _signals_deferred():
        try:
            mlflow.set_tag("end_reason", reason)
        finally:
            mlflow.end_run(status=status)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT that arrive inside the block are delivered when it ends."""
    if threading.current_thread() is not threading.main_thread():  # handlers run on the main thread only
        yield
        return
    pending: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    previous = {signum: handler for signum, handler in previous.items() if handler is not None}  # None: not Python's
    for signum in previous:
        signal.signal(signum, lambda number, _frame: pending.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def start_existing_run(run_id: str, nested: bool = False, log_system_metrics: bool | None = None
                       ) -> mlflow.ActiveRun:
    """``mlflow.start_run(run_id=...)``, also when the caller made another experiment active
    (``mlflow.set_experiment``), which MLflow refuses: the run's own experiment becomes active."""
    try:
        return mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=log_system_metrics)
    except mlflow.exceptions.MlflowException as err:
        if "active experiment ID does not match" not in str(err):
            raise
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    return mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=log_system_metrics)


SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's default; a one-minute run still gets ~6 samples


def system_metrics_settings() -> bool:
    """Whether the run about to start samples CPU, memory, disk, network (and GPU) as
    ``system/...`` metrics: on unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says false, and only
    where psutil is installed (MLflow needs it; pynvml / nvidia-ml-py adds the GPU metrics).

    MLflow's sampler is a daemon thread per run; ``mlflow.end_run`` (every exit of
    :func:`tracked_run`) stops and joins it, so none outlives its run. It publishes a sample every
    SYSTEM_METRICS_INTERVAL_S (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it); a run shorter
    than that logs none. Under torchrun only rank 0 opens the run (train/distributed.py), so
    only rank 0's process samples: its metrics are ``system/rank0/...`` (MLflow's node id), and
    the other ranks' host load is not recorded (on one node the CPU and memory figures are the
    node's; the GPU metrics cover every GPU MLflow sees)."""
    flag = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per run
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not os.environ.get("MLFLOW_SYSTEM_METRICS_NODE_ID"):
        mlflow.set_system_metrics_node_id(f"rank{os.environ.get('RANK', '0')}")
    return True


def resumed_config(config: ConfigT) -> ConfigT:
    """The interrupted run's own config (from its config.json), so ``--resume <run_id>`` alone
    continues exactly the same experiment; only where checkpoints live may change."""
    if not config.resume:
        return config
    configure_tracking()
    try:
        saved = mlflow.artifacts.load_dict(f"runs:/{config.resume}/config.json")
    except Exception as err:  # MLflow raises several types for an unknown run
        raise ValueError(f"cannot resume run {config.resume!r}: {str(err).splitlines()[0]}") from err
    saved.update(resume=config.resume, checkpoint_dir=config.checkpoint_dir or saved.get("checkpoint_dir", ""))
    return type(config).from_dict(saved)


def log_params_once(params: dict[str, Any]) -> None:
    """Log params, skipping keys the run already has.

    ``mlflow run -P key=value`` logs its parameters itself, as strings, and MLflow refuses
    to log a key again with another spelling ("1e-3" vs "0.001"); a resumed run has them too.
    """
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    fresh = {k: _param_str(v) for k, v in params.items() if k not in existing}
    for start in range(0, len(fresh), 100):  # MLflow's batch limit is 100 params
        mlflow.log_params(dict(list(fresh.items())[start:start + 100]))


def _param_str(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)


def log_provenance(config: dict[str, Any], data_path: Path, data_digest: str, split_sizes: dict[str, int],
                   contexts: dict[str, int], dataset: dict[str, Any] | None = None) -> None:
    """Config, seed, data + digest, split sizes, package versions and git commit.

    ``dataset`` (``RunData.provenance()``): its files (one MLflow dataset input each, context
    ``file``, with path, sha256 and jets as tags; all of them in ``dataset.json``), ``n_files``,
    ``split_scheme`` and, for one-class-per-file datasets, the class balance of every split
    (params ``class_balance_<split>``)."""
    log_params_once(config)
    log_params_once({f"split_{name}": size for name, size in split_sizes.items()})
    dataset = dataset or {}
    files = list(dataset.get("files", []))
    if dataset:
        log_params_once({"n_files": len(files), "split_scheme": dataset.get("split_scheme", ""),
                         **{f"class_balance_{split}": " / ".join(f"{n} {name}" for name, n in counts.items())
                            for split, counts in (dataset.get("class_balance") or {}).items()}})
        mlflow.log_dict(dataset, "dataset.json")
    mlflow.set_tags({"data_path": str(data_path), "data_sha256": data_digest,
                     "git_commit": git_commit(), "seed": str(config.get("seed"))})
    mlflow.set_tags({f"version.{k}": v for k, v in package_versions().items()})
    mlflow.log_dict(config, "config.json")
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow stores at most 36 characters of a dataset digest; the full sha256 is a tag.
    whole = MetaDataset(source=_dataset_source(data_path), name=data_path.name, digest=data_digest[:32])
    for context, size in contexts.items():
        mlflow.log_input(whole, context=context, tags={"jets": str(size), "n_files": str(len(files) or 1)})
    inputs = []
    for record in files[:MAX_FILE_INPUTS]:  # the rest are in dataset.json
        path = Path(record["path"])
        inputs.append((MetaDataset(source=_dataset_source(path), name=path.name, digest=record["sha256"][:32]),
                       "file", {"path": str(path), "sha256": record["sha256"], "jets": str(record["n_jets"])}))
    if inputs:
        mlflow.log_inputs(datasets=[d for d, _, _ in inputs], contexts=[c for _, c, _ in inputs],
                          tags_list=[t for _, _, t in inputs])


MAX_FILE_INPUTS = 500  # per-file dataset inputs of one run; every file is in its dataset.json


def _dataset_source(path: Path) -> Any:
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(str(path.resolve()))


class MetricBuffer:
    """Collect step-level metrics and send them in one batch: a SQLite store takes ~260
    single log_metric calls per second, but thousands per second in a batch."""

    def __init__(self) -> None:
        self._metrics: list[Metric] = []

    def add(self, key: str, value: float, step: int) -> None:
        self._metrics.append(Metric(key, float(value), int(time.time() * 1000), step))

    def flush(self) -> None:
        run = mlflow.active_run()
        if self._metrics and run is not None:
            client = mlflow.MlflowClient()
            for start in range(0, len(self._metrics), 1000):
                client.log_batch(run.info.run_id, metrics=self._metrics[start:start + 1000])
        self._metrics = []


def log_figure(fig: Any, artifact_file: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def log_table(columns: dict[str, Any], artifact_file: str) -> None:
    """Log equal-length columns as a CSV artifact (readable by pandas and by a person)."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        pd.DataFrame(columns).to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=str(Path(artifact_file).parent).strip(".") or None)
