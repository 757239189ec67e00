"""SIGTERM as an exception, for the places that must clean up when a job is stopped.

A batch scheduler's time limit or ``kill`` sends SIGTERM, and Python's default ends the process
on the spot: a half-written HDF5 file would stay behind, an MLflow run would stay RUNNING.
Inside :func:`sigterm_as_exit` the signal raises :class:`Terminated` instead, which unwinds
like any error (the writer removes its temp file, the tracked run ends KILLED) and then exits
143 (128 + SIGTERM). No MLflow, torch or h5py here: data and train both use it.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from typing import Any, Iterator

_received = False  # SIGTERM arrived inside sigterm_as_exit (whatever became of the exception)


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
        global _received
        _received = True
        signal.signal(signum, signal.SIG_DFL)
        raise Terminated(128 + signum)

    global _received
    _received = False
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def sigterm_received() -> bool:
    """Whether SIGTERM arrived inside the current :func:`sigterm_as_exit` block, even if cleanup
    code turned :class:`Terminated` into another error on its way up."""
    return _received


def without_frames(err: BaseException) -> BaseException:
    """``err`` with the tracebacks of it and its context dropped and their frames collected.

    A signal can land inside a database call; that call's frames, kept alive by the traceback,
    can hold its SQLite read lock, and then the cleanup's own writes wait the store's busy timeout
    and fail. Clean up after this, outside the ``except`` block."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__context__
    gc.collect()
    return err
