"""Validation of jet-image HDF5 files: one clear DataError per problem, or a JetFileInfo.

Imported by :mod:`mae_tracker.data.jetfile`, which re-exports ``JetFileInfo`` and
``open_jet_file``; use them from there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mae_tracker.data.errors import DataError
from mae_tracker.data.tasks import class_names, task_name

IMAGE_KEYS = ("X_jets", "X")  # E2E quark/gluon, E2E electron/photon
LABEL_KEY = "y"
KNOWN_EXTRA_KEYS = ("pt", "m0")
DEFAULT_CHANNEL_NAMES = {"X_jets": ("Tracks", "ECAL", "HCAL"), "X": ("energy", "time"),
                         # CMS boosted top (Parquet): tracks, calorimeters, impact parameters, pixel layers
                         "X_jet": ("Tracks", "ECAL", "HCAL", "d0", "dz", "BPix1", "BPix2", "BPix3")}
MAX_CHANNELS = 8  # an axis this small is the channel axis; image sides are larger
SCAN_BLOCK_BYTES = 32 * 2**20  # validation/scans read this much decoded data at a time


class JetImagesInfo:
    """What every description of jet images (one file, a dataset of files) derives from its
    ``channels``, ``height``, ``width``, ``images_key`` and ``attrs``."""

    channels: int
    height: int
    width: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W): the shape models see, whatever the layout on disk."""
        return (self.channels, self.height, self.width)

    @property
    def class_names(self) -> tuple[str, str]:
        """(name of label 1, name of label 0), e.g. ("top", "QCD"); quark/gluon for old files."""
        return class_names(self)

    @property
    def task(self) -> str:
        """"quark-gluon", "top-qcd" or "electron-photon" (from the attributes or the image key)."""
        return task_name(self)


@dataclass(frozen=True)
class JetFileInfo(JetImagesInfo):
    """What :func:`open_jet_file` learned about a valid file (no data, cheap to pickle)."""

    path: Path
    images_key: str
    labels_key: str
    n_jets: int
    channels: int
    height: int
    width: int
    channels_last: bool
    channel_names: tuple[str, ...]
    extra_keys: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)
    format: str = "hdf5"  # or "parquet" (mae_tracker.data.parquet)


@contextmanager
def h5_errors(path: Path, what: str) -> Iterator[None]:
    """HDF5 read failures (damaged chunks, I/O errors) become one-line DataErrors."""
    try:
        yield
    except (OSError, RuntimeError, KeyError) as err:
        raise DataError(path, f"cannot read {what}, the file may be corrupt ({err})") from err


def check_readable_file(path: Path, kind: str) -> int:
    """The size of ``path``, or a DataError saying why it cannot be a ``kind`` file ("an HDF5", "a Parquet")."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, f"is a directory, expected {kind} file")
    if not os.access(path, os.R_OK):
        raise DataError(path, "no permission to read the file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(path, f"file is empty (0 bytes), not {kind} file")
    return size


def open_h5(path: Path, *, cache_bytes: int = 2**20) -> h5py.File:
    """Open read-only, turning every way this can fail into a DataError that says why."""
    size = check_readable_file(path, "an HDF5")
    if not h5py.is_hdf5(path):
        raise DataError(path, "not an HDF5 file (no HDF5 signature)")
    try:
        return h5py.File(path, "r", rdcc_nbytes=cache_bytes)
    except OSError as err:
        message = str(err)
        if "truncated" in message:
            expected = re.search(r"stored_eof = (\d+)", message)
            want = f", its header says {int(expected.group(1)):,}" if expected else ""
            raise DataError(path, f"truncated HDF5 file ({size:,} bytes on disk{want}); "
                                  "was it copied or written completely?") from err
        raise DataError(path, f"cannot open as HDF5, the file may be corrupt ({message})") from err


def _plain(value: Any) -> Any:
    """HDF5 attribute value -> plain Python (str, int, float, lists) so it can go to JSON."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def layout_from_attrs(path: Path, attrs: dict[str, Any]) -> bool | None:
    """Channels-last from an explicit attribute (``layout`` = NHWC/NCHW or ``channels_last``)."""
    if "layout" in attrs:
        value = str(attrs["layout"]).strip().lower()
        if value in ("nhwc", "channels_last", "channels-last"):
            return True
        if value in ("nchw", "channels_first", "channels-first"):
            return False
        raise DataError(path, f"attribute layout={attrs['layout']!r} not understood; use 'NHWC' or 'NCHW'")
    if "channels_last" in attrs:
        return bool(attrs["channels_last"])
    return None


def detect_layout(path: Path, key: str, shape: tuple[int, ...], attrs: dict[str, Any]) -> bool:
    """True for channels last: from the ``layout`` attribute, else the one small image axis."""
    explicit = layout_from_attrs(path, attrs)
    if explicit is not None:
        return explicit
    small = tuple(d <= MAX_CHANNELS for d in shape[1:])
    if small == (False, False, True):
        return True
    if small == (True, False, False):
        return False
    raise DataError(path, f"cannot tell which axis of {key} {shape} holds the channels (expected exactly "
                          f"one of the first or last image axes to be <= {MAX_CHANNELS}); set the "
                          f"attribute layout='NHWC' or 'NCHW' on the dataset")


def channel_names_of(images_key: str, channels: int, attrs: dict[str, Any]) -> tuple[str, ...]:
    """Channel names from the ``channel_names`` attribute, else the layout's defaults, else ch0..."""
    names = attrs.get("channel_names")
    if isinstance(names, str):  # JSON list or comma-separated
        try:
            names = json.loads(names)
        except ValueError:
            names = [n.strip() for n in names.split(",")]
    if isinstance(names, (list, tuple)) and len(names) == channels:
        return tuple(str(n) for n in names)
    default = DEFAULT_CHANNEL_NAMES.get(images_key, ())
    if len(default) == channels:
        return default
    return tuple(f"ch{i}" for i in range(channels))


def _check_labels(path: Path, labels: h5py.Dataset, n_jets: int) -> None:
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1):
        raise DataError(path, f"labels '{labels.name.lstrip('/')}' have shape {labels.shape}, expected (N,)")
    if labels.shape[0] != n_jets:
        raise DataError(path, f"length mismatch: {n_jets:,} images but {labels.shape[0]:,} labels")
    if labels.dtype.kind not in "biuf":
        raise DataError(path, f"labels have dtype {labels.dtype}, expected numbers 0/1")
    bad: set[float] = set()
    block = 2**20
    with h5_errors(path, "labels"):
        for start in range(0, n_jets, block):
            bad.update(non_binary_values(np.asarray(labels[start:start + block])))
    check_binary(path, bad)


def non_binary_values(values: np.ndarray) -> set[float]:
    """The distinct label values that are neither 0 nor 1 (NaN included)."""
    return {v for v in np.unique(values.reshape(-1)).tolist() if not (v == 0 or v == 1)}


def check_binary(path: Path, bad: set[float]) -> None:
    """DataError listing the bad label values found by :func:`non_binary_values`, if any."""
    if bad:
        shown = ", ".join(repr(v) for v in sorted(bad, key=str)[:6])
        raise DataError(path, f"labels must be 0 or 1, found other values: {shown}")


def _scan_values(path: Path, images: h5py.Dataset, progress: bool) -> None:
    """Chunked NaN/inf scan over the whole image dataset (never the whole file in memory)."""
    row_bytes = max(1, int(np.prod(images.shape[1:])) * 4)
    rows = max(1, SCAN_BLOCK_BYTES // row_bytes)
    starts = range(0, images.shape[0], rows)
    if progress:
        from mae_tracker.progress import progress_bar

        starts = progress_bar(starts, desc=f"checking {path.name}", unit="block")
    for start in starts:
        stop = min(start + rows, images.shape[0])
        with h5_errors(path, f"images {images.name.lstrip('/')}[{start}:{stop}]"):
            block = images[start:start + rows]
        finite = np.isfinite(block).all(axis=(1, 2, 3))
        if not finite.all():
            first = start + int(np.flatnonzero(~finite)[0])
            raise DataError(path, f"non-finite pixel values (NaN or inf) in {images.name.lstrip('/')}, "
                                  f"first at jet {first}")


def open_jet_file(path: str | os.PathLike[str], *, check_values: bool = True,
                  progress: bool = False) -> JetFileInfo:
    """Validate a jet-image file and describe it; DataError (one line) for anything wrong.

    ``check_values`` scans every pixel for NaN/inf (streamed in blocks); it costs one pass over the
    file, so pass False for very large files (:meth:`JetImageReader.read` still checks each batch).
    Labels are always checked (they are small).
    """
    path = Path(path).expanduser()
    with open_h5(path) as h5:
        keys = sorted(h5.keys())
        images_key = next((k for k in IMAGE_KEYS if k in h5), None)
        if images_key is None:
            raise DataError(path, f"no image dataset 'X_jets' or 'X'; keys present: {keys or 'none'}")
        if LABEL_KEY not in h5:
            raise DataError(path, f"no label dataset 'y'; keys present: {keys}")
        images, labels = h5[images_key], h5[LABEL_KEY]
        for key, obj in ((images_key, images), (LABEL_KEY, labels)):
            if not isinstance(obj, h5py.Dataset):
                raise DataError(path, f"'{key}' is a group, expected a dataset")
        shape = tuple(int(d) for d in images.shape)
        if len(shape) != 4:
            raise DataError(path, f"{images_key} has shape {shape}; expected 4 dimensions "
                                  "(N, H, W, C) or (N, C, H, W)")
        if images.dtype.kind not in "biuf":
            raise DataError(path, f"{images_key} has dtype {images.dtype}, expected numbers")
        n_jets = shape[0]
        if n_jets == 0:
            raise DataError(path, f"file holds 0 jets ({images_key} has shape {shape})")
        attrs = {k: _plain(v) for k, v in h5.attrs.items()}
        image_attrs = {k: _plain(v) for k, v in images.attrs.items()}
        layout_attrs = {**attrs, **image_attrs}  # the dataset's own attribute wins
        channels_last = detect_layout(path, images_key, shape, layout_attrs)
        channels, height, width = (shape[3], shape[1], shape[2]) if channels_last else shape[1:]
        if min(channels, height, width) == 0:
            raise DataError(path, f"{images_key} has an empty image axis: shape {shape}")
        _check_labels(path, labels, n_jets)
        extra_keys = []
        for key in keys:
            obj = h5[key]
            if key in (images_key, LABEL_KEY) or not isinstance(obj, h5py.Dataset):
                continue
            if obj.ndim == 1 and obj.shape[0] == n_jets:
                extra_keys.append(key)
            elif key in KNOWN_EXTRA_KEYS:
                raise DataError(path, f"length mismatch: {n_jets:,} images but '{key}' has shape {obj.shape}")
        if check_values:
            _scan_values(path, images, progress)
        return JetFileInfo(
            path=path.resolve(), images_key=images_key, labels_key=LABEL_KEY, n_jets=n_jets,
            channels=channels, height=height, width=width, channels_last=channels_last,
            channel_names=channel_names_of(images_key, channels, layout_attrs),
            extra_keys=tuple(extra_keys), attrs=attrs,
        )
