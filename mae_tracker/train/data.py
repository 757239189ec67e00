"""Turn a run config into data the loops can use: file, validated reader, splits, digest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mae_tracker.data.jetfile import JetFileInfo, JetImageReader, file_digest, make_splits, open_jet_file
from mae_tracker.data.sparse import SparseJetImages, recorded_source, remove_copy, sparse_copy
from mae_tracker.paths import cache_dir
from mae_tracker.train.config import CommonConfig


@dataclass
class RunData:
    path: Path
    info: JetFileInfo
    reader: JetImageReader | SparseJetImages
    splits: dict[str, np.ndarray]
    digest: str

    @property
    def split_sizes(self) -> dict[str, int]:
        return {name: int(len(indices)) for name, indices in self.splits.items()}


def prepare_data(config: CommonConfig, progress: bool = True) -> RunData:
    """Validate the file (DataError on any problem) and split it, seeded.

    Every arm calls this with the same split fields, so pretraining never sees the
    validation or test jets that the downstream arms are scored on.
    """
    path, digest = data_file(config, progress=progress)
    info = open_jet_file(path, check_values=False)  # structure and labels: cheap
    digest = digest or file_digest(path)
    reader: JetImageReader | SparseJetImages = JetImageReader(info)
    if getattr(config, "sparse_copy", False):
        # Building the copy reads every pixel (DataError on NaN/inf): it is the values scan too.
        reader = sparse_copy(reader, sparse_copy_dir(digest), progress=progress)
    else:
        _check_values_once(path, digest, progress)
    fractions = {"pretrain": config.pretrain_fraction, "train": config.train_fraction,
                 "val": config.val_fraction, "test": config.test_fraction}
    splits = make_splits(info.n_jets, fractions, seed=config.split_seed)
    return RunData(path=path, info=info, reader=reader, splits=splits, digest=digest)


def data_file(config: CommonConfig, progress: bool = True) -> tuple[Path, str]:
    """The file a run reads, and its sha256 when already known ('' otherwise).

    ``--data`` when given. Else a downstream arm with ``--encoder-uri`` reads the file the encoder
    was pretrained on (if it is still there with the digest the encoder records: else an error
    asking for ``--data``), and any other run the default generated dataset.
    """
    if config.data:
        return Path(config.data), ""
    encoder_uri = getattr(config, "encoder_uri", "")
    if encoder_uri:
        return encoder_data_file(encoder_uri)
    from mae_tracker.data.default import default_dataset  # imported here: reading real files needs no Pythia

    return default_dataset(progress=progress), ""


def encoder_data_file(encoder_uri: str) -> tuple[Path, str]:
    """(path, sha256) of the data file ``encoder_uri`` was pretrained on: the model metadata's
    ``data_path`` (else its pretrain run's ``data_path`` tag), checked against its ``data_sha256``.
    ValueError (one line, asking for ``--data``) when it is not readable here as it was."""
    import mlflow

    from mae_tracker.train.tracking import configure_tracking

    configure_tracking()
    try:
        metadata = dict(mlflow.models.get_model_info(encoder_uri).metadata or {})
    except Exception as err:  # MLflow raises several types for a bad URI
        raise ValueError(f"cannot load encoder {encoder_uri!r}: {str(err).splitlines()[0]}") from err
    digest, run_id = str(metadata.get("data_sha256", "")), str(metadata.get("pretrain_run_id", ""))
    if not digest:
        raise ValueError(f"encoder {encoder_uri} records no data digest, so its data file cannot be checked; "
                         "give the file with --data")
    recorded = str(metadata.get("data_path", ""))  # models logged before it: their pretrain run's tag
    if not recorded and run_id:
        try:
            recorded = mlflow.MlflowClient().get_run(run_id).data.tags.get("data_path", "")
        except Exception:  # a registered model from another store: its run is not here
            recorded = ""
    if not recorded:
        raise ValueError(f"encoder {encoder_uri} does not say where its data file (sha256 {digest[:12]}) is "
                         f"(pretrain run {run_id or '?'} not found here); give the file with --data")
    path = Path(recorded)
    try:
        found = file_digest(path) if path.is_file() else ""
    except OSError as err:
        raise ValueError(f"encoder {encoder_uri} was pretrained on {path}, which cannot be read here "
                         f"({err.strerror or err}); give the file with --data") from None
    if not found:
        raise ValueError(f"encoder {encoder_uri} was pretrained on {path}, which is not here; "
                         "give the file with --data")
    if found != digest:
        raise ValueError(f"encoder {encoder_uri} was pretrained on {path} (sha256 {digest[:12]}), which has "
                         f"changed since (sha256 {found[:12]}); give the file with --data")
    return path, digest


def sparse_copies_root() -> Path:
    return cache_dir() / "sparse"


def sparse_copy_dir(digest: str) -> Path:
    """Where the sparse copy of a file lives: named by its content, so a changed file gets a new one."""
    return sparse_copies_root() / digest


@dataclass
class CachedCopy:
    """A sparse copy in the cache (or an interrupted build, or a lone lock file) and its fate."""

    digest: str
    source: Path | None
    bytes: int
    stale: str  # why it can go; "" = it is the copy of its file as that file is now
    removed: bool = False


def prune_sparse_copies(dry_run: bool = False) -> list[CachedCopy]:
    """Delete the sparse copies whose file is gone or has changed since (a copy is named by
    the content it was made from), interrupted builds of such files and lock files left
    alone. A copy being built is left; runs reading a deleted copy keep their maps, and a
    run that needs it again rebuilds it. Returns every copy found, deleted or kept."""
    root = sparse_copies_root()
    stems = {p.name.split(".")[0] for p in root.iterdir()} if root.is_dir() else set()
    names = sorted(stem for stem in stems if re.fullmatch(r"[0-9a-f]{64}", stem))  # sha256 names only
    found = []
    for digest in names:
        directory, partial = root / digest, root / f"{digest}.partial"
        source = recorded_source(directory) or recorded_source(partial)
        size = sum(f.stat().st_size for d in (directory, partial) if d.is_dir() for f in d.iterdir())
        if not directory.exists() and not partial.exists():
            stale = "a lock file of no copy"
        elif source is None:
            stale = ""  # an interrupted build from before builds recorded their file: resumable
        elif not source.is_file():
            stale = f"its file {source} is gone"
        elif file_digest(source) != digest:
            stale = f"its file {source} has changed"
        else:
            stale = ""
        entry = CachedCopy(digest, source, size, stale)
        if stale and not dry_run:
            entry.removed = remove_copy(directory)
        found.append(entry)
    return found


def build_sparse_copy(path: Path, progress: bool = True) -> SparseJetImages:
    """The sparse copy that ``sparse_copy=True`` runs of ``path`` read, built (or finished) now:
    under torchrun, build it ahead so the other ranks do not wait on rank 0 for it."""
    info = open_jet_file(path, check_values=False)
    return sparse_copy(JetImageReader(info), sparse_copy_dir(file_digest(path)), progress=progress)


def _check_values_once(path: Path, digest: str, progress: bool) -> None:
    """Scan every pixel for NaN/inf once per file content, before any run is opened.

    Decompressing a large file takes minutes while its sha256 takes seconds, so a marker
    named by the digest records files already scanned. Batches are checked as they are
    read anyway; this makes a bad file fail before a run exists, not mid-training.
    """
    marker = cache_dir() / "validated" / digest
    if marker.exists():
        return
    open_jet_file(path, check_values=True, progress=progress)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def subsample(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset for label-efficiency studies; nested: a smaller fraction's jets are
    a subset of a larger fraction's (same seed), so curves vary only in label count."""
    if fraction >= 1.0:
        return indices
    order = np.random.default_rng(seed).permutation(len(indices))
    keep = max(1, int(round(fraction * len(indices))))
    return np.sort(indices[order[:keep]])
