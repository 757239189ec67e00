"""An arm's line to MLflow, with the process rank decided once.

Under torchrun only rank 0 talks to MLflow. As facebookresearch/mae's ``main_pretrain.py`` keeps
a ``log_writer`` that is ``None`` off rank 0, an arm here makes one :class:`LogWriter`: on rank 0
it logs, on every other rank each call does nothing. The arms then read as one straight story
(train, evaluate, log, checkpoint) with no rank checks around their MLflow calls.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow

from mae_tracker.train import distributed, tracking
from mae_tracker.train.background import BackgroundLogger, log_figure_job


class LogWriter:
    """MLflow on rank 0 (or in a single process); a no-op on the other ranks."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.run_id = ""
        self._figures: BackgroundLogger | None = None

    @classmethod
    def for_this_process(cls) -> LogWriter:
        """The log_writer of this process: active on rank 0 (``distributed.init`` decided the rank)."""
        return cls(distributed.context().is_main)

    @contextlib.contextmanager
    def run(self, experiment: str, run_name: str, resume_run_id: str = "",
            tags: dict[str, str] | None = None) -> Iterator[str]:
        """Start (or resume) the arm's run on rank 0; every rank gets its id. Figures submitted
        meanwhile are rendered and uploaded on a background thread, all in before the run ends
        (or dropped, when the run fails)."""
        if not self.active:
            self.run_id = distributed.broadcast_object(None)
            yield self.run_id
            return
        with tracking.tracked_run(experiment, run_name, resume_run_id, tags=tags) as run:
            self.run_id = distributed.broadcast_object(run.info.run_id)
            with BackgroundLogger() as self._figures:  # a failing run abandons the figures in flight
                yield self.run_id
            self._figures = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.active:
            mlflow.log_metrics(metrics, step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.active:
            mlflow.log_params(params)

    def log_dict(self, values: dict[str, Any], artifact_file: str) -> None:
        if self.active:
            mlflow.log_dict(values, artifact_file)

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            mlflow.set_tag(key, value)

    def log_provenance(self, config: dict[str, Any], data_path: Path, data_digest: str, split_sizes: dict[str, int],
                       used: dict[str, int], dataset: dict[str, Any] | None = None) -> None:
        """Seed, full config, git commit, data digest, versions and the split (tracking.log_provenance)."""
        if self.active:
            tracking.log_provenance(config, data_path, data_digest, split_sizes, used, dataset=dataset)

    def submit_figure(self, artifact_file: str, render: Callable[..., Any], args: tuple) -> None:
        """``render(*args)`` -> a matplotlib figure, rendered and logged off the training thread."""
        if self.active:
            if self._figures is None:
                raise RuntimeError("submit_figure outside LogWriter.run")
            self._figures.submit(artifact_file, log_figure_job, self.run_id, render, args, artifact_file)

    def flush_figures(self) -> None:
        """Wait until every submitted figure is logged (raises a failed one's error)."""
        if self._figures is not None:
            self._figures.drain()
