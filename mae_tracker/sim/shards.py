"""Shards: how every generator cuts its work, seeds it, runs it in worker processes and writes
the balanced, shuffled file.

Reproducibility: a job is cut into fixed shards of at most ``shard_size`` images of one class.
Shard (label, index) gets its Pythia seed and its detector-noise stream from
``SeedSequence(seed, spawn_key=(*stream, label, index, ...))``, so the arrays depend on the seed
and the settings only, never on how many worker processes ran the shards or in which order they
finished; ``stream`` keeps tasks apart for the same seed. The final shuffle is seeded too.

Atomicity: the file is written to a temporary beside the output and renamed onto it at the very
end (:func:`mae_tracker.atomic.atomic_path`); any exception or Ctrl-C deletes the temporary (and
terminates the workers), so a file at ``out`` is always complete.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import h5py
import numpy as np

from mae_tracker.atomic import atomic_path
from mae_tracker.data.tasks import TaskSpec, task_attrs
from mae_tracker.progress import progress_bar
from mae_tracker.signals import sigterm_as_exit
from mae_tracker.sim.events import PYTHIA_SEED_MAX


@dataclass(frozen=True)
class ShardJob:
    """One shard to generate, handed to a worker: ``n_images`` images of class ``label``;
    ``config`` is the task's generator config."""

    config: Any
    label: int
    shard: int
    n_images: int


def shard_seeds(seed: int, label: int, shard: int, stream: tuple[int, ...] = ()) -> tuple[int, np.random.Generator]:
    """Pythia seed in [1, 900_000_000] and detector rng of one shard, from the run seed alone;
    ``stream`` (a task's salt) keeps tasks' random streams apart."""
    pythia_word = np.random.SeedSequence(seed, spawn_key=(*stream, label, shard, 0)).generate_state(1, np.uint64)[0]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(*stream, label, shard, 1)))
    return int(pythia_word % PYTHIA_SEED_MAX) + 1, rng


def plan_shards(config: Any, n_per_class: int, shard_size: int, first_shard: int = 0) -> list[ShardJob]:
    """Shards for ``n_per_class`` images of each class, label 1 and label 0 interleaved."""
    jobs = []
    for i in range(math.ceil(n_per_class / shard_size)):
        size = min(shard_size, n_per_class - i * shard_size)
        jobs += [ShardJob(config, label, first_shard + i, size) for label in (1, 0)]
    return jobs


def shuffle(seed: int, n: int) -> np.ndarray:
    """Output row i holds canonical image perm[i] (canonical: all of label 1, then label 0)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))).permutation(n)


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and terminates workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ShardRunner:
    """Runs shards in-process (workers=1) or in a pool of spawned worker processes."""

    def __init__(self, workers: int, fn: Callable[[ShardJob], Any]) -> None:
        self.workers = max(1, int(workers))
        self.fn = fn  # a picklable module-level function of one job
        self._pool: Any = None

    def run(self, jobs: list[ShardJob]) -> Iterator[Any]:
        if self.workers == 1 or len(jobs) == 1:
            yield from map(self.fn, jobs)
            return
        if self._pool is None:  # one pool for all rounds; each worker builds its own Pythia
            self._pool = multiprocessing.get_context("spawn").Pool(min(self.workers, len(jobs)),
                                                                 initializer=_ignore_sigint)
        yield from self._pool.imap_unordered(self.fn, jobs)

    def __enter__(self) -> "ShardRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            if exc[0] is None:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("pythia8mc", "fastjet", "awkward", "numpy", "h5py", "mae-tracker"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def file_attrs(task: TaskSpec, preset: str, config: Any, *, channel_units: dict[str, str],
               generation: dict[str, Any], detector: dict[str, Any]) -> dict[str, Any]:
    """A generated file's attributes: the task table's (:func:`task_attrs`), the channels, the
    generator config and generation details as JSON, the seed and the package versions."""
    return {
        **task_attrs(task, preset),
        "channel_names": list(channel_units),
        "channel_units": json.dumps(channel_units),
        "generator": json.dumps(config.to_dict()),
        "generation": json.dumps(generation),
        "detector": json.dumps(detector),
        "seed": config.seed,
        "versions": json.dumps(package_versions()),
    }


def image_dataset(f: h5py.File, name: str, n: int, shape: tuple[int, ...], resizable: bool = False) -> h5py.Dataset:
    # One image per chunk + lzf: fast shuffled random access (see docs/field-notes.md).
    return f.create_dataset(name, shape=(n, *shape), maxshape=(None, *shape) if resizable else None,
                            dtype="float32", chunks=(1, *shape), compression="lzf")


def write_rows(ds: h5py.Dataset, rows: np.ndarray, images: np.ndarray) -> None:
    for row, image in zip(rows.tolist(), images):
        ds[row] = image


def write_balanced(out: Path | str, *, n_images: int, seed: int, shard_size: int, config: Any,
                   run: Callable[[ShardJob], Any], images_key: str, shape: tuple[int, ...],
                   extras: Iterable[str], attrs: Callable[[dict[str, Any]], dict[str, Any]],
                   workers: int = 1, progress: bool = True) -> Path:
    """Half label 1, half label 0, shuffled by ``seed``; written atomically to ``out``.

    ``run(job)`` returns an object with ``label``, ``shard``, ``images`` (n, *shape), one array
    per name in ``extras`` and ``n_events``; row placement depends only on (label, shard), so the
    file does not depend on the number of workers. ``attrs(details)`` gives the file attributes
    (``details`` holds the event counts per label, "1" and "0").
    """
    out = Path(out)
    extras = tuple(extras)
    half = n_images // 2
    with sigterm_as_exit(), atomic_path(out) as tmp, \
            progress_bar(total=n_images, unit="jet", desc=f"generate {out.name}", enabled=progress) as bar, \
            ShardRunner(workers, run) as runner, h5py.File(tmp, "w-") as f:
        row_of = np.argsort(shuffle(seed, n_images))  # canonical order: label 1 by shard, then label 0
        images = image_dataset(f, images_key, n_images, shape)
        y = np.zeros(n_images, np.float32)
        columns = {name: np.zeros(n_images, np.float32) for name in extras}
        n_events = {1: 0, 0: 0}
        for res in runner.run(plan_shards(config, half, shard_size)):
            assert len(res.images) == min(shard_size, half - res.shard * shard_size)
            start = (0 if res.label == 1 else half) + res.shard * shard_size
            rows = row_of[start:start + len(res.images)]
            write_rows(images, rows, res.images)
            y[rows] = res.label
            for name in extras:
                columns[name][rows] = getattr(res, name)
            n_events[res.label] += res.n_events
            bar.update(len(res.images))
        f.create_dataset("y", data=y)
        for name in extras:
            f.create_dataset(name, data=columns[name])
        f.attrs.update(attrs({"n_events": {"1": n_events[1], "0": n_events[0]}, "n_candidates": n_images}))
    return out
