"""The sparse copies in the cache dir: where a dataset's copy lives, building one ahead, pruning.

A copy is named by the digest of the data it was made from (one file: its sha256; a dataset:
the digest of its files' sha256s), so a changed file or a changed set of files gets a new copy
and leaves the old one behind for :func:`prune_sparse_copies`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mae_tracker.data.dataset import open_dataset
from mae_tracker.data.files import DataSpec
from mae_tracker.data.jetfile import file_digest
from mae_tracker.data.sparse import SparseJetImages, recorded_files, recorded_source, remove_copy, sparse_copy
from mae_tracker.data.splits import stale_files
from mae_tracker.paths import cache_dir

__all__ = ["CachedCopy", "build_sparse_copy", "digest_cache_dir", "prune_sparse_copies", "sparse_copies_root",
           "sparse_copy_dir"]


def sparse_copies_root() -> Path:
    return cache_dir() / "sparse"


def digest_cache_dir() -> Path:
    """Where file sha256s are remembered by (path, size, mtime, inode): a large dataset is hashed once."""
    return cache_dir() / "digests"


def sparse_copy_dir(digest: str) -> Path:
    """Where the sparse copy of a file or dataset lives: named by its content digest."""
    return sparse_copies_root() / digest


@dataclass
class CachedCopy:
    """A sparse copy in the cache (or an interrupted build, or a lone lock file) and its fate."""

    digest: str
    source: Path | None
    bytes: int
    stale: str  # why it can go; "" = it is the copy of its data as that data is now
    removed: bool = False


def _stale(digest: str, directory: Path, partial: Path) -> tuple[Path | None, str]:
    source = recorded_source(directory) or recorded_source(partial)
    if not directory.exists() and not partial.exists():
        return source, "a lock file of no copy"
    files = recorded_files(directory) if directory.exists() else recorded_files(partial)
    if files:  # a copy of a dataset (or a file, recorded as a one-file dataset)
        return source, stale_files(files, digest, digest_cache=digest_cache_dir())
    if source is None:
        return None, ""  # an interrupted build from before builds recorded their file: resumable
    if not source.is_file():
        return source, f"its file {source} is gone"
    if file_digest(source) != digest:
        return source, f"its file {source} has changed"
    return source, ""


def prune_sparse_copies(dry_run: bool = False) -> list[CachedCopy]:
    """Delete the sparse copies whose data is gone or has changed since (any of a dataset's
    files gone or changed), interrupted builds of such data and lock files left alone. A copy
    being built is left; runs reading a deleted copy keep their maps, and a run that needs it
    again rebuilds it. Returns every copy found, deleted or kept."""
    root = sparse_copies_root()
    stems = {p.name.split(".")[0] for p in root.iterdir()} if root.is_dir() else set()
    names = sorted(stem for stem in stems if re.fullmatch(r"[0-9a-f]{64}", stem))  # sha256 names only
    found = []
    for digest in names:
        directory, partial = root / digest, root / f"{digest}.partial"
        source, stale = _stale(digest, directory, partial)
        size = sum(f.stat().st_size for d in (directory, partial) if d.is_dir() for f in d.iterdir())
        entry = CachedCopy(digest, source, size, stale)
        if stale and not dry_run:
            entry.removed = remove_copy(directory)
        found.append(entry)
    return found


def build_sparse_copy(data: DataSpec, progress: bool = True) -> SparseJetImages:
    """The sparse copy that ``sparse_copy=True`` runs of ``data`` (a file, folder, glob or list)
    read, built (or finished) now: under torchrun, build it ahead so the other ranks do not wait
    on rank 0 for it. Building reads every pixel: it is also the NaN/inf scan."""
    dataset = open_dataset(data, digest_cache=digest_cache_dir(), progress=progress)
    return sparse_copy(dataset, sparse_copy_dir(dataset.digest), progress=progress)
