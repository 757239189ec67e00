"""Logging work off the training thread: figures are rendered and uploaded by one worker thread.

Rendering a reconstruction grid with matplotlib and uploading the PNG costs ~0.5-1 s; done on
the training thread it was most of MLflow's share of a pretrain run's wall time. The training
thread now computes what to draw (tensors, fast) and hands the rest to :class:`BackgroundLogger`.

* One thread, jobs in submission order, so matplotlib (not thread-safe) only ever runs there
  while training runs. Jobs log with ``MlflowClient(...)`` and an explicit run id: MLflow's
  active run is per thread.
* Errors are not lost: the first failure is raised on the training thread at the next
  ``submit`` or at ``drain()``, which the arm calls before it logs its models and ends the run.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["BackgroundLogger", "LoggingFailed"]


class LoggingFailed(RuntimeError):
    """A background logging job failed (the message names it)."""


class BackgroundLogger:
    def __init__(self, name: str = "mae-logger") -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._failed_job = ""
        self._abandoned = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            try:
                if item is None:
                    return
                label, fn, args, kwargs = item
                if self._error is None and not self._abandoned:  # after a failure, skip the rest
                    try:
                        fn(*args, **kwargs)
                    except BaseException as err:  # noqa: BLE001 - surfaced on the training thread
                        self._error, self._failed_job = err, label
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise LoggingFailed(f"background logging of {self._failed_job} failed: "
                                f"{type(err).__name__}: {err}") from err

    def submit(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` on the logging thread; raises an earlier job's error."""
        self._raise()
        self._jobs.put((label, fn, args, kwargs))

    def drain(self) -> None:
        """Wait until every submitted job has run; raise the first error, if any."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        """Drain, then stop the thread (raises a job's error after stopping it)."""
        try:
            self.drain()
        finally:
            self._jobs.put(None)
            self._thread.join()

    def __enter__(self) -> BackgroundLogger:
        return self

    def abandon(self, timeout: float = 60.0) -> None:
        """Skip the jobs not started, wait for the one running, stop the thread; raises nothing.

        For a run that is failing anyway. Waiting matters: a daemon thread still inside C++
        (matplotlib's renderer) when the interpreter exits aborts the process ("terminate called
        without an active exception"), e.g. a sweep whose last trial was pruned mid-upload."""
        self._abandoned = True
        self._jobs.put(None)
        self._thread.join(timeout)

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # the run is failing anyway: stop without masking its error
            self.abandon()


def log_figure_job(run_id: str, render: Callable[..., Any], args: tuple, artifact_file: str) -> None:
    """Render a figure with ``render(*args)`` and log it to ``run_id`` (runs on the logging thread)."""
    import matplotlib.pyplot as plt
    import mlflow

    fig = render(*args)
    try:
        mlflow.MlflowClient().log_figure(run_id, fig, artifact_file)
    finally:
        plt.close(fig)
