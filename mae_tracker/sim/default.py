"""The embedded default dataset: Pythia jets generated once and cached.

`mlflow run . -e pretrain` with no data file uses it, so a fresh checkout runs end to end
(with the ``sim`` extra installed; without it, one line says so).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mae_tracker.paths import cache_dir
from mae_tracker.sim.generate import generate_task_file, task_of
from mae_tracker.sim.quark_gluon import QuarkGluonConfig

# 10k jets (MPI on, CPU-friendly 32x32 preset): about 4 minutes once on 2 cores.
DEFAULT_GENERATOR = QuarkGluonConfig(n_jets=10_000, seed=1, preset="cpu")


def default_dataset_path(config: Any = DEFAULT_GENERATOR) -> Path:
    """Cache path keyed by the generator settings, so a changed default never reuses old data.

    ``config`` is any task's generator config (see sim.generate.make_config); quark/gluon files
    are ``jets-<preset>-<n>-<key>.h5``, the other tasks' ``<task>-<preset>-<n>-<key>.h5``.
    """
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    prefix = "jets" if isinstance(config, QuarkGluonConfig) else task_of(config)
    preset = getattr(config, "preset", "cpu")
    return cache_dir() / "datasets" / f"{prefix}-{preset}-{config.n_images}-{key}.h5"


def default_dataset(config: Any = DEFAULT_GENERATOR, *, workers: int | None = None,
                    progress: bool = True) -> Path:
    """Path of the default dataset (or of any generator config's), generating it first if it
    is not cached yet. Generation writes atomically: an interrupted one leaves no file."""
    path = default_dataset_path(config)
    if not path.exists():
        generate_task_file(config, path, workers=workers or max(1, os.cpu_count() or 1), progress=progress)
    return path
