"""Small jet-image HDF5 files for the data-layer tests (h5py + numpy only, no generator).

Imported by test_jetfile.py and test_inspect_cli.py (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np


class ArrayReader:
    """Anything with read(indices) works for fitting: here, an in-memory array."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.image_shape = images.shape[1:]

    def read(self, indices):
        return self.images[indices].copy(), np.zeros(len(indices), np.int64)


def sparse_images(n: int, c: int = 3, h: int = 16, w: int = 16, *, occupancy: float = 0.05,
                  seed: int = 0) -> np.ndarray:
    """(n, C, H, W) float32, mostly zeros like real jet images, some values below 1e-3."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, c, h, w), np.float32)
    hit = rng.random(x.shape) < occupancy
    x[hit] = rng.exponential(2.0, hit.sum()).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = 5e-4  # below the zero-suppression threshold
    return x


def write_jets(path: Path, images: np.ndarray | None = None, labels: np.ndarray | None = None, *,
               n: int = 40, images_key: str = "X_jets", channels_last: bool = True,
               label_dtype: str = "float32", extras: tuple[str, ...] = ("pt", "m0"),
               attrs: dict | None = None, chunk_rows: int = 1) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write a file in the E2E layout; returns (path, images (N,C,H,W), int labels)."""
    if images is None:
        images = sparse_images(n)
    n = len(images)
    if labels is None:
        labels = np.arange(n) % 2
    stored = images.transpose(0, 2, 3, 1) if channels_last else images
    with h5py.File(path, "w") as h5:
        chunks = (max(1, min(chunk_rows, n)),) + stored.shape[1:] if n else None
        h5.create_dataset(images_key, data=stored, chunks=chunks, compression="lzf" if n else None)
        h5.create_dataset("y", data=np.asarray(labels).astype(label_dtype))
        rng = np.random.default_rng(1)
        for key in extras:
            h5.create_dataset(key, data=rng.uniform(70, 200, n).astype(np.float32))
        for key, value in (attrs or {}).items():
            h5.attrs[key] = value
    return path, images, np.asarray(labels).astype(np.int64)


def _raw(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as h5:
        for key, value in datasets.items():
            h5.create_dataset(key, data=value)
    return path


def _truncated(tmp: Path) -> Path:
    path, _, _ = write_jets(tmp / "truncated.h5", n=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_chunk(tmp: Path) -> Path:
    path, _, _ = write_jets(tmp / "corrupt.h5", n=20)
    with h5py.File(path, "r") as h5:
        chunk = h5["X_jets"].id.get_chunk_info(7)
    with path.open("r+b") as handle:  # overwrite one compressed chunk with garbage
        handle.seek(chunk.byte_offset)
        handle.write(b"\xff" * chunk.size)
    return path


def _with_bad_pixel(value: float) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        images = sparse_images(30)
        images[17, 1, 3, 4] = value
        return write_jets(tmp / "badpixel.h5", images)[0]
    return build


def _not_hdf5(tmp: Path) -> Path:
    path = tmp / "notes.h5"
    path.write_text("this is not an HDF5 file\n")
    return path


def _directory(tmp: Path) -> Path:
    path = tmp / "folder.h5"
    path.mkdir()
    return path


def _zero_bytes(tmp: Path) -> Path:
    path = tmp / "zero.h5"
    path.touch()
    return path


_N = 30
_X = np.zeros((_N, 16, 16, 3), np.float32)
_Y = (np.arange(_N) % 2).astype(np.float32)

# name -> (builder(tmp_path) -> path, phrase the one-line error must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda tmp: tmp / "does_not_exist.h5", "file not found"),
    "directory": (_directory, "is a directory"),
    "not_hdf5": (_not_hdf5, "not an HDF5 file"),
    "zero_bytes": (_zero_bytes, "empty (0 bytes)"),
    "truncated": (_truncated, "truncated HDF5 file"),
    "corrupt_chunk": (_corrupt_chunk, "may be corrupt"),
    "no_images": (lambda tmp: _raw(tmp / "noimg.h5", images=_X, y=_Y), "keys present: ['images', 'y']"),
    "no_labels": (lambda tmp: _raw(tmp / "nolab.h5", X_jets=_X, labels=_Y), "no label dataset 'y'"),
    "wrong_rank": (lambda tmp: _raw(tmp / "rank3.h5", X_jets=_X[..., 0], y=_Y), "expected 4 dimensions"),
    "length_mismatch": (lambda tmp: _raw(tmp / "short.h5", X_jets=_X, y=_Y[:-1]),
                        "30 images but 29 labels"),
    "pt_length_mismatch": (lambda tmp: _raw(tmp / "shortpt.h5", X_jets=_X, y=_Y, pt=_Y[:5]),
                           "'pt' has shape (5,)"),
    "nan_pixel": (_with_bad_pixel(np.nan), "NaN or inf"),
    "inf_pixel": (_with_bad_pixel(np.inf), "jet 17"),
    "labels_not_binary": (lambda tmp: _raw(tmp / "labels.h5", X_jets=_X, y=np.r_[_Y[:-2], 2.0, 0.5]),
                          "labels must be 0 or 1, found other values: 0.5, 2.0"),
    "zero_jets": (lambda tmp: _raw(tmp / "nojets.h5", X_jets=np.zeros((0, 16, 16, 3), np.float32),
                                   y=np.zeros(0, np.float32)), "0 jets"),
    "ambiguous_layout": (lambda tmp: _raw(tmp / "ambig.h5", X_jets=np.zeros((_N, 4, 16, 4), np.float32), y=_Y),
                         "layout='NHWC' or 'NCHW'"),
    "string_labels": (lambda tmp: _raw(tmp / "strlab.h5", X_jets=_X, y=np.array(["q"] * _N, dtype="S1")),
                      "expected numbers 0/1"),
}
