"""Where a study lives (an Optuna RDB), and what happens to a trial whose process died."""

from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import optuna
import sqlalchemy.exc

from mae_tracker.paths import cache_dir

STORAGE_ENV = "MAE_TRACKER_OPTUNA_STORAGE"
STORAGE_FILE = "optuna.db"
SCHEMA_RACE_ATTEMPTS = 5
# What SQLite and PostgreSQL say when another process created the same table or row first.
SCHEMA_RACE_MESSAGES = ("already exists", "UNIQUE constraint failed", "duplicate key value")


def mask_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``: storage URLs
    are logged as tags and printed, and a team database password must not be."""
    return re.sub(r"(?<=://)([^/:@]*):[^/@]*@", r"\1:***@", url)


def default_storage_url(tracking_uri: str) -> str:
    """The study's storage belongs to the tracking store its runs go to: a SQLite file beside a
    SQLite (or file) MLflow store, so a sweep's two databases travel together; for a tracking
    server or a database store, a SQLite file in ``$MAE_TRACKER_CACHE/optuna/`` keyed by the
    tracking URI (a team shares a study through ``--storage`` / $MAE_TRACKER_OPTUNA_STORAGE)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme == "sqlite" and tracking_uri.startswith("sqlite:///"):
        db = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
        if db and db != ":memory:":
            return f"sqlite:///{(Path(db).parent / STORAGE_FILE).resolve()}"
    elif parts.scheme in ("", "file") and not tracking_uri.startswith(("databricks", "uc")):
        # a file store directory (path or file:// URI); bare "databricks" is MLflow's remote store
        return f"sqlite:///{(Path(parts.path).parent / STORAGE_FILE).resolve()}"
    return f"sqlite:///{(cache_dir() / 'optuna' / f'{store_key(tracking_uri)}.db').resolve()}"


def store_key(tracking_uri: str) -> str:
    """A file name for a tracking store: readable host and port, and a hash of the whole URI
    without its credentials (``http-127.0.0.1-5000-3f2a9c0d1e``); never a password."""
    parts = urlsplit(tracking_uri.strip())
    host = (parts.hostname or "").lower()
    netloc = host + (f":{parts.port}" if parts.port else "")
    identity = f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
    readable = re.sub(r"[^A-Za-z0-9.]+", "-", f"{parts.scheme}-{host}-{parts.port or ''}-{parts.path}")
    readable = re.sub(r"-+", "-", readable).strip("-.")[:60] or "store"
    return f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def resolve_storage_url(explicit: str | None, tracking_uri: str) -> str:
    """``--storage`` wins, then ``$MAE_TRACKER_OPTUNA_STORAGE``, then the default file."""
    return explicit or os.environ.get(STORAGE_ENV) or default_storage_url(tracking_uri)


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


def make_storage(url: str, *, heartbeat_interval: int, grace_period: int, max_retry: int
                 ) -> optuna.storages.RDBStorage:
    """The study's RDB storage with a heartbeat: a trial whose process stops beating for
    ``grace_period`` seconds is marked FAIL by the next worker that starts a trial (and its
    MLflow runs closed), then queued again up to ``max_retry`` times."""
    path = sqlite_path(url)
    engine_kwargs = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several workers write to one file; wait for the lock instead of failing at 5 s.
        engine_kwargs = {"connect_args": {"timeout": 60}}

    def open_storage() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # heartbeat options are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                grace_period=grace_period, heartbeat_stale_trial_callback=StaleTrialCallback(max_retry))

    # Optuna creates the schema on first use without a lock: two processes opening a new
    # database together (a leader and a worker, or two team members) both try, and the slower
    # one fails on a table or version row the other just wrote. Its retry finds the schema
    # there and only reads it.
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS):
        try:
            return open_storage()
        except sqlalchemy.exc.DBAPIError as err:
            if not any(message in str(err) for message in SCHEMA_RACE_MESSAGES):
                raise
            time.sleep(0.2 * attempt)
    return open_storage()


class StaleTrialCallback:
    """Runs when a trial's heartbeat went stale: its process died (SIGKILL, OOM, lost node).

    Optuna has already marked the trial FAIL; the dead process could not close its MLflow
    runs, so they would stay RUNNING forever. Close them FAILED, then queue the trial's
    parameters again (Optuna's RetryHeartbeatStaleTrialCallback, which replaced the older
    RetryFailedTrialCallback name).
    """

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            _fail_run_tree(run_id, f"trial {trial.number}: its worker stopped sending heartbeats "
                                   "(process killed or lost); marked failed by another worker")
        if self.max_retry > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)


def _fail_run_tree(run_id: str, reason: str) -> None:
    """End a run and its still-running descendants FAILED (best effort: the study matters more)."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
        pending = [run]
        while pending:
            current = pending.pop()
            children = client.search_runs(
                [current.info.experiment_id], f"tags.mlflow.parentRunId = '{current.info.run_id}'")
            pending.extend(children)
            if current.info.status == "RUNNING":
                client.set_tag(current.info.run_id, "end_reason", reason)
                if current.info.run_id == run_id:
                    client.set_tag(run_id, "optuna_state", "FAIL")
                client.set_terminated(current.info.run_id, status="FAILED")
    except mlflow.exceptions.MlflowException as err:
        print(f"warning: could not close the MLflow runs of a dead trial ({err})", flush=True)
