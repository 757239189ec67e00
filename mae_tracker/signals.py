"""SIGTERM as an exception, for the places that must clean up when a job is stopped.

A batch scheduler's time limit or ``kill`` sends SIGTERM, and Python's default ends the process
on the spot: a half-written HDF5 file would stay behind, an MLflow run would stay RUNNING.
Inside :func:`sigterm_as_exit` the signal raises :class:`Terminated` instead, which unwinds
like any error (the writer removes its temp file, the tracked run ends KILLED) and then exits
143 (128 + SIGTERM). No MLflow, torch or h5py here: data and train both use it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class Terminated(SystemExit):
    """SIGTERM arrived inside :func:`sigterm_as_exit`; the process exits 143 once unwound."""


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs, where no Python handler is set
    already (under torchrun, train/distributed.py's handler does the same job); a second SIGTERM
    ends the process at once. Nested blocks keep the outer one's handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
