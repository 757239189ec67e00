import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# matplotlib keeps its font cache in ~/.cache/matplotlib and ~/.config/matplotlib unless MPLCONFIGDIR
# says otherwise, from its first import (test collection, before any fixture) and in every subprocess
# that renders a figure: a temp dir for the session instead, never the user's home.
if "MPLCONFIGDIR" not in os.environ:
    _mpl_dir = tempfile.mkdtemp(prefix="mae-tracker-tests-mpl-")
    os.environ["MPLCONFIGDIR"] = _mpl_dir
    atexit.register(shutil.rmtree, _mpl_dir, ignore_errors=True)
# MLflow 3's usage telemetry keeps an installation id in ~/.config/mlflow/telemetry.json (it is off by
# itself only when CI is set): off for the tests, which write nothing into the user's home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: keep every test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_stores(tmp_path_factory: pytest.TempPathFactory):
    """One throw-away SQLite tracking store, cache and working directory for the whole session:
    nothing touches the checkout, ./mlflow.db or ~/.cache. Tests find their runs by run id, so sharing the store is safe
    (and creating a store costs about a second)."""
    root = tmp_path_factory.mktemp("stores")
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MAE_TRACKER_CACHE", "XDG_RUNTIME_DIR")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    os.environ["MAE_TRACKER_CACHE"] = str(root / "cache")
    # gunicorn (under `mlflow server`) puts its control socket in $XDG_RUNTIME_DIR, else in ~/.gunicorn
    (root / "run").mkdir(mode=0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(root / "run")
    # Whatever a test, MLflow or a subprocess writes relative to the working directory
    # (./mlruns, ./mlflow.db) lands in a temp dir, never in the checkout.
    cwd = Path.cwd()
    (root / "cwd").mkdir()
    os.chdir(root / "cwd")
    yield root
    os.chdir(cwd)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def own_tracking_store(folder: Path) -> Iterator[None]:
    """Point MLflow at a store of the caller's own (a module whose outcomes depend on what the
    registry already holds), and back to the session's store afterwards."""
    saved = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        yield
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = saved
        mlflow.set_tracking_uri(saved)


@pytest.fixture(scope="session")
def jets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Pythia 8 quark/gluon jets (CPU preset, no MPI for speed), generated once per session."""
    from mae_tracker.sim.quark_gluon import QuarkGluonConfig, generate_quark_gluon_file

    path = tmp_path_factory.mktemp("jets") / "jets.h5"
    generate_quark_gluon_file(QuarkGluonConfig(n_jets=1000, seed=7, preset="cpu", mpi=False), path, workers=2,
                              progress=False)
    return path
