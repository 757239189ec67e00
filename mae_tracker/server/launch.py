"""`mae-tracker server`: one MLflow tracking server for a team, and cleanup of runs whose
client died.

The server is MLflow's own (``mlflow server``), started lean: a database backend store
(SQLite file by default, PostgreSQL for a team), artifacts proxied through the server
(``mlflow-artifacts:/``, so clients need no access to the artifact store), one worker process
and no job-execution workers (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: ~2 processes and
~0.5 GB instead of ~10 and 2.3 GB). It binds to 127.0.0.1 unless told otherwise.

Secrets stay out of sight: the backend URL reaches ``mlflow server`` through its environment
(not its argv, which ``ps`` shows to every user), and every line the server prints passes
through :func:`scrub` (passwords in URLs masked, the admin password removed).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Iterable

import click

from mae_tracker.server.ports import port_in_use
from mae_tracker.server.stale_runs import close_stale_runs
from mae_tracker.sweep.storage import mask_password
from mae_tracker.ui_links import experiments_route

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
AUTH_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What ``mae-tracker server`` starts; every field has a CLI option of the same name."""

    backend_store_uri: str = ""       # "" = sqlite:///<cwd>/mlflow.db (made absolute)
    artifacts_destination: str = ""   # "" = <folder of the SQLite file, else cwd>/mlartifacts
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    auth: bool = False
    auth_db: str = ""                 # "" = sqlite:///<artifacts folder's parent>/basic_auth.db
    allowed_hosts: str = ""           # "" = MLflow's default (localhost + private addresses)


def resolve(settings: ServerSettings, cwd: Path | None = None) -> ServerSettings:
    """Fill the defaults with absolute paths, so the stores do not depend on where the
    command is run from next time (the same default as every mae-tracker command)."""
    cwd = (cwd or Path.cwd()).resolve()
    backend = settings.backend_store_uri or f"sqlite:///{cwd / 'mlflow.db'}"
    base = cwd
    if backend.startswith("sqlite:///"):
        base = Path(backend[len("sqlite:///"):].split("?", 1)[0]).resolve().parent
    artifacts = settings.artifacts_destination or str(base / "mlartifacts")
    if "://" not in artifacts:  # a local folder: absolute, created now
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        artifacts = str(Path(artifacts).resolve())
    auth_db = settings.auth_db or (f"sqlite:///{base / 'basic_auth.db'}" if settings.auth else "")
    return dataclasses.replace(settings, backend_store_uri=backend, artifacts_destination=artifacts,
                               auth_db=auth_db)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tracking_url(settings: ServerSettings) -> str:
    """The URL clients export as MLFLOW_TRACKING_URI (this machine's name for a wildcard bind)."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn() or socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def warnings_for(settings: ServerSettings) -> list[str]:
    notes = []
    if not is_loopback(settings.host) and not settings.auth:
        notes.append(f"warning: serving on {settings.host} without --auth: anyone who can reach port "
                     f"{settings.port} can read, change and delete every run and model. Add --auth, or "
                     "keep --host 127.0.0.1 and reach it through an SSH tunnel.")
    if settings.backend_store_uri.startswith("sqlite") and not is_loopback(settings.host):
        notes.append("note: a SQLite backend store suits one machine; a team server should use "
                     "PostgreSQL (--backend-store-uri postgresql://...)")
    return notes


def check_drivers(settings: ServerSettings) -> None:
    """Fail in one line, before starting anything, when a store needs a missing package."""
    scheme = settings.backend_store_uri.split(":", 1)[0].lower()
    if scheme.startswith("postgresql"):
        driver = scheme.partition("+")[2] or "psycopg"
        module = {"psycopg": "psycopg", "psycopg2": "psycopg2", "pg8000": "pg8000"}.get(driver, driver)
        if not _importable(module):
            raise click.ClickException(
                f"the backend store needs the {module} package: pip install 'mae-tracker[team]'")
    if settings.artifacts_destination.startswith("s3://") and not _importable("boto3"):
        raise click.ClickException("an s3:// artifacts destination needs boto3: pip install boto3 "
                                   "(and AWS_* / MLFLOW_S3_ENDPOINT_URL for an S3-compatible store)")
    if settings.auth and not _importable("flask_wtf"):
        raise click.ClickException("--auth needs MLflow's auth extra: pip install 'mae-tracker[team]'")
    if settings.auth and not os.environ.get(AUTH_PASSWORD_ENV) and settings.auth_db.startswith("sqlite:///") \
            and not Path(settings.auth_db[len("sqlite:///"):]).exists():
        raise click.ClickException(f"--auth on a new user store needs the admin's first password in "
                                   f"${AUTH_PASSWORD_ENV} (the user is 'admin')")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def server_command(settings: ServerSettings, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``mlflow server`` for resolved ``settings``.

    The backend URL travels in MLFLOW_BACKEND_STORE_URI (argv is world-readable through ps).
    With ``auth`` an ini file in ``workdir`` points MLflow's basic-auth app at its user store.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": settings.backend_store_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner processes (docs/field-notes.md)
        "PYTHONUNBUFFERED": "1",
    })
    argv = [sys.executable, "-m", "mlflow", "server", "--host", settings.host, "--port", str(settings.port),
            "--workers", str(settings.workers), "--serve-artifacts",
            "--artifacts-destination", settings.artifacts_destination]
    if settings.allowed_hosts:
        argv += ["--allowed-hosts", settings.allowed_hosts]
    if settings.auth:
        ini = workdir / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {settings.auth_db}\nadmin_username = admin\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        ini.chmod(0o600)  # the auth DB URL may hold a password
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        if not env.get(SECRET_KEY_ENV):  # CSRF protection of the auth app needs a stable key
            env[SECRET_KEY_ENV] = _flask_secret_key(settings)
        argv += ["--app-name", "basic-auth"]
    return argv, env


def _flask_secret_key(settings: ServerSettings) -> str:
    """The auth app's session/CSRF key: kept in a private file beside a SQLite user store (else
    in the current folder), so restarts and several workers agree on it."""
    import secrets

    folder = Path.cwd()
    if settings.auth_db.startswith("sqlite:///"):
        folder = Path(settings.auth_db[len("sqlite:///"):]).parent
    path = folder / ".mlflow_flask_secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def scrub(line: str, secrets: Iterable[str] = ()) -> str:
    """Mask URL passwords (``user:***@``) and remove known secrets from one line of output."""
    line = mask_password(line)
    for secret in secrets:
        if secret and len(secret) >= 4:
            line = line.replace(secret, "***")
    return line


def _secrets(settings: ServerSettings) -> list[str]:
    found = [os.environ.get(name, "") for name in (AUTH_PASSWORD_ENV, SECRET_KEY_ENV, "AWS_SECRET_ACCESS_KEY")]
    for url in (settings.backend_store_uri, settings.auth_db):
        match = re.search(r"://[^/:@]*:([^/@]*)@", url)
        if match:
            found.append(match.group(1))
    return [s for s in found if s]


class TeamServer:
    """A running ``mlflow server`` (library use: tests, notebooks). Stop it with :meth:`stop`."""

    def __init__(self, settings: ServerSettings, *, out: IO[str] | None = None,
                 log_path: Path | None = None) -> None:
        self.settings = resolve(settings)
        check_drivers(self.settings)
        busy = port_in_use(self.settings.host, self.settings.port)
        if busy:  # before anything starts: mlflow's own message for this is an exit code
            raise RuntimeError(busy)
        self.url = tracking_url(self.settings)
        self._workdir = Path(tempfile.mkdtemp(prefix="mae-tracker-server-"))
        argv, env = server_command(self.settings, self._workdir)
        secrets = _secrets(self.settings) + [env.get(SECRET_KEY_ENV, "")]
        self._log = open(log_path, "a") if log_path else None  # noqa: SIM115 (closed in stop)
        # Its own process group, so stop() ends the server and the workers it forks.
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, cwd=self._workdir)
        sinks = [s for s in (out, self._log) if s is not None]
        self._pump = threading.Thread(target=_pump, args=(self.proc.stdout, sinks, secrets), daemon=True)
        self._pump.start()

    def wait_ready(self, timeout: float = 120.0) -> "TeamServer":
        deadline = time.monotonic() + timeout
        health = f"http://{_connect_host(self.settings.host)}:{self.settings.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                busy = port_in_use(self.settings.host, self.settings.port)  # taken since __init__
                raise RuntimeError(busy or f"mlflow server exited with code {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(health, timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._pump.join(timeout=5)
        if self._log:
            self._log.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "TeamServer":
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _pump(stream: IO[str], sinks: list[IO[str]], secrets: list[str]) -> None:
    for line in stream:
        clean = scrub(line, secrets)
        for sink in sinks:
            sink.write(clean)
            sink.flush()


# --------------------------------------------------------------------------- command line


@click.command(name="server")
@click.option("--backend-store-uri", default="", metavar="URL",
              help="Where runs, metrics and the model registry live: a database URL "
                   "(postgresql://user:pass@host/db for a team). Default: sqlite:///<cwd>/mlflow.db. "
                   "Also read from $MLFLOW_BACKEND_STORE_URI (keeps the password out of shell history).",
              envvar="MLFLOW_BACKEND_STORE_URI")
@click.option("--artifacts-destination", default="", metavar="PATH|URI",
              help="Where the server stores artifacts (models, images, CSVs): a local folder or "
                   "s3://bucket/prefix. Clients upload through the server. Default: mlartifacts/ "
                   "beside the SQLite file (else in the current folder).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 serves the network (then use --auth).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server worker processes (each ~250 MB; 2-4 for a busy team).")
@click.option("--auth", is_flag=True,
              help="MLflow's basic-auth app: users and per-experiment permissions. The first start "
                   f"needs ${AUTH_PASSWORD_ENV} (the 'admin' user's password); clients set "
                   "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.")
@click.option("--auth-db", default="", metavar="URL",
              help="User store of --auth (default: sqlite basic_auth.db beside the SQLite backend store, "
                   "else in the current folder).")
@click.option("--allowed-hosts", default="",
              help="Host names clients use to reach the server (DNS-rebinding guard), e.g. "
                   "'mlflow.lab.example,10.0.0.5:5000'. Default: localhost and private addresses.")
@click.option("--close-stale", "close_stale", type=float, default=None, metavar="SECONDS",
              help="Do not serve: end FAILED the RUNNING runs of $MLFLOW_TRACKING_URI with no metric for "
                   "SECONDS (their client died), print them and exit.")
@click.option("--dry-run", is_flag=True, help="With --close-stale: only list the runs.")
def server(close_stale: float | None, dry_run: bool, **options: object) -> None:
    """Start an MLflow tracking server for a team (UI + REST API + proxied artifacts).

    \b
    One machine:  mae-tracker server
    A team:       mae-tracker server --host 0.0.0.0 --auth \\
                    --backend-store-uri postgresql://mlflow:PASS@dbhost/mlflow \\
                    --artifacts-destination /data/mlartifacts
    Then on every machine: export MLFLOW_TRACKING_URI=<the URL printed>.
    """
    if close_stale is not None:
        runs = close_stale_runs(close_stale, dry_run=dry_run)
        for run in runs:
            click.echo(f"{'would close' if dry_run else 'closed'} {run.run_id} ({run.experiment} / {run.run_name}): "
                       f"idle {run.idle_seconds:.0f} s")
        click.echo(f"{len(runs)} stale run(s)")
        return
    settings = resolve(ServerSettings(**options))  # type: ignore[arg-type]
    for note in warnings_for(settings):
        click.echo(note, err=True)
    try:
        team = TeamServer(settings, out=sys.stdout)
    except RuntimeError as err:  # the port is taken, or a driver is missing
        raise click.ClickException(str(err)) from None
    stop = threading.Event()

    def _terminate(_signum: int, _frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        team.wait_ready()
        click.echo(f"backend store: {mask_password(settings.backend_store_uri)}")
        click.echo(f"artifacts:     {mask_password(settings.artifacts_destination)} (proxied: clients upload "
                   "through the server)")
        click.echo(f"MLflow UI and API on {team.url}\n  export MLFLOW_TRACKING_URI={team.url}")
        click.echo(f"  open {team.url}/{experiments_route()}")
        while not stop.is_set() and team.proc.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        team.stop()
    if team.proc.returncode not in (0, -signal.SIGTERM, None) and not stop.is_set():
        raise click.ClickException(f"mlflow server exited with code {team.proc.returncode}")
