"""The embedded default dataset: Pythia jets generated once and cached.

`mlflow run . -e pretrain` with no data file uses it, so a fresh checkout runs end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mae_tracker.data.generate import GeneratorConfig
from mae_tracker.data.tasks import generate_task_file
from mae_tracker.paths import cache_dir

# 10k jets (MPI on, CPU-friendly 32x32 preset): about 4 minutes once on 2 cores.
DEFAULT_GENERATOR = GeneratorConfig(n_jets=10_000, seed=1, preset="cpu")


def default_dataset_path(config: Any = DEFAULT_GENERATOR) -> Path:
    """Cache path keyed by the generator settings, so a changed default never reuses old data.

    ``config`` is any task's generator config (see data.tasks.make_config); quark/gluon files
    are ``jets-<preset>-<n>-<key>.h5``, the other tasks' ``<task>-<preset>-<n>-<key>.h5``.
    """
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    prefix = "jets" if isinstance(config, GeneratorConfig) else task_of(config)
    preset = getattr(config, "preset", "cpu")
    return cache_dir() / "datasets" / f"{prefix}-{preset}-{config.n_jets}-{key}.h5"


def default_dataset(config: Any = DEFAULT_GENERATOR, *, workers: int | None = None,
                    progress: bool = True) -> Path:
    """Path of the default dataset (or of any generator config's), generating it first if it
    is not cached yet. Generation writes atomically: an interrupted one leaves no file."""
    path = default_dataset_path(config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_task_file(config, path, workers=workers or max(1, os.cpu_count() or 1), progress=progress)
    return path


def task_of(config: Any) -> str:
    """The task name of a generator config."""
    from mae_tracker.data.egamma import EGammaConfig
    from mae_tracker.data.top_jets import TopQCDConfig

    if isinstance(config, TopQCDConfig):
        return "top-qcd"
    if isinstance(config, EGammaConfig):
        return "electron-photon"
    return "quark-gluon"
