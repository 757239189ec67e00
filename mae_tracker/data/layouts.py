"""Writing the layouts real CMS data comes in, from any dataset, so that tests and users without
the CMS files exercise exactly the reading code the real files go through.

* Parquet (``--format parquet``): the quark/gluon and boosted-top layout. Image column
  ``X_jets`` (quark/gluon), ``X_jet`` (top/QCD) or ``X`` (e/gamma) as nested lists of doubles,
  channels first; ``y``, ``pt``, ``m0`` and the other per-jet columns as doubles; ``row_group_size``
  jets per row group (default 1, as the CMS files, whose readers index jets by row group). The
  dataset's attributes travel as JSON in the schema metadata ``mae_tracker`` (real files have
  none; the reader then uses the layout's defaults).
* HDF5 (``--format hdf5``): the E2E layout, channels last, one jet per chunk + lzf.
* ``files`` splits the jets into that many files (``<name>_run<i>_n<count>``);
  ``split_by_class`` writes one file (or ``files``) per class, named by the class, as the
  e/gamma pair ``SinglePhoton...hdf5`` / ``SingleElectron...hdf5`` comes.

Atomic: everything goes to a temporary folder beside ``out``, renamed onto ``out`` (which must
not exist, or be an empty folder) at the end; an error or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mae_tracker.atomic import atomic_path
from mae_tracker.data.jetfile import JetReader
from mae_tracker.data.parquet import METADATA_KEY
from mae_tracker.data.validate import MAX_CHANNELS
from mae_tracker.signals import sigterm_as_exit

__all__ = ["FORMATS", "PARQUET_IMAGE_COLUMN", "nested_list_array", "write_layout"]

FORMATS = ("hdf5", "parquet")
PARQUET_IMAGE_COLUMN = {"quark-gluon": "X_jets", "top-qcd": "X_jet", "electron-photon": "X"}
HDF5_IMAGE_KEY = {"electron-photon": "X"}  # else X_jets
WRITE_BLOCK_BYTES = 32 * 2**20  # decoded float32 images per block read from the source
_LAYOUT_ATTRS = ("layout", "channels_last")  # never copied: each writer states its own where needed


def nested_list_array(values: np.ndarray) -> pa.ListArray:
    """(n, a, b, c) numbers -> Arrow list<list<list<double>>> of n rows, built from offsets
    (no Python lists). Up to 2**31 values per call (32-bit offsets, as pyarrow writes lists)."""
    n, a, b, c = values.shape
    if values.size >= 2**31:
        raise ValueError(f"{values.size:,} values in one call; write in smaller blocks")
    array: pa.Array = pa.array(np.ascontiguousarray(values, dtype=np.float64).reshape(-1))
    for count, size in ((n * a * b, c), (n * a, b), (n, a)):
        offsets = (np.arange(count + 1, dtype=np.int64) * size).astype(np.int32)
        array = pa.ListArray.from_arrays(pa.array(offsets), array)
    return array


def _own_attrs(attrs: dict[str, Any], image_shape: tuple[int, int, int], layout: str) -> dict[str, Any]:
    """The source's attributes, with the layout stated only where the shape does not tell it
    (as in the real files: a 125x125 or 32x32 image's channel axis is found by its size)."""
    own = {k: v for k, v in attrs.items() if k not in _LAYOUT_ATTRS}
    c, h, w = image_shape
    if min(h, w) <= MAX_CHANNELS or c > MAX_CHANNELS:
        own["layout"] = layout
    return own


def _file_names(stem: str, counts: list[int], fmt: str) -> list[str]:
    ext = "snappy.parquet" if fmt == "parquet" else "h5"
    if len(counts) == 1:
        return [f"{stem}_n{counts[0]}.{ext}"]
    return [f"{stem}_run{i}_n{n}.{ext}" for i, n in enumerate(counts)]


def _blocks(rows: np.ndarray, row_bytes: int) -> list[np.ndarray]:
    step = max(1, WRITE_BLOCK_BYTES // row_bytes)
    return [rows[i:i + step] for i in range(0, len(rows), step)]


def _write_parquet(source: JetReader, rows: np.ndarray, path: Path, *, task: str, row_group_size: int) -> None:
    info = source.info
    key = PARQUET_IMAGE_COLUMN.get(task, "X_jets")
    extras = tuple(info.extra_keys)
    list_type = pa.list_(pa.list_(pa.list_(pa.float64())))
    schema = pa.schema([(key, list_type), ("y", pa.float64()), *[(k, pa.float64()) for k in extras]],
                       metadata={METADATA_KEY: json.dumps(_own_attrs(dict(info.attrs), info.image_shape, "NCHW"),
                                                          default=str).encode()})
    with pq.ParquetWriter(path, schema, compression="snappy") as writer:
        for part in _blocks(rows, 4 * int(np.prod(info.image_shape))):
            images, labels = source.read(part)  # (n, C, H, W): the CMS layout, channels first
            columns = [nested_list_array(images), pa.array(labels.astype(np.float64))]
            columns += [pa.array(source.read_extra(k, part).astype(np.float64)) for k in extras]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=row_group_size)


def _write_hdf5(source: JetReader, rows: np.ndarray, path: Path, *, task: str) -> None:
    info = source.info
    c, h, w = info.image_shape
    with h5py.File(path, "w-") as f:
        images = f.create_dataset(HDF5_IMAGE_KEY.get(task, "X_jets"), shape=(len(rows), h, w, c), dtype="float32",
                                  chunks=(1, h, w, c), compression="lzf")  # one jet per chunk, channels last
        labels = np.empty(len(rows), np.float32)
        extras = {k: np.empty(len(rows), np.float32) for k in info.extra_keys}
        done = 0
        for part in _blocks(rows, 4 * c * h * w):
            block, labels[done:done + len(part)] = source.read(part)
            images[done:done + len(part)] = block.transpose(0, 2, 3, 1)
            for key, values in extras.items():
                values[done:done + len(part)] = source.read_extra(key, part)
            done += len(part)
        f.create_dataset("y", data=labels)
        for key, values in extras.items():
            f.create_dataset(key, data=values)
        for key, value in _own_attrs(dict(info.attrs), info.image_shape, "NHWC").items():
            _set_attr(f, key, value)


def _set_attr(f: h5py.File, key: str, value: Any) -> None:
    try:
        f.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
    except (TypeError, ValueError):
        f.attrs[key] = json.dumps(value, default=str)


def write_layout(source: JetReader, out: str | os.PathLike[str], *, fmt: str = "parquet", files: int = 1,
                 split_by_class: bool = False, row_group_size: int = 1) -> list[Path]:
    """Write every jet of ``source`` (any reader or dataset) into the folder ``out`` as
    ``files`` files of ``fmt`` (per class with ``split_by_class``); returns the files written.

    Jets keep their order; file i of a group holds its i-th contiguous share.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    if files < 1 or row_group_size < 1:
        raise ValueError(f"files and row_group_size must be >= 1, got {files} and {row_group_size}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists; give a new folder (or an empty one) for a multi-file dataset")
    info = source.info
    task = str(info.task)
    labels = source.labels()
    groups: list[tuple[str, np.ndarray]]
    if split_by_class:
        names = info.class_names  # (label 1, label 0)
        groups = [(names[0], np.flatnonzero(labels == 1)), (names[1], np.flatnonzero(labels == 0))]
        groups = [(name, rows) for name, rows in groups if len(rows)]
    else:
        groups = [(out.name, np.arange(len(labels)))]
    written = []
    with sigterm_as_exit(), atomic_path(out) as tmp:
        tmp.mkdir()
        for stem, rows in groups:
            parts = [p for p in np.array_split(rows, min(files, len(rows))) if len(p)]
            for name, part in zip(_file_names(stem, [len(p) for p in parts], fmt), parts):
                if fmt == "parquet":
                    _write_parquet(source, part, tmp / name, task=task, row_group_size=row_group_size)
                else:
                    _write_hdf5(source, part, tmp / name, task=task)
                written.append(out / name)
        if out.exists():
            out.rmdir()  # empty (checked above); rename needs the name free
    return written

