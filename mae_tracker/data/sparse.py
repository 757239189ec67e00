"""A sparse copy of a jet-image file or dataset: only the non-zero pixels, memory-mapped, built once.

Why: a 125x125x3 jet is 183 KiB of float32, of which ~1 % is non-zero. Stored with lzf in chunks
of one jet (as the generator and the CMS E2E files store it), every read decompresses the whole
image, and lzf decompression runs at ~2,500 jets/s on one core (bench/bench_loader.py): slower
than a small model trains. The sparse copy keeps, per jet, the flat channels-first positions and
the values of its non-zero pixels. Reading a batch gathers them and scatters them into zeros:
tens of thousands of jets/s on one core, and exact (the same float32 values, so the same numbers).

The source is any reader: one HDF5 file, or a :class:`~mae_tracker.data.dataset.JetDataset` of
HDF5 and Parquet files (read front to back, one pass). A copy is a directory (the caller names it
by the source's sha256, a dataset's by its digest, so a changed file gets a new copy):

* ``meta.json``: format, source (the file, or the dataset's folder and ``files``: each file's
  path, sha256 and jet count), number of jets, image shape (C, H, W), dtypes, non-zeros;
* ``offsets.bin``: int64, n_jets + 1; jet i's pixels are entries offsets[i]:offsets[i+1] of
* ``pixels.bin``: uint16 flat position in (C, H, W) (int32 for images over 65,536 values), and
* ``values.bin``: float32 pixel values;
* ``labels.npy``: int64 labels.

Building streams the file in blocks and appends to the .bin files of ``<name>.partial/``,
recording after each block how far it got (``progress.json``). An interrupted build resumes at
the last recorded block (bytes past it are cut off); the directory gets its final name only
when complete, so a half-built copy is never read. A lock file serialises builders (parallel
sweep trials, torchrun ranks): the second one waits, then opens the finished copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mae_tracker.atomic import write_text_atomically
from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import JetReader, as_indices

__all__ = ["SparseJetImages", "recorded_files", "recorded_source", "remove_copy", "sparse_copy"]

FORMAT = "mae-tracker-sparse/1"
BLOCK_BYTES = 64 * 2**20  # decoded float32 images per read while building


def _pixel_dtype(image_values: int) -> np.dtype:
    return np.dtype(np.uint16 if image_values <= 2**16 else np.int32)


def _mapped(path: Path, dtype: np.dtype | str, count: int) -> np.ndarray:
    """A read-only memory map of ``count`` items (an empty array for 0: mmap refuses empty files)."""
    if count == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class SparseJetImages:
    """A finished sparse copy of ``source``'s images, with the reader's interface: ``read``
    returns dense float32 (n, C, H, W) images and int64 labels for any indices, in their order.

    Per-jet extras (``pt``, ``m0``...) are read from the source file. Workers share one object
    (``clone`` returns it): the maps are read-only.
    """

    def __init__(self, directory: str | os.PathLike[str], source: JetReader) -> None:
        self.directory = Path(directory)
        self.source = source
        self.info = source.info
        meta_path = self.directory / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(meta_path, f"unreadable sparse copy: {err}") from err
        expected = {"format": FORMAT, "n_jets": self.info.n_jets, "image_shape": list(self.info.image_shape)}
        found = {key: meta.get(key) for key in expected}
        if found != expected:
            raise DataError(self.directory, f"sparse copy does not match {self.info.path}: "
                                            f"has {found}, expected {expected}; delete it to rebuild")
        self.meta = meta
        self._open()

    def _open(self) -> None:
        n, nonzero = self.meta["n_jets"], self.meta["nonzero"]
        self._offsets = _mapped(self.directory / "offsets.bin", np.int64, n + 1)
        self._pixels = _mapped(self.directory / "pixels.bin", self.meta["pixel_dtype"], nonzero)
        self._values = _mapped(self.directory / "values.bin", np.float32, nonzero)
        self._labels = np.load(self.directory / "labels.npy")
        self._image_values = int(np.prod(self.info.image_shape))

    def __getstate__(self) -> dict[str, Any]:  # maps are reopened, never pickled
        return {"directory": self.directory, "source": self.source, "info": self.info, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.info.n_jets

    def __repr__(self) -> str:
        return f"SparseJetImages({str(self.directory)!r}, n_jets={self.info.n_jets}, nonzero={self.meta['nonzero']})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def occupancy(self) -> float:
        """Fraction of pixel values that are non-zero."""
        return self.meta["nonzero"] / max(1, self.info.n_jets * self._image_values)

    def labels(self) -> np.ndarray:
        return self._labels

    def read(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 (n, C, H, W) and labels int64 (n,), rows in the order of ``indices``."""
        idx = as_indices(indices, self.info.n_jets)
        starts = np.asarray(self._offsets[idx])
        counts = np.asarray(self._offsets[idx + 1]) - starts
        # Entry j of the gathered arrays is entry pos[j] of the copy: each jet's run of entries,
        # one after the other, without a Python loop over jets.
        first = np.cumsum(counts) - counts
        pos = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - first, counts)
        flat = self._pixels[pos].astype(np.int64)
        flat += np.repeat(np.arange(len(idx), dtype=np.int64) * self._image_values, counts)
        images = np.zeros(len(idx) * self._image_values, dtype=np.float32)
        images[flat] = self._values[pos]
        return images.reshape((len(idx), *self.info.image_shape)), self._labels[idx]

    def read_extra(self, key: str, indices: Any) -> np.ndarray:
        return self.source.read_extra(key, indices)

    def clone(self) -> SparseJetImages:
        return self

    def close(self) -> None:
        self.source.close()


def sparse_copy(reader: JetReader, directory: str | os.PathLike[str], *,
                progress: bool = False) -> SparseJetImages:
    """The sparse copy of ``reader``'s file in ``directory``; built first (or its interrupted
    build resumed) if it is not there yet."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Opened under the lock too: remove_copy cannot delete it between the check and the maps.
    with _exclusive(directory.with_name(directory.name + ".lock")):
        if not (directory / "meta.json").is_file():  # or another process built it meanwhile
            _build(reader, directory, progress)
        return SparseJetImages(directory, reader)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    while True:
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                # remove_copy deletes lock files while holding them: a process that waited on a
                # deleted one must lock the file now at the path, or two builders could run.
                if _same_file(handle, lock_path):
                    yield
                    return
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _same_file(handle: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def recorded_source(directory: str | os.PathLike[str]) -> Path | None:
    """The file a copy was made from, as its ``meta.json`` (or, for an interrupted build
    ``<name>.partial``, its ``progress.json``) records it; None where nothing says."""
    for name in ("meta.json", "progress.json"):
        path = Path(directory) / name
        if path.is_file():
            try:
                source = json.loads(path.read_text()).get("source")
            except (OSError, ValueError):
                return None
            return Path(source) if source else None
    return None


def recorded_files(directory: str | os.PathLike[str]) -> list[tuple[Path, str]] | None:
    """(path, sha256) of every file of the dataset a copy (or its interrupted build) was made
    from, as recorded; None for a copy of one file recorded only as ``source``."""
    for name in ("meta.json", "progress.json"):
        path = Path(directory) / name
        if path.is_file():
            try:
                files = json.loads(path.read_text()).get("files")
            except (OSError, ValueError):
                return None
            return [(Path(f["path"]), str(f["sha256"])) for f in files] if files else None
    return None


def _source_record(reader: JetReader) -> dict[str, Any]:
    """What a copy records about its source: the path, and for a dataset of files each file."""
    record: dict[str, Any] = {"source": str(reader.info.path)}
    files = getattr(reader, "file_records", None)
    if callable(files):
        record["files"] = files()
    return record


def remove_copy(directory: str | os.PathLike[str]) -> bool:
    """Delete a copy, its interrupted build and its lock file; False (nothing deleted) while
    a builder holds the lock. Runs reading the copy keep their memory maps."""
    directory = Path(directory)
    lock_path = directory.with_name(directory.name + ".lock")
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if not _same_file(handle, lock_path):  # another remover got here first
                return False
            for path in (directory, directory.with_name(directory.name + ".partial")):
                if path.exists():
                    shutil.rmtree(path)
            lock_path.unlink()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def _build(reader: JetReader, directory: Path, progress: bool) -> None:
    partial = directory.with_name(directory.name + ".partial")
    partial.mkdir(exist_ok=True)
    n = reader.info.n_jets
    image_values = int(np.prod(reader.info.image_shape))
    pixel_dtype = _pixel_dtype(image_values)
    state_path = partial / "progress.json"
    source = _source_record(reader)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"jets": 0, "nonzero": 0}
    done, nonzero = int(state["jets"]), int(state["nonzero"])
    names = {"offsets": 8 * (done + 1), "pixels": pixel_dtype.itemsize * nonzero, "values": 4 * nonzero}
    files = {}
    for name, size in names.items():  # cut off whatever an interruption wrote past the record
        path = partial / f"{name}.bin"
        path.touch()
        os.truncate(path, min(size, path.stat().st_size))
        files[name] = open(path, "ab")
    try:
        if done == 0 and files["offsets"].tell() == 0:
            files["offsets"].write(np.zeros(1, np.int64).tobytes())
        block = max(1, BLOCK_BYTES // (4 * image_values))
        starts = range(done, n, block)
        if progress:
            from mae_tracker.progress import progress_bar

            starts = progress_bar(starts, desc=f"sparse copy of {reader.info.path.name}", unit="block",
                          initial=done // block, total=-(-n // block))
        for start in starts:
            stop = min(n, start + block)
            images, _ = reader.read(np.arange(start, stop))  # DataError on NaN/inf: never copied
            flat = images.reshape(-1)
            where = np.flatnonzero(flat)  # in order: jet by jet, each jet's pixels in order
            rows, positions = np.divmod(where, image_values)
            ends = nonzero + np.cumsum(np.bincount(rows, minlength=stop - start))
            files["pixels"].write(positions.astype(pixel_dtype).tobytes())
            files["values"].write(flat[where].astype(np.float32).tobytes())
            files["offsets"].write(ends.astype(np.int64).tobytes())
            for handle in files.values():
                handle.flush()
            done, nonzero = stop, int(ends[-1]) if len(ends) else nonzero
            write_text_atomically(state_path, json.dumps({"jets": done, "nonzero": nonzero, **source}))
    finally:
        for handle in files.values():
            handle.close()
    np.save(partial / "labels.npy", reader.labels().astype(np.int64))
    meta = {"format": FORMAT, **source, "n_jets": n,
            "image_shape": list(reader.info.image_shape), "pixel_dtype": pixel_dtype.name, "nonzero": nonzero}
    write_text_atomically(partial / "meta.json", json.dumps(meta, indent=1))
    state_path.unlink()
    os.replace(partial, directory)
