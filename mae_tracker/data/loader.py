"""Keep the next batches ready: background workers read + preprocess while the model trains.

:class:`Prefetcher` wraps one pass of :class:`~mae_tracker.data.jetfile.BatchIterator`. Worker
``w`` of ``W`` builds batches ``w, w + W, w + 2W, ...`` with its own reader (its own HDF5 handle,
via ``reader.clone()``) into its own bounded queue, and the consumer takes batch ``k`` from queue
``k % W``. The batches are therefore exactly those of the plain iterator, in the same order
(same seed -> same numbers), and shuffled reads stay chunk-aware (each batch is still read as
sorted runs of rows). Threads by default: numpy and torch release the GIL for the heavy parts,
no batch is copied between processes, and a worker starts in microseconds.

h5py, though, holds one lock for every call, so threads decompress one image at a time. With
``processes=True`` the workers are processes (torch's DataLoader over "batch k" of the same
pass, each process with its own HDF5 handle), which scale with cores: the choice for large
images on a machine with cores to spare (a GPU node). Same batches, same order.

On CUDA, ``pin_memory=True`` pins each batch in the worker so the training thread's
``.to(device, non_blocking=True)`` is a true asynchronous copy.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterator

import torch

__all__ = ["Prefetcher", "prefetch", "process_prefetcher"]

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Iterate ``batches`` (a BatchIterator) with ``workers`` background threads, ``depth``
    batches ahead per worker; ``n_batches`` caps the pass (default: all of it).

    Use as an iterator (len() works, for progress bars); ``close()`` (or exhausting it, or a
    ``with`` block) stops the workers. An error in a worker is raised in the consumer, at the
    batch it would have produced.
    """

    def __init__(self, batches: Any, *, workers: int = 1, depth: int = 2, pin_memory: bool = False,
                 n_batches: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.batches = batches
        self.n_batches = len(batches) if n_batches is None else min(n_batches, len(batches))
        self.workers = min(workers, max(1, self.n_batches))
        self.pin_memory = pin_memory
        self._stop = threading.Event()
        self._queues = [queue.Queue(maxsize=max(1, depth)) for _ in range(self.workers)]
        self._threads = [threading.Thread(target=self._work, args=(w,), name=f"mae-loader-{w}", daemon=True)
                         for w in range(self.workers)]
        self._started = False
        self._next = 0

    def __len__(self) -> int:
        return self.n_batches

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, w: int) -> None:
        reader = None
        try:
            source = self.batches.reader
            reader = source.clone() if hasattr(source, "clone") else source
            for k in range(w, self.n_batches, self.workers):
                if self._stop.is_set():
                    return
                x, y = self.batches.batch(k, reader)
                if self.pin_memory:
                    x, y = x.pin_memory(), y.pin_memory()
                if not self._put(self._queues[w], (x, y)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(self._queues[w], _Failure(err))
        finally:
            if reader is not None and reader is not getattr(self.batches, "reader", None):
                reader.close()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._next >= self.n_batches:
            self.close()
            raise StopIteration
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        item = self._queues[self._next % self.workers].get()
        self._next += 1
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the workers and wait for them (they notice within ~0.1 s)."""
        self._stop.set()
        for q in self._queues:  # unblock workers waiting on a full queue
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
        if self._started:
            for thread in self._threads:
                thread.join()
        self._next = self.n_batches


class _BatchK(torch.utils.data.Dataset):
    """Batch ``k`` of a pass as a dataset item, for DataLoader worker processes; each process
    reads with its own clone of the reader (an HDF5 handle must not cross a fork)."""

    def __init__(self, batches: Any, n_batches: int) -> None:
        self.batches, self.n_batches = batches, n_batches
        self._reader, self._pid = None, -1

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pid != os.getpid():
            source = self.batches.reader
            self._reader = source.clone() if hasattr(source, "clone") else source
            self._pid = os.getpid()
        return self.batches.batch(k, self._reader)


def process_prefetcher(batches: Any, *, workers: int, depth: int = 2, pin_memory: bool = False,
                       n_batches: int | None = None) -> torch.utils.data.DataLoader:
    """Like :class:`Prefetcher`, with ``workers`` processes (forked, so nothing is pickled on
    the way in); DataLoader hands the batches back in order through shared memory."""
    n = len(batches) if n_batches is None else min(n_batches, len(batches))
    return torch.utils.data.DataLoader(_BatchK(batches, n), batch_size=None, shuffle=False,
                                       num_workers=min(workers, max(1, n)), prefetch_factor=depth,
                                       pin_memory=pin_memory, multiprocessing_context="fork")


def prefetch(batches: Any, *, workers: int, pin_memory: bool = False, n_batches: int | None = None,
             processes: bool = False) -> Any:
    """``batches`` with ``workers`` background threads (or ``processes``) ahead of it; 0
    workers: ``batches`` as they are, read on the calling thread (capped at ``n_batches``)."""
    if workers > 0 and processes:
        return process_prefetcher(batches, workers=workers, pin_memory=pin_memory, n_batches=n_batches)
    if workers > 0:
        return Prefetcher(batches, workers=workers, pin_memory=pin_memory, n_batches=n_batches)
    if n_batches is not None and n_batches < len(batches):
        batches.n_batches = n_batches
    return batches
