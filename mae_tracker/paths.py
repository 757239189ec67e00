"""Where mae-tracker keeps things between runs (shared by every layer)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MAE_TRACKER_CACHE`` or ``~/.cache/mae-tracker``: default dataset, checkpoints,
    validation markers."""
    root = os.environ.get("MAE_TRACKER_CACHE") or Path.home() / ".cache" / "mae-tracker"
    return Path(root)
