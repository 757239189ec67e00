"""Jet images from Parquet files (the CMS E2E layouts), read by row group into numpy.

Layouts (detected and validated per file, one-line :class:`DataError` naming the file otherwise):

* quark/gluon: ``X_jets`` nested lists (3, 125, 125), channels first, doubles; ``y``, ``pt``, ``m0``;
* boosted top vs QCD: ``X_jet`` (8, 125, 125); ``y``, ``pt``, ``m0``, ``iphi``, ``ieta``;
* ``X`` (e/gamma shape) is accepted too. Channels last is detected as for HDF5 (the one axis
  of at most 8), and the ``layout`` attribute, if any, decides.

The CMS files hold one jet per row group (their readers index jets with ``read_row_group(i)``);
files written by other tools may hold a million rows in one. Attributes (task, class names,
channel names) come from the schema metadata key ``mae_tracker`` (JSON) that
:mod:`mae_tracker.data.layouts` writes; files without it get their layout's defaults.

Decoding never builds Python lists: each nested list level is checked (every jet has the same
shape, no nulls) and flattened down to the values, which are reshaped (``to_pylist`` is
orders of magnitude slower).

Random access, caching and memory: :mod:`mae_tracker.data.parquet_reader`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mae_tracker.data.errors import DataError
from mae_tracker.data.validate import (JetFileInfo, channel_names_of, check_binary, check_readable_file,
                                       detect_layout, non_binary_values)

__all__ = ["IMAGE_COLUMNS", "METADATA_KEY", "decode_images", "is_parquet", "open_parquet", "open_parquet_file",
           "read_scalar_column"]

IMAGE_COLUMNS = ("X_jets", "X_jet", "X")  # quark/gluon, boosted top, e/gamma
LABEL_COLUMN = "y"
METADATA_KEY = b"mae_tracker"
READ_BUFFER_BYTES = 4 * 2**20  # stream column chunks instead of reading each whole
LAYOUT_DEFAULTS = {  # attributes of files without mae_tracker metadata, by image column
    "X_jets": {"task": "quark-gluon", "class_names": ["quark", "gluon"]},
    "X_jet": {"task": "top-qcd", "class_names": ["top", "QCD"]},
    "X": {"task": "electron-photon", "class_names": ["electron", "photon"]},
}


def is_parquet(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the Parquet magic bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError:
        return False


def open_parquet(path: Path, *, streaming: bool = False, metadata: Any = None) -> pq.ParquetFile:
    """``pyarrow.parquet.ParquetFile``; DataError saying why it cannot be opened.

    Not ``streaming``: column chunks are fetched whole, nearby ones in one read (pre-buffered;
    ~3x faster on files of one jet per row group), for reads whose size the caller bounds.
    ``streaming``: buffered reads of ``READ_BUFFER_BYTES``, for row groups too large to fetch
    whole. ``metadata`` (a FileMetaData already parsed) saves parsing the footer again.
    """
    size = check_readable_file(path, "a Parquet")
    if not is_parquet(path):
        raise DataError(path, "not a Parquet file (no PAR1 signature)")
    try:
        if streaming:
            return pq.ParquetFile(path, metadata=metadata, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
        return pq.ParquetFile(path, metadata=metadata, pre_buffer=True)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"cannot open as Parquet ({size:,} bytes), the file may be truncated or "
                              f"corrupt ({err})") from err


def _nesting(path: Path, key: str, kind: pa.DataType) -> int:
    depth = 0
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        depth, kind = depth + 1, kind.value_type
    if depth != 3 or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        raise DataError(path, f"column {key} has type {kind if depth == 3 else 'of nesting ' + str(depth)}; "
                              "expected nested lists (3 levels: channels, rows, columns) of numbers")
    return depth


def decode_images(column: pa.Array | pa.ChunkedArray, dims: tuple[int, int, int], *, path: Path, key: str,
                  rows: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Nested-list images -> float32 ``(n, *dims)`` as stored, checking every level's lengths.

    Flattens each level to its values (Arrow slices, no Python objects) and reshapes; a jet
    of another shape or a null anywhere is a DataError naming the file, column and jet (its
    row in the file: ``rows[i]`` for the i-th jet of ``column``, default i).
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    n_total = sum(len(c) for c in chunks)
    rows = np.arange(n_total) if rows is None else rows
    if out is None:
        out = np.empty((n_total, *dims), np.float32)
    pos, per_row = 0, 1
    for chunk in chunks:
        n, level, per_row = len(chunk), chunk, 1
        for depth, size in enumerate(dims):
            if level.null_count:
                bad = int(np.flatnonzero(np.asarray(level.is_null()))[0]) // per_row
                raise DataError(path, f"null image data in {key}, jet {rows[pos + bad]}")
            lengths = np.asarray(pc.list_value_length(level))
            wrong = np.flatnonzero(lengths != size)
            if wrong.size:
                bad = int(wrong[0]) // per_row
                found = int(lengths[wrong[0]])
                raise DataError(path, f"{key} jet {rows[pos + bad]} has {found} entries on image axis "
                                      f"{depth + 1}, expected {size} (all jets must have shape {dims})")
            level, per_row = level.flatten(), per_row * size
        if level.null_count:
            bad = int(np.flatnonzero(np.asarray(level.is_null()))[0]) // per_row
            raise DataError(path, f"null pixel value in {key}, jet {rows[pos + bad]}")
        out[pos:pos + n] = level.to_numpy(zero_copy_only=False).reshape(n, *dims)
        pos += n
    return out


def read_scalar_column(pf: pq.ParquetFile, key: str) -> pa.ChunkedArray:
    """A whole per-jet column, streamed (``read_row_groups`` reserves memory by the size of
    the whole row group, images included: hundreds of MB for a column of doubles)."""
    batches = [b.column(0) for b in pf.iter_batches(batch_size=2**16, columns=[key], use_threads=False)]
    return pa.chunked_array(batches, type=pf.schema_arrow.field(key).type)


def _attrs(path: Path, schema: pa.Schema, key: str) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return dict(LAYOUT_DEFAULTS.get(key, {}))
    try:
        attrs = json.loads(raw)
    except ValueError as err:
        raise DataError(path, f"schema metadata '{METADATA_KEY.decode()}' is not JSON ({err})") from err
    if not isinstance(attrs, dict):
        raise DataError(path, f"schema metadata '{METADATA_KEY.decode()}' is not a JSON object")
    return attrs


def _is_scalar_number(kind: pa.DataType) -> bool:
    return pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)


def open_parquet_file(path: str | os.PathLike[str]) -> JetFileInfo:
    """Validate a Parquet jet file and describe it (``format="parquet"``); DataError otherwise.

    Reads the footer, the first jet (for the image shape) and the labels;
    ``parquet_reader.check_parquet_values`` streams every image once for NaN/inf.
    """
    path = Path(path).expanduser()
    pf = open_parquet(path, streaming=True)  # the first jet only: never a whole row group
    schema = pf.schema_arrow
    names = list(schema.names)
    key = next((k for k in IMAGE_COLUMNS if k in names), None)
    if key is None:
        raise DataError(path, f"no image column 'X_jets', 'X_jet' or 'X'; columns present: {names or 'none'}")
    if LABEL_COLUMN not in names:
        raise DataError(path, f"no label column 'y'; columns present: {names}")
    _nesting(path, key, schema.field(key).type)
    if not _is_scalar_number(schema.field(LABEL_COLUMN).type):
        raise DataError(path, f"labels 'y' have type {schema.field(LABEL_COLUMN).type}, expected numbers 0/1")
    n_jets = int(pf.metadata.num_rows)
    if n_jets == 0:
        raise DataError(path, "file holds 0 jets")
    try:
        first = next(pf.iter_batches(batch_size=1, columns=[key], use_threads=False)).column(0)
        level, dims = first, []
        for _ in range(3):
            if level.null_count or len(level) == 0:
                raise DataError(path, f"{key} jet 0 is null or empty")
            dims.append(int(pc.list_value_length(level)[0].as_py()))
            level = level.flatten()
        labels = read_scalar_column(pf, LABEL_COLUMN)
    except pa.ArrowException as err:
        raise DataError(path, f"cannot read the file, it may be corrupt ({err})") from err
    attrs = _attrs(path, schema, key)
    shape = (n_jets, *dims)
    channels_last = detect_layout(path, key, shape, attrs)
    channels, height, width = (dims[2], dims[0], dims[1]) if channels_last else tuple(dims)
    if min(channels, height, width) == 0:
        raise DataError(path, f"{key} has an empty image axis: shape {tuple(dims)}")
    if labels.null_count:
        raise DataError(path, "labels 'y' contain nulls")
    check_binary(path, non_binary_values(labels.to_numpy(zero_copy_only=False)))
    extra_keys = tuple(n for n in names if n not in (key, LABEL_COLUMN) and _is_scalar_number(schema.field(n).type))
    info = JetFileInfo(path=path.resolve(), images_key=key, labels_key=LABEL_COLUMN, n_jets=n_jets,
                       channels=channels, height=height, width=width, channels_last=channels_last,
                       channel_names=channel_names_of(key, channels, attrs), extra_keys=extra_keys,
                       attrs=attrs, format="parquet")
    return info
