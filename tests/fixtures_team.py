"""Team-scale fixtures: a real PostgreSQL (Debian's package) and a real MLflow tracking server
on it, both on free loopback ports in temporary folders, stopped afterwards.

Load with ``pytest_plugins = ["fixtures_team"]`` in a test module: the fixtures are then
session-wide, so every team test shares one database server and one MLflow server.

Outside CI a missing Debian package (postgresql, chromium) or Python package (psycopg,
playwright) skips with the command that installs it; in CI (CI=true) it fails, since
.ci/run installs them through scripts/setup.sh.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

# Trust authentication ignores it, but every URL carries a password, so tests can check
# that none leaks into output, params or tags.
DB_PASSWORD = "pw-team-secret-42"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (developer machine) or fail (CI) when a system component is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI installs it through scripts/setup.sh)", pytrace=False)
    pytest.skip(f"{reason}; install with: bash scripts/setup.sh")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def driver() -> str:
    """SQLAlchemy driver name: psycopg (3) when installed, else psycopg2."""
    import importlib.util

    if importlib.util.find_spec("psycopg"):
        return "psycopg"
    if importlib.util.find_spec("psycopg2"):
        return "psycopg2"
    return ""


@dataclass
class Postgres:
    host: str
    port: int
    datadir: Path
    logfile: Path

    def url(self, database: str, *, scheme: str = "") -> str:
        scheme = scheme or f"postgresql+{driver()}"
        return f"{scheme}://postgres:{DB_PASSWORD}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user="postgres", dbname=database) as conn:
            return conn.execute(sql, params).fetchall()


def _as_postgres_user() -> dict[str, Any]:
    """PostgreSQL refuses to run as root: demote to the postgres user when we are root."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return {"preexec_fn": demote}


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port> (initdb --auth=trust, ~2 s)."""
    bindir = pg_bindir()
    require(bindir is not None, "PostgreSQL is not installed (Debian package postgresql)")
    require(bool(driver()), "no PostgreSQL driver for SQLAlchemy: pip install 'psycopg[binary]'")
    # Not under pytest's tmp dir: that one is private to root (0700) and postgres must enter it.
    root = Path(tempfile.mkdtemp(prefix="mae-pg-"))
    root.chmod(0o755)
    demote = _as_postgres_user()
    if demote:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    datadir, logfile, port = root / "data", root / "postgres.log", free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    subprocess.run([str(bindir / "initdb"), "-D", str(datadir), "--auth=trust", "-U", "postgres", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, env=env, cwd=root, **demote)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200"
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(logfile), "-o", options, "-w", "-t", "60",
                    "start"], check=True, capture_output=True, env=env, cwd=root, **demote)
    try:
        yield Postgres("127.0.0.1", port, datadir, logfile)
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                       capture_output=True, env=env, cwd=root, **demote)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Server:
    url: str
    artifacts: Path
    log: Path
    backend_url: str
    handle: Any


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mae-tracker server` on PostgreSQL with a proxied local artifact folder."""
    from mae_tracker.server.launch import ServerSettings, TeamServer

    root = tmp_path_factory.mktemp("team-server")
    backend = postgres.create_database("mlflow")
    log = root / "server.log"
    settings = ServerSettings(backend_store_uri=backend, artifacts_destination=str(root / "artifacts"),
                              port=free_port(), workers=2)
    team = TeamServer(settings, log_path=log)
    try:
        team.wait_ready(timeout=180)
    except RuntimeError as err:
        raise RuntimeError(f"{err}\n{log.read_text()[-3000:]}") from None
    try:
        yield Server(team.url, root / "artifacts", log, backend, team)
    finally:
        team.stop(timeout=3)


@contextlib.contextmanager
def tracking_to(url: str) -> Iterator[None]:
    """Point this process (env + mlflow's global) at ``url``; restore both afterwards."""
    import mlflow

    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
        mlflow.set_tracking_uri(saved_uri)


@pytest.fixture
def on_server(mlflow_server: Server) -> Iterator[Server]:
    """This test's MLflow calls go to the team server."""
    with tracking_to(mlflow_server.url):
        yield mlflow_server


def client_env(url: str, **extra: str) -> dict[str, str]:
    """Environment of a client process started as a user would on another machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    env.update({"MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra})
    return env


def popen(args: list[str], env: dict[str, str], cwd: Path, **kwargs: Any) -> subprocess.Popen:
    """A Python client process with default SIGINT handling, in its own process group."""
    return subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_export_line(proc: subprocess.Popen, url: str, lines: list[str]) -> None:
    """Read a starting `mae-tracker server`'s output (into ``lines``) until it prints the URL to
    export; fails if the process exits first."""

    def exported() -> bool:
        line = proc.stdout.readline()
        lines.append(line)
        return f"export MLFLOW_TRACKING_URI={url}" in line or proc.poll() is not None

    wait_for(exported, 180, "the server's export line", interval=0)
    assert proc.poll() is None, "".join(lines)[-3000:]


# --------------------------------------------------------------------------- one team's day

TEAM_EXPERIMENT = "team-tests"


def write_team_spec(path: Path, jets_file: Path, name: str, **changes: Any) -> Path:
    """A tiny sweep YAML (1-epoch trials of ~500 jets, 64-jet probe monitor)."""
    import yaml

    spec: dict[str, Any] = {
        "name": name, "experiment": TEAM_EXPERIMENT, "method": "random", "seed": 0, "n_trials": 2,
        "metric": {"name": "val_auc", "goal": "maximize"}, "objective": "probe", "pruner": {"type": "none"},
        "parameters": {"mask_ratio": {"distribution": "uniform", "min": 0.5, "max": 0.9}},
        "fixed": {"data": str(jets_file), "epochs": 1, "batch_size": 32, "depth": 2, "probe_train_jets": 64,
                  "probe_val_jets": 64, "eval_jets": 64, "image_every": 0, "image_jets": 1, "num_threads": 1},
        "downstream": {"epochs": 1, "batch_size": 32},
        "heartbeat": {"interval": 1, "grace_period": 3, "max_retry": 1},
        "promote": False,
    }
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def study_ready(storage: str, name: str) -> bool:
    """The study exists and carries its MLflow parent run id (what a --worker needs)."""
    import optuna

    try:
        return bool(optuna.load_study(study_name=name, storage=storage).user_attrs.get("mlflow_parent_run_id"))
    except Exception:  # noqa: BLE001 - not created yet (KeyError), tables being created
        return False


@dataclass
class TeamDay:
    pretrain_run_id: str
    encoder_uri: str
    storage: str
    study: str
    parent_run_id: str
    promotion: Any
    main_out: str
    worker_out: str
    seconds: dict[str, float]


@pytest.fixture(scope="session")
def team_day(mlflow_server: Server, postgres: Postgres, jets_file: Path,
             tmp_path_factory: pytest.TempPathFactory) -> TeamDay:
    """A tiny pretrain, a 2-trial sweep run by two processes started separately (the first
    creates the study, the second joins with --worker, as from another machine), both on the
    team server with the study in PostgreSQL, then a promotion. Shared by the end-to-end and
    the UI tests."""
    import optuna

    from mae_tracker.registry.promotion import promote
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("team-day")
    seconds: dict[str, float] = {}
    with tracking_to(mlflow_server.url):
        start = time.monotonic()
        # probe jets enough for a validation AUC whose interval clears chance (promotion's floor):
        # 0.822 [0.739, 0.904] measured with 300/100, where 64/64 gave 0.600 [0.458, 0.742];
        # image_jets=8 (the default): the grid test_ui screenshots for the docs
        result = pretrain(PretrainConfig(data=str(jets_file), epochs=1, batch_size=32, depth=2, probe_train_jets=300,
                                         probe_val_jets=100, eval_jets=64, image_jets=8, num_threads=1,
                                         experiment=TEAM_EXPERIMENT, checkpoint_dir=str(root / "ckpt")),
                          progress=False)
        seconds["pretrain"] = time.monotonic() - start

        storage = postgres.create_database("optuna")
        spec = write_team_spec(root / "team.yaml", jets_file, "team")
        env = client_env(mlflow_server.url)
        start = time.monotonic()
        main = popen(["-m", "mae_tracker.sweep", str(spec), "--storage", storage], env, root,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: study_ready(storage, "team") or main.poll() is not None, 240, "the study")
            worker = popen(["-m", "mae_tracker.sweep", str(spec), "--storage", storage, "--worker"], env, root,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            worker_out, _ = worker.communicate(timeout=400)
            main_out, _ = main.communicate(timeout=400)
        finally:
            for proc in (main, locals().get("worker")):
                if proc is not None and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        assert main.returncode == 0, main_out[-3000:]
        assert worker.returncode == 0, worker_out[-3000:]
        seconds["sweep"] = time.monotonic() - start
        # Rerunning the finished sweep adds no trial and records the final outcome on the same
        # parent (whichever process finished last).
        from mae_tracker.sweep.runner import run_sweep

        summary = run_sweep(spec, storage=storage, echo=lambda _line: None)
        study = optuna.load_study(study_name="team", storage=storage)
        start = time.monotonic()
        promotion = promote(result["run_id"])
        seconds["promote"] = time.monotonic() - start
    return TeamDay(result["run_id"], result["encoder_uri"], storage, "team", summary["parent_run_id"],
                   promotion, main_out, worker_out, seconds | {"trials": len(study.trials)})
