"""The embedded default dataset: 10,000 Pythia 8 quark/gluon jets (32x32x3) shipped with the package.

A run with no ``--data`` reads it, so the first run on a fresh clone trains at once instead of
waiting ~4 minutes for Pythia. It is exactly the file the generator writes for the default
settings (``manifest.json`` records them, the command and its sha256); other settings are
generated and cached by ``mae_tracker.sim.default``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mae_tracker.data.errors import DataError

EMBEDDED_DIR = Path(__file__).with_name("default")
MANIFEST = EMBEDDED_DIR / "manifest.json"


def manifest() -> dict[str, Any]:
    """What the shipped file is: file name, sha256, task, generator settings, how it was made."""
    return json.loads(MANIFEST.read_text())


def embedded_dataset(generator: dict[str, Any] | None = None) -> Path | None:
    """The shipped file, if it was made with ``generator`` settings (default: any), else None.

    A file whose bytes do not match the recorded sha256 (a damaged checkout, a git-lfs pointer)
    is an error naming it, never silently read."""
    if not MANIFEST.exists():
        return None
    info = manifest()
    if generator is not None and generator != info["generator"]:
        return None
    path = EMBEDDED_DIR / info["file"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
    if digest != info["sha256"]:
        raise DataError(path, f"the embedded default dataset is damaged (sha256 {digest[:12]}, expected "
                              f"{info['sha256'][:12]}); restore it with `git checkout -- {path.name}` "
                              "or pass --data")
    return path
