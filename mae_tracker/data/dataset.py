"""A dataset: one or more jet files (HDF5 and/or Parquet, any known layout) read as one.

:func:`open_dataset` resolves a file, folder, glob or list (:mod:`mae_tracker.data.files`),
validates each file on its own (one-line DataError naming it), then checks that they agree:
the same image shape (C, H, W), channel names and task. It returns a :class:`JetDataset` with
the readers' interface (``read(indices) -> (float32 (n, C, H, W), int64 labels)``, ``labels()``,
``read_extra``, ``clone``, ``close``), so the loader, ``Preprocessor.fit``, the sparse copy and
the arms take it as they take one file's reader.

Identity and order. Every file is named by its sha256; the dataset's digest is the sha256 of the
sorted file digests (for one file: that file's digest, so copies and encoders recorded against a
file stay valid), so it does not depend on names, folders or the order files were listed in.
Jets are numbered file after file in the order of their digests, the same for every way of
naming the same files.

Splits (:meth:`JetDataset.splits`): a jet's split is decided by (split seed, its file's digest,
its row in the file, that file's jet count) alone, so adding files moves no jet of the files
already there: a pretraining set can grow without a labelled test jet moving into it. Sizes are
exact per file (each file's rows ranked by a hash, cut at the rounded cumulative fractions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mae_tracker.data.errors import DataError
from mae_tracker.data.files import DataSpec, cached_file_digest, open_any, resolve_files
from mae_tracker.data.jetfile import DEFAULT_SPLIT_FRACTIONS, JetImageReader, as_indices
from mae_tracker.data.parquet_reader import DEFAULT_BLOCK_BYTES, DEFAULT_CACHE_BYTES, BlockCache, ParquetJetReader
from mae_tracker.data.splits import dataset_digest, format_class_balance, jet_uniforms, split_of_jets
from mae_tracker.data.tasks import task_name
from mae_tracker.data.validate import JetFileInfo, JetImagesInfo

__all__ = ["DatasetInfo", "JetDataset", "dataset_digest", "format_class_balance", "jet_uniforms", "open_dataset",
           "split_of_jets"]


@dataclass(frozen=True)
class DatasetInfo(JetImagesInfo):
    """What the files of a dataset share; the fields a JetFileInfo has, so code written for one
    file (tasks.class_names, the arms, inspect) reads it the same way."""

    path: Path  # the file (one file), the folder given, or the files' common folder
    files: tuple[Path, ...]
    images_key: str
    n_jets: int
    channels: int
    height: int
    width: int
    channel_names: tuple[str, ...]
    extra_keys: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)
    format: str = "hdf5"  # "hdf5", "parquet" or "mixed"
    labels_key: str = "y"
    channels_last: bool = False  # as the readers return images (always channels first)


def _agree(infos: list[JetFileInfo]) -> None:
    """Every file of a dataset has the first file's shape, channel names and task."""
    first = infos[0]
    for info in infos[1:]:
        if info.image_shape != first.image_shape:
            raise DataError(info.path, f"images are {info.image_shape} (C, H, W) but {first.path.name} has "
                                       f"{first.image_shape}: every file of a dataset needs the same shape "
                                       "and channels")
        if info.channel_names != first.channel_names:
            raise DataError(info.path, f"channels are {list(info.channel_names)} but {first.path.name} has "
                                       f"{list(first.channel_names)}: same channels in the same order needed")
        if task_name(info) != task_name(first):
            raise DataError(info.path, f"holds task {task_name(info)} but {first.path.name} holds "
                                       f"{task_name(first)}: one task per dataset")


def open_dataset(spec: DataSpec, *, check_values: bool = False, progress: bool = False,
                 digest_cache: Path | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> JetDataset:
    """Resolve, validate and digest the files of ``spec``; DataError (one line) on any problem.

    ``check_values`` scans every pixel of every file for NaN/inf (a pass over the data;
    reads check each batch anyway). ``digest_cache``: a folder remembering file digests by
    (path, size, mtime, inode), so a large dataset is hashed once. ``cache_bytes`` bounds the
    decoded Parquet blocks held (per clone); ``block_bytes`` the decoding unit of large row groups.
    """
    paths, root = resolve_files(spec)
    infos = [open_any(p, check_values=check_values, progress=progress) for p in paths]
    digests = []
    for path in (paths if not progress else _bar(paths, "sha256")):
        digests.append(cached_file_digest(path, digest_cache))
    first_with: dict[str, Path] = {}
    for path, digest in zip(paths, digests):
        if digest in first_with:
            raise DataError(path, f"has the same content as {first_with[digest]} (sha256 {digest[:12]})")
        first_with[digest] = path
    order = sorted(range(len(paths)), key=lambda i: digests[i])
    return JetDataset([infos[i] for i in order], [digests[i] for i in order], root=root,
                      cache_bytes=cache_bytes, block_bytes=block_bytes)


def _bar(items: list[Path], what: str) -> Any:
    from mae_tracker.progress import progress_bar

    return progress_bar(items, desc=what, unit="file")


class JetDataset:
    """Many jet files as one random-access source of jets (see the module docstring).

    Global jet ``i`` is row ``i - starts[f]`` of file ``f``. Readers are opened on first use;
    the Parquet readers of one dataset share one :class:`BlockCache` of ``cache_bytes``, and
    ``clone()`` (one per loader worker) gets its own readers and cache.
    """

    def __init__(self, infos: list[JetFileInfo], digests: list[str], *, root: Path,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        if not infos or len(infos) != len(digests):
            raise ValueError("a dataset needs one digest per file and at least one file")
        _agree(infos)
        self.file_infos = list(infos)
        self.file_digests = list(digests)
        self.cache_bytes, self.block_bytes = int(cache_bytes), int(block_bytes)
        self.starts = np.concatenate(([0], np.cumsum([i.n_jets for i in infos]))).astype(np.int64)
        self.digest = dataset_digest(self.file_digests)
        first = infos[0]
        extra = tuple(k for k in first.extra_keys if all(k in i.extra_keys for i in infos))
        attrs = {k: v for k, v in first.attrs.items() if all(i.attrs.get(k) == v for i in infos)}
        formats = {i.format for i in infos}
        self.info = DatasetInfo(path=Path(root), files=tuple(i.path for i in infos), images_key=first.images_key,
                                n_jets=int(self.starts[-1]), channels=first.channels, height=first.height,
                                width=first.width, channel_names=first.channel_names, extra_keys=extra,
                                attrs=attrs, format=formats.pop() if len(formats) == 1 else "mixed")
        self._open_state()

    def _open_state(self) -> None:
        self.cache = BlockCache(self.cache_bytes)
        self._readers: list[Any] = [None] * len(self.file_infos)
        self._labels: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:  # no handles, no cache: workers open their own
        return {k: v for k, v in self.__dict__.items() if k not in ("cache", "_readers", "_labels")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_state()

    def __len__(self) -> int:
        return self.info.n_jets

    def __repr__(self) -> str:
        return (f"JetDataset({str(self.info.path)!r}, files={len(self.file_infos)}, n_jets={self.info.n_jets}, "
                f"shape={self.info.image_shape}, digest={self.digest[:12]})")

    def __enter__(self) -> JetDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    def reader(self, f: int) -> JetImageReader | ParquetJetReader:
        """The reader of file ``f`` (opened on first use)."""
        if self._readers[f] is None:
            info = self.file_infos[f]
            self._readers[f] = (ParquetJetReader(info, cache=self.cache, block_bytes=self.block_bytes)
                                if info.format == "parquet" else JetImageReader(info))
        return self._readers[f]

    def file_records(self) -> list[dict[str, Any]]:
        """Path, sha256 and jet count of each file, in jet order (for logs and sparse copies)."""
        return [{"path": str(i.path), "sha256": d, "n_jets": i.n_jets}
                for i, d in zip(self.file_infos, self.file_digests)]

    def _by_file(self, idx: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(file, positions in ``idx``, rows in that file) for every file ``idx`` touches."""
        files = np.searchsorted(self.starts, idx, side="right") - 1
        order = np.argsort(files, kind="stable")
        cuts = np.flatnonzero(np.diff(files[order])) + 1
        return [(int(files[part[0]]), part, idx[part] - self.starts[files[part[0]]])
                for part in np.split(order, cuts) if len(part)]

    def read(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 (n, C, H, W) and labels int64 (n,), in the order of ``indices``."""
        idx = as_indices(indices, self.info.n_jets)
        if len(self.file_infos) == 1:
            return self.reader(0).read(idx)
        images = np.empty((len(idx), *self.info.image_shape), np.float32)
        labels = np.empty(len(idx), np.int64)
        for f, where, rows in self._by_file(idx):
            images[where], labels[where] = self.reader(f).read(rows)
        return images, labels

    def labels(self) -> np.ndarray:
        """All labels, int64, in jet order (8 bytes a jet)."""
        if self._labels is None:
            self._labels = np.concatenate([self.reader(f).labels() for f in range(len(self.file_infos))])
        return self._labels

    def read_extra(self, key: str, indices: Any) -> np.ndarray:
        """A per-jet column every file has (``pt``, ``m0``...) for ``indices``, in their order."""
        if key not in self.info.extra_keys:
            lacking = [i.path.name for i in self.file_infos if key not in i.extra_keys]
            raise DataError(self.info.path, f"per-jet column '{key}' is missing from {', '.join(lacking[:3])}"
                                            f"{' and others' if len(lacking) > 3 else ''} (in every file: "
                                            f"{list(self.info.extra_keys) or 'none'})")
        idx = as_indices(indices, self.info.n_jets)
        parts = [(where, self.reader(f).read_extra(key, rows)) for f, where, rows in self._by_file(idx)]
        out = np.empty(len(idx), np.result_type(*[v.dtype for _, v in parts]) if parts else np.float64)
        for where, values in parts:
            out[where] = values
        return out

    # ----------------------------------------------------------------------- splits

    def splits(self, fractions: dict[str, float] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Sorted global indices per split; a jet's split depends on (seed, file digest, row,
        file jet count) only, sizes exact per file (see the module docstring). Fractions as for ``make_splits``: >= 0, sum <= 1."""
        fractions = dict(DEFAULT_SPLIT_FRACTIONS if fractions is None else fractions)
        which = np.concatenate([split_of_jets(d, i.n_jets, fractions, seed)
                                for i, d in zip(self.file_infos, self.file_digests)])
        return {name: np.flatnonzero(which == k).astype(np.int64) for k, name in enumerate(fractions)}

    def file_classes(self) -> list[int | None]:
        """Per file, its one label when every jet of it has that label, else None."""
        out = []
        for f in range(len(self.file_infos)):
            values = np.unique(self.labels()[self.starts[f]:self.starts[f + 1]])
            out.append(int(values[0]) if len(values) == 1 else None)
        return out

    @property
    def class_per_file(self) -> bool:
        """True when every file holds jets of one class (e/gamma style: one file per class)."""
        return all(c is not None for c in self.file_classes())

    def class_balance(self, splits: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
        """Jets of each class per split, by class name: {split: {name1: n1, name0: n0}}."""
        names = self.info.class_names
        labels = self.labels()
        return {split: {names[0]: int(np.count_nonzero(labels[idx] == 1)),
                        names[1]: int(np.count_nonzero(labels[idx] == 0))} for split, idx in splits.items()}

    # ----------------------------------------------------------------------- reading order

    def storage_units(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per jet, dataset-wide ids of (its row group or HDF5 chunk: the unit read front to back,
        its block: the unit decoded at once); block ids ascend within a unit."""
        units, blocks = np.empty(len(indices), np.int64), np.empty(len(indices), np.int64)
        n_units, n_blocks = [0], [0]
        for f in range(len(self.file_infos)):
            reader = self.reader(f)
            if isinstance(reader, ParquetJetReader):
                n_units.append(n_units[-1] + len(reader.group_starts) - 1)
                n_blocks.append(n_blocks[-1] + reader.n_blocks)
            else:
                chunks = -(-self.file_infos[f].n_jets // self._chunk(f))
                n_units.append(n_units[-1] + chunks)
                n_blocks.append(n_blocks[-1] + chunks)
        for f, where, rows in self._by_file(np.asarray(indices, np.int64)):
            reader = self.reader(f)
            if isinstance(reader, ParquetJetReader):
                unit, block = reader.group_of(rows), reader.block_of(rows)
            else:
                unit = block = rows // self._chunk(f)
            units[where], blocks[where] = n_units[f] + unit, n_blocks[f] + block
        return units, blocks

    def _chunk(self, f: int) -> int:
        reader = self.reader(f)
        return max(1, reader.chunk_rows) if isinstance(reader, JetImageReader) else 1

    def max_block_rows(self) -> int:
        """The most jets one row group or chunk holds, over all files (1: any order reads as fast)."""
        rows = []
        for f in range(len(self.file_infos)):
            reader = self.reader(f)
            rows.append(int(np.diff(reader.group_starts).max()) if isinstance(reader, ParquetJetReader)
                        else self._chunk(f))
        return max(rows)

    def shuffled_order(self, indices: Any, *, seed: int = 0, epoch: int = 0,
                       window_jets: int | None = None) -> np.ndarray:
        """One epoch's shuffled reading order of ``indices``, seeded by (seed, epoch).

        Where every row group or chunk holds one jet (HDF5 chunks of one jet, CMS Parquet), a
        plain permutation: the very order :func:`epoch_order` gives. Else row groups are visited
        in a shuffled order, each one's blocks front to back (a large row group is then streamed
        once per epoch), and the jets of consecutive blocks are shuffled together in windows of
        about ``window_jets`` (default: half the block cache, so a window's blocks stay cached
        while its batches are read). A batch then mixes the jets of a window's few row groups.
        """
        order = np.asarray(indices, dtype=np.int64).reshape(-1)
        rng = np.random.default_rng((seed, epoch))
        if self.max_block_rows() <= 1:
            return order[rng.permutation(len(order))]
        if window_jets is None:
            window_jets = max(1, self.cache_bytes // (2 * 4 * int(np.prod(self.info.image_shape))))
        units, blocks = self.storage_units(order)
        unique_units, unit_index = np.unique(units, return_inverse=True)
        unit_rank = np.empty(len(unique_units), np.int64)
        unit_rank[rng.permutation(len(unique_units))] = np.arange(len(unique_units))
        unique_blocks, first, block_index = np.unique(blocks, return_index=True, return_inverse=True)
        # visiting order: row groups shuffled, each one's blocks in order
        visit = np.lexsort((unique_blocks, unit_rank[unit_index.reshape(-1)[first]]))
        block_rank = np.empty(len(unique_blocks), np.int64)
        block_rank[visit] = np.arange(len(unique_blocks))
        jets_rank = block_rank[block_index.reshape(-1)]
        counts = np.bincount(jets_rank, minlength=len(unique_blocks))
        window_of_rank = (np.cumsum(counts) - counts) // max(1, window_jets)  # whole blocks per window
        return order[np.lexsort((rng.random(len(order)), window_of_rank[jets_rank]))]

    # ----------------------------------------------------------------------- lifecycle

    def clone(self) -> JetDataset:
        """The same dataset with its own handles and cache (one per loader worker)."""
        clone = object.__new__(JetDataset)
        clone.__setstate__(self.__getstate__())
        return clone

    def close(self) -> None:
        for reader in self._readers:
            if reader is not None:
                reader.close()
        self._readers = [None] * len(self.file_infos)
        self.cache.clear()

    def check_values(self, skip: set[str] | frozenset[str] = frozenset(), *, progress: bool = False) -> list[str]:
        """Scan every pixel of each file whose sha256 is not in ``skip`` for NaN/inf (DataError
        naming the file); returns the sha256s scanned. With a record of files already scanned
        (by content), a grown dataset scans only its new files."""
        scanned = []
        for info, digest in zip(self.file_infos, self.file_digests):
            if digest not in skip:
                open_any(info.path, check_values=True, progress=progress)
                scanned.append(digest)
        return scanned

    def describe(self) -> dict[str, Any]:
        """Plain facts for logging: digest, counts, format, class per file, each file."""
        return {"digest": self.digest, "n_files": len(self.file_infos), "n_jets": self.info.n_jets,
                "format": self.info.format, "image_shape": list(self.info.image_shape),
                "class_per_file": self.class_per_file, "files": self.file_records()}
