import os

import pytest
import torch

# Two cores: keep every test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolate_mlflow(tmp_path, monkeypatch):
    """Every test gets its own SQLite tracking store; nothing touches ./mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MAE_TRACKER_CACHE", str(tmp_path / "cache"))
