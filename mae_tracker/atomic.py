"""Atomic writes: every file (or folder) the project writes appears complete or not at all.

:func:`atomic_path` yields a fresh temporary name beside the target (same file system, so the
final ``os.replace`` is an atomic rename); the caller writes there, and on leaving the block the
temporary is renamed onto the target. Any exception, Ctrl-C or SIGTERM (see
:func:`mae_tracker.signals.sigterm_as_exit`) deletes the temporary instead and leaves an existing
target untouched. :func:`scratch_path` is the same name for a scratch file that never becomes
the output.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_path(out: Path | str, suffix: str = ".tmp") -> Path:
    """A fresh hidden name beside ``out``: ``.<name>.<pid>.<random><suffix>``."""
    out = Path(out)
    return out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(out: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``out`` (parent folders created); rename it onto ``out``
    when the block ends normally, delete it (file or folder) when it raises."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out, suffix)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def scratch_path(out: Path | str, suffix: str = ".scratch.tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``out`` that is deleted however the block ends."""
    tmp = temp_path(out, suffix)
    try:
        yield tmp
    finally:
        _remove(tmp)


def write_text_atomically(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
