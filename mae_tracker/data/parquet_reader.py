"""Random access to a Parquet jet file (:mod:`mae_tracker.data.parquet`) with bounded memory.

The unit of reading is a *block*: a row group, or a slice of
``block_rows`` rows of a large one (decoded through ``iter_batches``, so a huge row group never
sits in memory whole). Decoded blocks (float32, channels first) live in an LRU
:class:`BlockCache` of ``cache_bytes``, shared by the readers of one dataset. Peak memory is
about ``cache_bytes`` + 4 x ``block_bytes`` (Arrow's doubles while decoding) + the batch asked
for, whatever the file size.

Access pattern. Reading a block costs the same whatever rows of it are wanted, and a large row
group is streamed front to back (an open stream continues; asking for an earlier block starts
it again). So a shuffled epoch should visit row groups in a shuffled order, each one's blocks in
order, and shuffle the jets inside a window of blocks that fits the cache: that is
:meth:`mae_tracker.data.dataset.JetDataset.shuffled_order`, which ``BatchIterator`` uses. With
one jet per row group (the CMS files) every order costs the same, and the order is a plain
permutation.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import as_indices, sorted_unique
from mae_tracker.data.parquet import decode_images, open_parquet, open_parquet_file, read_scalar_column
from mae_tracker.data.validate import JetFileInfo

__all__ = ["BlockCache", "DEFAULT_BLOCK_BYTES", "DEFAULT_CACHE_BYTES", "ParquetJetReader", "check_parquet_values"]

_TOKENS = itertools.count()
DEFAULT_CACHE_BYTES = 256 * 2**20
DEFAULT_BLOCK_BYTES = 32 * 2**20  # decoded float32 per block of a large row group
# One image column decodes on one thread anyway; Arrow's pool threads only contend with torch's
# (measured: ~2-5x slower reads with them once torch is imported).
USE_THREADS = False
MAX_STREAMS = 4  # large row groups streamed at once (a shuffle window can straddle a few)


class BlockCache:
    """Least-recently-used decoded blocks, at most ``max_bytes`` of them (one per reader clone)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.used = 0
        self._blocks: OrderedDict[Any, np.ndarray] = OrderedDict()

    def get(self, key: Any) -> np.ndarray | None:
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
        return block

    def put(self, key: Any, block: np.ndarray) -> None:
        if block.nbytes > self.max_bytes or key in self._blocks:
            return
        while self._blocks and self.used + block.nbytes > self.max_bytes:
            self.used -= self._blocks.popitem(last=False)[1].nbytes
        self._blocks[key] = block
        self.used += block.nbytes

    def has_room(self, nbytes: int) -> bool:
        """True when ``nbytes`` more fit without evicting anything."""
        return self.used + nbytes <= self.max_bytes

    def clear(self) -> None:
        self._blocks.clear()
        self.used = 0


class ParquetJetReader:
    """Images, labels and per-jet columns of one validated Parquet file, any rows in any order,
    with :class:`~mae_tracker.data.jetfile.JetImageReader`'s interface (``read`` returns
    float32 (n, C, H, W) and int64 labels). See the module docstring for memory and access."""

    def __init__(self, info_or_path: JetFileInfo | str | os.PathLike[str], *, cache: BlockCache | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.info = (info_or_path if isinstance(info_or_path, JetFileInfo)
                     else open_parquet_file(info_or_path))
        self._own_cache = cache is None
        self.cache = BlockCache() if cache is None else cache
        self.block_bytes = int(block_bytes)
        self.block_rows = max(1, self.block_bytes // (4 * int(np.prod(self.info.image_shape))))
        self._token = next(_TOKENS)  # cache keys: unique per reader object, never reused
        self._pf: pq.ParquetFile | None = None  # whole row groups and columns (pre-buffered reads)
        self._pid: int | None = None
        self._columns: dict[str, np.ndarray] = {}
        self._labels: np.ndarray | None = None
        # open streams of large row groups: group -> [next block in it, iter_batches], oldest first
        self._streams: OrderedDict[int, list[Any]] = OrderedDict()
        self._layout()

    def _layout(self) -> None:
        meta = self._file().metadata
        rows = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], np.int64)
        self.group_starts = np.concatenate(([0], np.cumsum(rows)))
        subs = -(-rows // self.block_rows)  # blocks per row group
        self.block_group = np.repeat(np.arange(len(rows)), subs)
        self.block_sub = np.arange(int(subs.sum())) - np.repeat(np.cumsum(subs) - subs, subs)
        self.block_starts = np.append(self.group_starts[self.block_group] + self.block_sub * self.block_rows,
                                      self.info.n_jets)
        self._dims = ((self.info.height, self.info.width, self.info.channels) if self.info.channels_last
                      else self.info.image_shape)

    def __len__(self) -> int:
        return self.info.n_jets

    def __repr__(self) -> str:
        return (f"ParquetJetReader({str(self.info.path)!r}, n_jets={self.info.n_jets}, "
                f"row_groups={len(self.group_starts) - 1}, shape={self.info.image_shape})")

    def __getstate__(self) -> dict[str, Any]:  # no handle, empty cache
        return {"info": self.info, "block_bytes": self.block_bytes, "max_bytes": self.cache.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["info"], block_bytes=state["block_bytes"])  # type: ignore[misc]
        self.cache.max_bytes = state["max_bytes"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def n_blocks(self) -> int:
        return len(self.block_group)

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """The row group holding each row."""
        return np.searchsorted(self.group_starts, rows, side="right") - 1

    def block_of(self, rows: np.ndarray) -> np.ndarray:
        """The block (unit of decoding) holding each row."""
        return np.searchsorted(self.block_starts, rows, side="right") - 1

    def _file(self) -> pq.ParquetFile:
        if self._pid != os.getpid():  # new, or after fork: the parent's handles are not ours
            self._pf, self._pid, self._streams = None, os.getpid(), OrderedDict()
        if self._pf is None:
            self._pf = open_parquet(self.info.path)
        return self._pf

    def _column(self, key: str) -> np.ndarray:
        if key not in self._columns:
            try:
                column = read_scalar_column(self._file(), key)  # not the image stream's handle
            except pa.ArrowException as err:
                raise DataError(self.info.path, f"cannot read column {key}, the file may be corrupt ({err})") from err
            self._columns[key] = column.to_numpy(zero_copy_only=False)
        return self._columns[key]

    def labels(self) -> np.ndarray:
        """All labels as int64 (N x 8 bytes, read once)."""
        if self._labels is None:
            self._labels = self._column(self.info.labels_key).astype(np.int64)
            del self._columns[self.info.labels_key]
        return self._labels

    def read_extra(self, key: str, indices: Any) -> np.ndarray:
        """A per-jet scalar column (``pt``, ``m0``, ``iphi``...) for ``indices``, in their order."""
        if key not in self.info.extra_keys:
            raise DataError(self.info.path, f"has no per-jet column '{key}' "
                                            f"(available: {list(self.info.extra_keys) or 'none'})")
        return self._column(key)[as_indices(indices, self.info.n_jets)]

    def read(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 (n, C, H, W) and labels int64 (n,), rows in the order of ``indices``."""
        idx = as_indices(indices, self.info.n_jets)
        rows, inverse = sorted_unique(idx)
        out = np.empty((len(rows), *self.info.image_shape), np.float32)
        self._file()  # (re)opens after a fork, before any open stream is used
        if len(rows) == 0:
            return out, self.labels()[idx]
        blocks = self.block_of(rows)
        edges = np.flatnonzero(np.diff(blocks)) + 1
        segments = list(zip(np.concatenate(([0], edges)).tolist(), np.append(edges, len(rows)).tolist()))
        missing: dict[int, list[tuple[int, int]]] = {}
        for s, e in segments:
            block = int(blocks[s])
            cached = self.cache.get((self._token, block))
            if cached is None:
                missing.setdefault(block, []).append((s, e))
            else:
                out[s:e] = cached[rows[s:e] - self.block_starts[block]]
        for block, data in self._decode(sorted(missing)):
            for s, e in missing[block]:
                out[s:e] = data[rows[s:e] - self.block_starts[block]]
        finite = np.isfinite(out).all(axis=(1, 2, 3))
        if not finite.all():
            bad = int(rows[np.flatnonzero(~finite)[0]])
            raise DataError(self.info.path, f"non-finite pixel values (NaN or inf) in {self.info.images_key}, "
                                            f"jet {bad}")
        return (out if inverse is None else out[inverse]), self.labels()[idx]

    def _decode(self, blocks: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(block, float32 (rows, C, H, W)) for each block, decoded and put in the cache.

        Blocks that are whole row groups are read several per call (any groups, up to
        ``block_bytes`` decoded); the blocks of a large row group are streamed with
        ``iter_batches`` up to the last one wanted.
        """
        sizes = np.diff(self.block_starts)
        group_sizes = np.diff(self.group_starts)
        whole = [b for b in blocks if sizes[b] == group_sizes[self.block_group[b]]]
        call: list[int] = []
        rows = 0
        for block in whole:
            if call and (rows + sizes[block]) * self.row_bytes > self.block_bytes:
                yield from self._read_groups(call)
                call, rows = [], 0
            call.append(block)
            rows += int(sizes[block])
        if call:
            yield from self._read_groups(call)
        wanted = sorted(set(blocks) - set(whole))
        for group in sorted({int(self.block_group[b]) for b in wanted}):
            yield from self._stream_group(group, {int(self.block_sub[b]) for b in wanted
                                                  if self.block_group[b] == group})

    @property
    def row_bytes(self) -> int:
        """Bytes of one decoded float32 image."""
        return 4 * int(np.prod(self.info.image_shape))

    def _as_model_layout(self, stored: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(stored.transpose(0, 3, 1, 2)) if self.info.channels_last else stored

    def _read_groups(self, blocks: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        groups = [int(self.block_group[b]) for b in blocks]
        spans = [(int(self.block_starts[b]), int(self.block_starts[b + 1])) for b in blocks]
        rows = np.concatenate([np.arange(s, e) for s, e in spans])
        try:
            column = self._file().read_row_groups(groups, columns=[self.info.images_key],
                                                  use_threads=USE_THREADS).column(0)
        except pa.ArrowException as err:
            raise DataError(self.info.path, f"cannot read row group(s) {groups[0]}..{groups[-1]} of "
                                            f"{self.info.images_key}, the file may be corrupt ({err})") from err
        data = self._as_model_layout(decode_images(column, self._dims, path=self.info.path,
                                                   key=self.info.images_key, rows=rows))
        del column
        pos = 0
        for block, (s, e) in zip(blocks, spans):
            part = data[pos:pos + e - s]
            part = part.copy() if len(blocks) > 1 else part  # a view would keep the whole call alive
            pos += e - s
            self.cache.put((self._token, block), part)
            yield block, part

    def _stream_group(self, group: int, subs: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Blocks ``subs`` of a large row group, decoded in order by one ``iter_batches`` stream
        that stays open, so reading a group front to back decodes it once. Blocks passed on the
        way are cached when they lie within half the cache before the last one wanted (the rest
        of a shuffle window) or when the cache has room."""
        first_block = int(np.searchsorted(self.block_group, group))
        stream = self._streams.get(group)
        if stream is None or stream[0] > min(subs):  # a new group, or behind the stream: restart
            handle = open_parquet(self.info.path, streaming=True, metadata=self._file().metadata)
            batches = handle.iter_batches(batch_size=self.block_rows, row_groups=[group],
                                          columns=[self.info.images_key], use_threads=USE_THREADS)
            stream = self._streams[group] = [0, batches]
            while len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
        self._streams.move_to_end(group)
        try:
            while stream[0] <= max(subs):
                sub, batch = stream[0], next(stream[1])
                stream[0] += 1
                block = first_block + sub
                start, stop = int(self.block_starts[block]), int(self.block_starts[block + 1])
                if len(batch) != stop - start:  # pyarrow cuts batches at block_rows inside a row group
                    raise DataError(self.info.path, f"row group {group}: got a batch of {len(batch)} rows, "
                                                    f"expected {stop - start}")
                key = (self._token, block)
                wanted = sub in subs
                nbytes = batch.num_rows * self.row_bytes
                # a block passed just before a wanted one is likely wanted next (the same window)
                near = (max(subs) - sub) * nbytes <= self.cache.max_bytes // 2
                if wanted or (self.cache.get(key) is None and (near or self.cache.has_room(nbytes))):
                    data = self._as_model_layout(decode_images(
                        batch.column(0), self._dims, path=self.info.path, key=self.info.images_key,
                        rows=np.arange(start, stop)))
                    self.cache.put(key, data)
                    if wanted:
                        yield block, data
        except pa.ArrowException as err:
            self._streams.pop(group, None)
            raise DataError(self.info.path, f"cannot read row group {group} of {self.info.images_key}, "
                                            f"the file may be corrupt ({err})") from err
        except StopIteration:
            self._streams.pop(group, None)
            raise DataError(self.info.path, f"row group {group} ended before block {max(subs)}") from None

    def clone(self) -> ParquetJetReader:
        """A reader of the same file with its own handle and cache (one per loader worker)."""
        clone = ParquetJetReader(self.info, block_bytes=self.block_bytes)
        clone.cache.max_bytes = self.cache.max_bytes
        return clone

    def close(self) -> None:
        """Drop the file handle (and the cache, when it is this reader's own)."""
        self._pf = None
        self._pid = None
        self._streams = OrderedDict()
        if self._own_cache:
            self.cache.clear()


def check_parquet_values(info: JetFileInfo, *, progress: bool = False) -> None:
    """Stream every image of a Parquet jet file once; DataError at the first NaN/inf."""
    reader = ParquetJetReader(info)
    starts: Any = range(0, info.n_jets, reader.block_rows)
    if progress:
        from mae_tracker.progress import progress_bar

        starts = progress_bar(starts, desc=f"checking {info.path.name}", unit="block")
    try:
        for start in starts:  # read() raises on NaN/inf
            reader.read(np.arange(start, min(info.n_jets, start + reader.block_rows)))
    finally:
        reader.close()
