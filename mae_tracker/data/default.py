"""The embedded default dataset: Pythia jets generated once and cached.

`mlflow run . -e pretrain` with no data file uses it, so a fresh checkout runs end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mae_tracker.data.generate import GeneratorConfig, generate_file
from mae_tracker.paths import cache_dir

# 10k jets (MPI on, CPU-friendly 32x32 preset): about 4 minutes once on 2 cores.
DEFAULT_GENERATOR = GeneratorConfig(n_jets=10_000, seed=1, preset="cpu")


def default_dataset_path(config: GeneratorConfig = DEFAULT_GENERATOR) -> Path:
    """Cache path keyed by the generator settings, so a changed default never reuses old data."""
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "datasets" / f"jets-{config.preset}-{config.n_jets}-{key}.h5"


def default_dataset(config: GeneratorConfig = DEFAULT_GENERATOR, *, workers: int | None = None,
                    progress: bool = True) -> Path:
    """Path of the default dataset, generating it first if it is not cached yet."""
    path = default_dataset_path(config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_file(config, path, workers=workers or max(1, os.cpu_count() or 1), progress=progress)
    return path
