"""Reading jet-image HDF5 files: streaming reads, splits and mini-batches.

Validation lives in :mod:`mae_tracker.data.validate`; ``JetFileInfo`` and ``open_jet_file`` are
re-exported here so that everything a training loop needs comes from this one module.

Two schemas are understood, in either channel layout:

* E2E quark/gluon: ``X_jets`` (N, H, W, C) float32, ``y`` (1 = quark, 0 = gluon), optional ``pt``, ``m0``;
* E2E electron/photon: ``X`` (N, 32, 32, 2) (energy, time), ``y``.

Images always leave this module channels-first, ``(n, C, H, W)`` float32, which is what models see.

Reading speed (bench/bench_loader.py): with chunks of one jet and lzf, reading each row on its own is
~10x faster than h5py fancy indexing with a list of indices, so :meth:`JetImageReader.read` reads
sorted unique rows one contiguous run at a time and reorders in memory. Shuffled batches of
32x32x3 then come at tens of thousands of images/s, far above what training consumes, so there is
no cache by default. :func:`cache_in_memory` exists for files chunked over many jets (other tools'
files), where every shuffled row read would decompress a whole chunk.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import h5py
import numpy as np
import torch

from mae_tracker.data.errors import DataError
from mae_tracker.data.validate import JetFileInfo, h5_errors, open_h5, open_jet_file

__all__ = [
    "BatchIterator", "InMemoryJetImages", "JetFileInfo", "JetImageReader", "JetReader", "as_indices",
    "cache_in_memory", "epoch_order", "file_digest", "iterate_batches", "make_splits", "open_jet_file",
    "sorted_unique",
]

DEFAULT_SPLIT_FRACTIONS = {"pretrain": 0.5, "train": 0.3, "val": 0.1, "test": 0.1}


def file_digest(path: str | os.PathLike[str], *, block_bytes: int = 2**20) -> str:
    """sha256 hex digest of the file's bytes, streamed (dataset provenance for MLflow)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, "is a directory, expected a file" if path.is_dir() else "file not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(block_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading


@runtime_checkable
class JetReader(Protocol):
    """What the loader, Preprocessor.fit, the sparse copy and the arms need from a data source:
    :class:`JetImageReader` (one HDF5 file), :class:`~mae_tracker.data.parquet.ParquetJetReader`,
    :class:`~mae_tracker.data.dataset.JetDataset` (many files) and the copies/caches built on them.

    Optional: ``shuffled_order(indices, seed=, epoch=)``, an epoch's shuffled reading order that
    suits the source's storage (:class:`BatchIterator` uses it when present).
    """

    info: Any  # JetFileInfo or DatasetInfo: n_jets, image_shape, path, channel_names, attrs...

    def __len__(self) -> int: ...
    @property
    def image_shape(self) -> tuple[int, int, int]: ...
    def read(self, indices: Any) -> tuple[np.ndarray, np.ndarray]: ...
    def labels(self) -> np.ndarray: ...
    def read_extra(self, key: str, indices: Any) -> np.ndarray: ...
    def clone(self) -> Any: ...
    def close(self) -> None: ...


def as_indices(indices: Any, n: int) -> np.ndarray:
    """``indices`` as a 1-D int64 array checked to lie in [0, n) (IndexError, TypeError otherwise)."""
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size and idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray, out: np.ndarray) -> None:
    """Read sorted unique ``rows`` into ``out``: one slice per run of consecutive rows.

    Row-by-row slices beat h5py fancy indexing ~10x on chunk-per-jet files (measured), and
    sequential batches collapse into a single slice.
    """
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(rows)]))
    for s, e in zip(starts.tolist(), ends.tolist()):
        first = int(rows[s])
        out[s:e] = dataset[first:first + (e - s)]


_as_indices = as_indices  # the name this module's readers used first


def sorted_unique(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows to read in file order, and how to put them back (None: already in order)."""
    if idx.size < 2 or bool(np.all(idx[1:] > idx[:-1])):
        return idx, None
    rows, inverse = np.unique(idx, return_inverse=True)
    return rows, inverse.reshape(-1)


class JetImageReader:
    """Streams images and labels of one validated file, any rows in any order.

    The HDF5 handle is opened on first use and dropped when pickled or after a fork, so a reader
    can be handed to DataLoader workers (h5py handles do not survive fork). Labels (small) are
    cached in memory on first use; images never are.
    """

    def __init__(self, info_or_path: JetFileInfo | str | os.PathLike[str], *,
                 check_values: bool = False) -> None:
        # A path is validated structurally; pixel values are checked per batch in read().
        self.info = (info_or_path if isinstance(info_or_path, JetFileInfo)
                     else open_jet_file(info_or_path, check_values=check_values))
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.info.n_jets

    def __repr__(self) -> str:
        return f"JetImageReader({str(self.info.path)!r}, n_jets={self.info.n_jets}, shape={self.info.image_shape})"

    def __getstate__(self) -> dict[str, Any]:
        return {"info": self.info, "_h5": None, "_pid": None, "_labels": None}

    def __enter__(self) -> JetImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            # After fork the inherited handle belongs to the parent: forget it, open our own.
            chunks = self._chunk_bytes()
            self._h5 = open_h5(self.info.path, cache_bytes=min(max(2 * chunks, 2**20), 64 * 2**20))
            self._pid = os.getpid()
        return self._h5

    def _chunk_bytes(self) -> int:
        with open_h5(self.info.path) as h5:
            ds = h5[self.info.images_key]
            return int(np.prod(ds.chunks)) * ds.dtype.itemsize if ds.chunks else 0

    @property
    def chunk_rows(self) -> int:
        """Jets per HDF5 chunk (1 is ideal for shuffled reads; 0 = contiguous storage)."""
        chunks = self._file()[self.info.images_key].chunks
        return int(chunks[0]) if chunks else 0

    def labels(self) -> np.ndarray:
        """All labels as int64 (cached; N x 8 bytes)."""
        if self._labels is None:
            with h5_errors(self.info.path, "labels"):
                self._labels = np.asarray(self._file()[self.info.labels_key][...]).reshape(-1).astype(np.int64)
        return self._labels

    def read(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 (n, C, H, W) and labels int64 (n,), rows in the order of ``indices``."""
        info = self.info
        idx = _as_indices(indices, info.n_jets)
        rows, inverse = sorted_unique(idx)
        dataset = self._file()[info.images_key]
        block = np.empty((len(rows),) + tuple(dataset.shape[1:]), dtype=np.float32)
        with h5_errors(info.path, f"images ({info.images_key})"):
            _read_rows(dataset, rows, block)
        if info.channels_last:
            block = block.transpose(0, 3, 1, 2)
        images = block if inverse is None else block[inverse]
        images = np.ascontiguousarray(images)
        finite = np.isfinite(images).all(axis=(1, 2, 3))
        if not finite.all():
            bad = int(idx[np.flatnonzero(~finite)[0]])
            raise DataError(info.path, f"non-finite pixel values (NaN or inf) in {info.images_key}, jet {bad}")
        return images, self.labels()[idx]

    def read_extra(self, key: str, indices: Any) -> np.ndarray:
        """A per-jet scalar dataset (``pt``, ``m0``...) for ``indices``, in their order."""
        if key not in self.info.extra_keys:
            raise DataError(self.info.path, f"has no per-jet dataset '{key}' "
                                            f"(available: {list(self.info.extra_keys) or 'none'})")
        idx = _as_indices(indices, self.info.n_jets)
        rows, inverse = sorted_unique(idx)
        dataset = self._file()[key]
        values = np.empty(len(rows), dtype=dataset.dtype)
        with h5_errors(self.info.path, key):
            _read_rows(dataset, rows, values)
        return values if inverse is None else values[inverse]

    def clone(self) -> JetImageReader:
        """A reader of the same file with its own HDF5 handle (one per loader worker)."""
        return JetImageReader(self.info)

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._pid = None


class InMemoryJetImages:
    """A split's images held in RAM, with the reader's ``read`` interface (global indices).

    For files whose chunks span many jets, where shuffled reads from disk decompress a whole
    chunk per jet. Meant for ``num_workers=0``: pickling it copies every image.
    """

    def __init__(self, reader: JetImageReader, indices: Any, *, batch_size: int = 4096) -> None:
        self.reader = reader
        self.info = reader.info
        self.indices = np.unique(_as_indices(indices, reader.info.n_jets))
        self.images = np.empty((len(self.indices),) + reader.info.image_shape, dtype=np.float32)
        self._labels = np.empty(len(self.indices), dtype=np.int64)
        for start in range(0, len(self.indices), batch_size):  # sorted -> sequential slices
            part = slice(start, start + batch_size)
            self.images[part], self._labels[part] = reader.read(self.indices[part])

    def __len__(self) -> int:
        return self.info.n_jets

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    def read(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        idx = _as_indices(indices, self.info.n_jets)
        pos = np.searchsorted(self.indices, idx)
        if idx.size and (pos.max() >= len(self.indices) or np.any(self.indices[pos] != idx)):
            raise IndexError("some indices are not in the cached split")
        return self.images[pos], self._labels[pos]

    def read_extra(self, key: str, indices: Any) -> np.ndarray:
        return self.reader.read_extra(key, indices)

    def clone(self) -> InMemoryJetImages:
        """Shared by loader workers: nothing to open, and copying would copy every image."""
        return self

    def close(self) -> None:
        self.reader.close()


def cache_in_memory(reader: JetImageReader, indices: Any, *,
                    max_bytes: int) -> JetImageReader | InMemoryJetImages:
    """The split ``indices`` in RAM if its images fit in ``max_bytes``, else ``reader`` unchanged."""
    n_rows = len(np.unique(np.asarray(indices)))
    needed = n_rows * int(np.prod(reader.info.image_shape)) * 4
    return InMemoryJetImages(reader, indices) if needed <= max_bytes else reader


# --------------------------------------------------------------------------- splits & batches


def make_splits(n: int, fractions: dict[str, float] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded disjoint splits of ``range(n)`` by fraction; sorted int64 index arrays.

    Split sizes come from rounding cumulative fractions, so each is within one of
    ``fraction * n`` and, when fractions sum to 1, every index is used exactly once.
    """
    fractions = dict(DEFAULT_SPLIT_FRACTIONS if fractions is None else fractions)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    values = np.array(list(fractions.values()), dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"split fractions must be finite and >= 0, got {fractions}")
    if values.sum() > 1 + 1e-9:
        raise ValueError(f"split fractions sum to {values.sum():.6g} > 1: {fractions}")
    bounds = np.minimum(np.round(np.cumsum(values) * n).astype(np.int64), n)
    order = np.random.default_rng(seed).permutation(n)
    splits, start = {}, 0
    for name, end in zip(fractions, bounds.tolist()):
        splits[name] = np.sort(order[start:end]).astype(np.int64)
        start = end
    return splits


def epoch_order(indices: Any, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's indices for one epoch, in reading order.

    Shuffling is seeded by (seed, epoch), the same on every rank; ranks then take every
    ``world_size``-th index after padding (wrapping around) to a multiple of ``world_size``, as
    torch's DistributedSampler does, so all ranks run the same number of steps.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    order = np.asarray(indices, dtype=np.int64).reshape(-1)
    if shuffle:
        order = order[np.random.default_rng((seed, epoch)).permutation(len(order))]
    if world_size > 1 and len(order):
        padded = -(-len(order) // world_size) * world_size
        order = np.resize(order, padded)[rank::world_size]  # np.resize repeats from the start
    return order


class BatchIterator:
    """One pass of mini-batches ``(x float32 (B,C,H,W), y int64 (B,))`` as torch tensors.

    An iterator with ``len()`` (number of batches), so it can drive a progress bar.
    """

    def __init__(self, reader: JetImageReader | InMemoryJetImages, indices: Any, batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, epoch: int = 0, preprocessor: Any = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.reader = reader
        self.batch_size = batch_size
        self.preprocessor = preprocessor
        shuffled_order = getattr(reader, "shuffled_order", None) if shuffle else None
        if shuffled_order is not None:  # a storage-aware shuffle (JetDataset: row-group windows)
            indices = shuffled_order(indices, seed=seed, epoch=epoch)
        self.order = epoch_order(indices, shuffle=shuffle and shuffled_order is None, seed=seed, epoch=epoch,
                                 rank=rank, world_size=world_size)
        if shuffle and shuffled_order is None and getattr(reader, "chunk_rows", 1) > 1:
            warnings.warn(f"{reader.info.path}: images are chunked {reader.chunk_rows} jets at a time, so "
                          "every shuffled read decompresses a whole chunk; rewrite the file with chunks of "
                          "one jet or use cache_in_memory()", stacklevel=3)
        full, rest = divmod(len(self.order), batch_size)
        self.n_batches = full if drop_last or rest == 0 else full + 1
        self._next = 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._next >= self.n_batches:
            raise StopIteration
        self._next += 1
        return self.batch(self._next - 1)

    def batch(self, k: int, reader: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``k`` of this pass, read with ``reader`` (default: the iterator's own), so
        background workers (mae_tracker.data.loader) can build any batch with their own handle."""
        start = k * self.batch_size
        images, labels = (reader or self.reader).read(self.order[start:start + self.batch_size])
        x = torch.from_numpy(images)
        if self.preprocessor is not None:
            x = self.preprocessor.transform(x)  # the torch path is the faster one on CPU
        return x, torch.from_numpy(labels)


def iterate_batches(reader: JetImageReader | InMemoryJetImages, indices: Any, batch_size: int, *,
                    shuffle: bool = False, seed: int = 0, epoch: int = 0, preprocessor: Any = None,
                    drop_last: bool = False, rank: int = 0, world_size: int = 1) -> BatchIterator:
    """Mini-batches of ``indices`` streamed from disk (see :class:`BatchIterator`, :func:`epoch_order`)."""
    return BatchIterator(reader, indices, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                         preprocessor=preprocessor, drop_last=drop_last, rank=rank, world_size=world_size)
