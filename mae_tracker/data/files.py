"""Which files a dataset is, what they hold, and their content digests.

A dataset is given as a file, a folder (its HDF5 and Parquet files, not recursive, hidden
names skipped: atomic writers' temporary files start with a dot), a glob pattern, a list of
any of these, or a comma-separated string of them. Each file is opened by its signature
(HDF5 or Parquet), validated on its own (:func:`open_any`), and named in every error.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from mae_tracker.atomic import write_text_atomically
from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import file_digest
from mae_tracker.data.parquet import is_parquet, open_parquet_file
from mae_tracker.data.parquet_reader import check_parquet_values
from mae_tracker.data.validate import JetFileInfo, open_jet_file

__all__ = ["DataSpec", "DATA_SUFFIXES", "absolute_spec", "cached_file_digest", "open_any", "resolve_files",
           "spec_parts"]

DataSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
DATA_SUFFIXES = (".h5", ".hdf5", ".hdf", ".parquet", ".pq")
PARQUET_SUFFIXES = (".parquet", ".pq")
_GLOB_CHARS = set("*?[")


def _one(entry: str | os.PathLike[str]) -> list[Path]:
    text = os.fspath(entry)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith(".") and _has_data_suffix(p))
        if not found:
            raise DataError(path, f"no HDF5 or Parquet files ({', '.join(DATA_SUFFIXES)}) in this folder")
        return found
    if path.exists():
        return [path]
    if "," in text:  # before the glob: 'run*.parquet,extra.parquet' is a list holding a pattern
        return [p for part in text.split(",") if part.strip() for p in _one(part.strip())]
    if _GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(text, "no files match this pattern")
        return found
    raise DataError(path, "file not found")


def spec_parts(spec: DataSpec) -> list[str]:
    """The entries of a dataset given as a file, folder, glob, list or comma-separated string."""
    entries = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    parts: list[str] = []
    for entry in entries:
        text = os.fspath(entry).strip()
        if "," in text and not Path(text).expanduser().exists():
            parts += [part.strip() for part in text.split(",") if part.strip()]
        elif text:
            parts.append(text)
    return parts


def absolute_spec(spec: DataSpec, base: str | os.PathLike[str] | None = None) -> str:
    """The same dataset as one string with absolute entries (relative ones taken from ``base``,
    default the working directory), comma-joined: what a run, a sweep worker or a pipeline records
    and passes on, valid from any directory. Globs stay globs, folders stay folders."""
    root = Path(base) if base is not None else Path.cwd()
    return ",".join(os.path.normpath(str(root / Path(part).expanduser())) for part in spec_parts(spec))


def _has_data_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in DATA_SUFFIXES)


def resolve_files(spec: DataSpec) -> tuple[list[Path], Path]:
    """(the files, in the order found, and the dataset's root) of a file, folder, glob or list.

    The root is the file for a single file, the folder for a folder, else the files' common
    folder. A file named twice is a DataError (it would count its jets twice).
    """
    entries = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not entries:
        raise DataError("<dataset>", "no files given")
    files: list[Path] = []
    seen: dict[Path, Path] = {}
    for entry in entries:
        for path in _one(entry):
            key = path.resolve()
            if key in seen:
                raise DataError(path, "is listed twice in the dataset")
            seen[key] = path
            files.append(path)
    first = Path(os.fspath(entries[0])).expanduser()
    if len(entries) == 1 and first.is_dir():
        root = first
    elif len(files) == 1:
        root = files[0]
    else:
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    return files, root


def open_any(path: Path, *, check_values: bool = False, progress: bool = False) -> JetFileInfo:
    """Validate an HDF5 or Parquet jet file (chosen by signature, else by suffix)."""
    if is_parquet(path) or path.name.lower().endswith(PARQUET_SUFFIXES):
        info = open_parquet_file(path)
        if check_values:
            check_parquet_values(info, progress=progress)
        return info
    return open_jet_file(path, check_values=check_values, progress=progress)


def cached_file_digest(path: Path, cache: Path | None = None) -> str:
    """sha256 of the file's bytes; with ``cache``, remembered by (path, size, mtime, inode) so
    a large dataset is not re-read by every run (a file changed in place changes its mtime)."""
    if cache is None:
        return file_digest(path)
    stat = path.stat()
    key = [str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev]
    entry = cache / (hashlib.sha256(json.dumps(key[:1]).encode()).hexdigest() + ".json")
    try:
        recorded = json.loads(entry.read_text())
        if recorded.get("key") == key:
            return str(recorded["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = file_digest(path)
    write_text_atomically(entry, json.dumps({"key": key, "sha256": digest}))
    return digest
