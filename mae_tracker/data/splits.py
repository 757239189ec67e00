"""Identity and splits of a dataset of files, by content: digests and per-jet split assignment.

A dataset's digest is the sha256 of its files' sorted sha256s (one file: its own sha256), so it
does not depend on file names, folders or listing order. A jet's split is decided by (split seed,
its file's sha256, its row, its file's jet count) alone, with exact sizes per file (the
"per-file-hash" split scheme): adding files moves no jet already there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mae_tracker.data.files import cached_file_digest

__all__ = ["SPLIT_SCHEME", "dataset_digest", "format_class_balance", "jet_uniforms", "split_of_jets", "stale_files"]

DIGEST_FORMAT = "mae-tracker-dataset/1"
SPLIT_SCHEME = "per-file-hash"  # logged as the param split_scheme; runs without it used "permutation"


def dataset_digest(file_digests: list[str]) -> str:
    """Order-independent digest of a set of files (one file: its own digest)."""
    if len(file_digests) == 1:
        return file_digests[0]
    text = "\n".join([DIGEST_FORMAT, *sorted(file_digests)])
    return hashlib.sha256(text.encode()).hexdigest()


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def jet_uniforms(file_digest: str, rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uniform number in [0, 1) per (seed, file digest, row): splitmix64 of the row keyed by a
    hash of the seed and digest. Vectorised; the same on every machine and numpy version."""
    key = int.from_bytes(hashlib.sha256(f"{DIGEST_FORMAT}:{seed}:{file_digest}".encode()).digest()[:8], "little")
    z = np.asarray(rows, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = (z ^ (z >> np.uint64(31))) & _MASK64
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _check_fractions(fractions: dict[str, float]) -> np.ndarray:
    values = np.array(list(fractions.values()), dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"split fractions must be finite and >= 0, got {fractions}")
    if values.sum() > 1 + 1e-9:
        raise ValueError(f"split fractions sum to {values.sum():.6g} > 1: {fractions}")
    return values


def split_of_jets(file_digest: str, n_jets: int, fractions: dict[str, float], seed: int = 0) -> np.ndarray:
    """The split number (position in ``fractions``) of each row of a file; -1 = in no split.

    Exact sizes per file: the file's rows ranked by :func:`jet_uniforms` (seed, file sha256,
    row) are cut at the rounded cumulative fractions of its jet count, as ``make_splits`` cuts
    its permutation. A row's split depends on (seed, file sha256, row, file jet count) only, so
    adding files to a dataset moves no jet of the files already in it."""
    bounds = np.minimum(np.round(np.cumsum(_check_fractions(fractions)) * n_jets).astype(np.int64), n_jets)
    order = np.argsort(jet_uniforms(file_digest, np.arange(n_jets), seed), kind="stable")
    which = np.full(n_jets, -1, dtype=np.int8)
    start = 0
    for k, end in enumerate(bounds.tolist()):
        which[order[start:end]] = k
        start = max(start, end)
    return which


def format_class_balance(balance: dict[str, dict[str, int]]) -> str:
    """One line per split: 'pretrain: 2,510 electron / 2,490 photon (50.2 % electron)'."""
    lines = []
    for split, counts in balance.items():
        (name1, n1), (name0, n0) = counts.items()
        share = f" ({100 * n1 / (n1 + n0):.1f} % {name1})" if n1 + n0 else " (empty)"
        lines.append(f"{split}: {n1:,} {name1} / {n0:,} {name0}{share}")
    return "\n".join(lines)


def stale_files(files: list[tuple[Path, str]], digest: str, *, digest_cache: Path | None = None) -> str:
    """Why a sparse copy named ``digest`` that records ``files`` ((path, sha256) each, see
    :func:`mae_tracker.data.sparse.recorded_files`) no longer matches them; '' when it does.
    For ``prune-sparse-copies``: a copy of a dataset is stale once any of its files is gone or changed."""
    if dataset_digest([d for _, d in files]) != digest:
        return "its record does not match its name"
    for path, recorded in files:
        if not path.is_file():
            return f"its file {path} is gone"
        if cached_file_digest(path, digest_cache) != recorded:
            return f"its file {path} has changed"
    return ""
