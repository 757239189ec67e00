"""Turn a run config into data the loops can use: the dataset, its reader, splits, digest.

``--data`` is a dataset (:func:`mae_tracker.data.dataset.open_dataset`): a file, a folder, a
glob or a list of files (comma-separated), HDF5 and/or Parquet. Its digest is order-independent
(one file: that file's sha256). Splits use the "per-file-hash" scheme (exact sizes per file, a
jet's split fixed by its file's sha256 and its row: adding files moves no jet). Runs logged before
it (no ``split_scheme`` param) split one file with ``make_splits``' seeded permutation
("permutation"): a downstream arm of such an encoder, or a resumed such run, keeps that scheme.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mae_tracker.data.dataset import DatasetInfo, JetDataset, format_class_balance, open_dataset
from mae_tracker.data.errors import DataError
from mae_tracker.data.files import DATA_SUFFIXES, absolute_spec
from mae_tracker.data.jetfile import make_splits
from mae_tracker.data.sparse import SparseJetImages, sparse_copy
from mae_tracker.data.splits import SPLIT_SCHEME
from mae_tracker.paths import cache_dir
from mae_tracker.train.config import CommonConfig
from mae_tracker.train.sparse_cache import (CachedCopy, build_sparse_copy, digest_cache_dir, prune_sparse_copies,
                                            sparse_copies_root, sparse_copy_dir)

__all__ = ["CachedCopy", "LEGACY_SPLIT_SCHEME", "RunData", "build_sparse_copy", "data_file", "encoder_data_file",
           "prepare_data", "prune_sparse_copies", "sparse_copies_root", "sparse_copy_dir", "split_scheme",
           "subsample"]

LEGACY_SPLIT_SCHEME = "permutation"  # make_splits over one file: every run logged before split_scheme


@dataclass
class RunData:
    path: Path  # the file, the folder given, or the files' common folder
    info: DatasetInfo
    reader: JetDataset | SparseJetImages
    splits: dict[str, np.ndarray]
    digest: str  # the dataset digest (one file: its sha256)
    dataset: JetDataset | None = None
    split_scheme: str = SPLIT_SCHEME
    spec: str = ""  # the data as given, entries made absolute (what an encoder records to find it again)
    class_balance: dict[str, dict[str, int]] = field(default_factory=dict)  # class-per-file datasets only

    @property
    def split_sizes(self) -> dict[str, int]:
        return {name: int(len(indices)) for name, indices in self.splits.items()}

    def provenance(self) -> dict[str, Any]:
        """What a run logs about its data (tracking.log_provenance): the dataset's description
        (digest, n_files, each file's path, sha256 and jets), the split scheme, the class balance."""
        described = self.dataset.describe() if self.dataset is not None else {"digest": self.digest, "files": []}
        return {**described, "spec": self.spec, "split_scheme": self.split_scheme,
                "class_balance": self.class_balance}


def prepare_data(config: CommonConfig, progress: bool = True) -> RunData:
    """Open and validate the dataset (DataError, one line naming the file, on any problem) and
    split it, seeded, before any run exists.

    Every arm calls this with the same split fields, so pretraining never sees the
    validation or test jets that the downstream arms are scored on.
    """
    spec = data_file(config, progress=progress)[0]
    dataset = open_dataset(spec, digest_cache=digest_cache_dir(), progress=progress)
    if not getattr(config, "sparse_copy", False):
        _check_values_once(dataset, progress)  # bad data is reported before a bad encoder URI
    scheme = split_scheme(config)
    if scheme == LEGACY_SPLIT_SCHEME and len(dataset.file_infos) > 1:
        raise ValueError(f"{config.data or spec}: {len(dataset.file_infos)} files, but "
                         f"{getattr(config, 'encoder_uri', '') or config.resume} split its data with the one-file "
                         f"'{LEGACY_SPLIT_SCHEME}' scheme; give it the single file it was pretrained on")
    reader: JetDataset | SparseJetImages = dataset
    if getattr(config, "sparse_copy", False):
        # Building the copy reads every pixel (DataError on NaN/inf): it is the values scan too.
        reader = sparse_copy(dataset, sparse_copy_dir(dataset.digest), progress=progress)
    fractions = {"pretrain": config.pretrain_fraction, "train": config.train_fraction,
                 "val": config.val_fraction, "test": config.test_fraction}
    splits = (dataset.splits(fractions, seed=config.split_seed) if scheme != LEGACY_SPLIT_SCHEME
              else make_splits(dataset.info.n_jets, fractions, seed=config.split_seed))
    balance = dataset.class_balance(splits) if len(dataset.file_infos) > 1 and dataset.class_per_file else {}
    if balance:
        print(f"class balance per split (one class per file):\n{format_class_balance(balance)}",
              file=sys.stderr, flush=True)
    return RunData(path=Path(os.path.abspath(dataset.info.path)), info=dataset.info, reader=reader, splits=splits,
                   digest=dataset.digest, dataset=dataset, split_scheme=scheme, spec=absolute_spec(spec), class_balance=balance)


def data_file(config: CommonConfig, progress: bool = True) -> tuple[str, str]:
    """The data a run reads (a file, folder, glob or comma list) and its digest when already
    known ('' otherwise).

    ``--data`` when given. Else a downstream arm with ``--encoder-uri`` reads the data the encoder
    was pretrained on (if it is still there with the digest the encoder records: else an error
    asking for ``--data``), and any other run the default generated dataset.
    """
    if config.data:
        return str(config.data), ""
    encoder_uri = getattr(config, "encoder_uri", "")
    if encoder_uri:
        return encoder_data_file(encoder_uri)
    from mae_tracker.sim.default import default_dataset  # imported here: reading real files needs no simulation

    return str(default_dataset(progress=progress)), ""


def _encoder_metadata(encoder_uri: str) -> dict[str, Any]:
    """The encoder's MLmodel metadata; a model not in the project's safe format is refused here."""
    from mae_tracker.train.saved_model import UnsafeModelError, model_metadata

    try:
        return model_metadata(encoder_uri, kind="encoder")
    except UnsafeModelError:
        raise
    except ValueError as err:
        raise ValueError(f"cannot load encoder {encoder_uri!r}: {str(err).split(': ', 1)[-1]}") from err


def _run_params(run_id: str) -> dict[str, str] | None:
    """A run's params, None when the run is not in this tracking store."""
    import mlflow

    try:
        return dict(mlflow.MlflowClient().get_run(run_id).data.params)
    except Exception:  # a registered model from another store: its run is not here
        return None


def split_scheme(config: CommonConfig) -> str:
    """The split scheme this run must use: a resumed run's own, else its encoder's pretrain run's
    (``split_scheme`` in the encoder's metadata or its run's params; neither: 'permutation', the
    only scheme before), else the current one. So no jet an encoder was pretrained on moves into
    a labelled split of its downstream arms."""
    if config.resume:
        params = _run_params(config.resume) or {}
        return params.get("split_scheme", LEGACY_SPLIT_SCHEME if "split_pretrain" in params else SPLIT_SCHEME)
    encoder_uri = getattr(config, "encoder_uri", "")
    if not encoder_uri:
        return SPLIT_SCHEME
    metadata = _encoder_metadata(encoder_uri)
    if metadata.get("split_scheme"):
        return str(metadata["split_scheme"])
    run_id = str(metadata.get("pretrain_run_id", ""))
    params = (_run_params(run_id) if run_id else None) or {}
    return params.get("split_scheme", LEGACY_SPLIT_SCHEME)


def encoder_data_file(encoder_uri: str) -> tuple[str, str]:
    """(data, digest) ``encoder_uri`` was pretrained on: the model metadata's ``data_spec`` (a
    file, folder, glob or list) or ``data_path`` (else its pretrain run's ``data_path`` tag),
    checked against its ``data_sha256`` (the dataset digest). ValueError (one line, asking for
    ``--data``) when it is not readable here as it was."""
    import mlflow

    metadata = _encoder_metadata(encoder_uri)
    digest, run_id = str(metadata.get("data_sha256", "")), str(metadata.get("pretrain_run_id", ""))
    if not digest:
        raise ValueError(f"encoder {encoder_uri} records no data digest, so its data cannot be checked; "
                         "give the file with --data")
    recorded = str(metadata.get("data_spec", "") or metadata.get("data_path", ""))
    if not recorded and run_id:  # models logged before data_path: their pretrain run's tag
        try:
            recorded = mlflow.MlflowClient().get_run(run_id).data.tags.get("data_path", "")
        except Exception:  # a registered model from another store: its run is not here
            recorded = ""
    if not recorded:
        raise ValueError(f"encoder {encoder_uri} does not say where its data (sha256 {digest[:12]}) is "
                         f"(pretrain run {run_id or '?'} not found here); give the file with --data")
    what = "the file" if Path(recorded).suffix.lower() in DATA_SUFFIXES and "," not in recorded else "the data"
    try:
        found = open_dataset(recorded, digest_cache=digest_cache_dir()).digest
    except DataError as err:
        if err.problem in ("file not found", "no files match this pattern"):
            raise ValueError(f"encoder {encoder_uri} was pretrained on {recorded}, which is not here; "
                             f"give {what} with --data") from None
        raise ValueError(f"encoder {encoder_uri} was pretrained on {recorded}, which is not readable here as it "
                         f"was ({err}); give {what} with --data") from None
    except OSError as err:
        raise ValueError(f"encoder {encoder_uri} was pretrained on {recorded}, which cannot be read here "
                         f"({err.strerror or err}); give {what} with --data") from None
    if found != digest:
        raise ValueError(f"encoder {encoder_uri} was pretrained on {recorded} (sha256 {digest[:12]}), which has "
                         f"changed since (sha256 {found[:12]}); give {what} with --data")
    return recorded, digest


def _check_values_once(dataset: JetDataset, progress: bool) -> None:
    """Scan every pixel for NaN/inf once per file content, before any run is opened.

    Decompressing a large file takes minutes while its sha256 takes seconds, so a marker
    named by each file's sha256 records the files already scanned: a grown dataset scans only
    its new files. Batches are checked as they are read anyway; this makes a bad file fail
    before a run exists, not mid-training.
    """
    markers = cache_dir() / "validated"
    done = {d for d in dataset.file_digests if (markers / d).exists()}
    for scanned in dataset.check_values(skip=done, progress=progress):
        markers.mkdir(parents=True, exist_ok=True)
        (markers / scanned).touch()


def subsample(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset for label-efficiency studies; nested: a smaller fraction's jets are
    a subset of a larger fraction's (same seed), so curves vary only in label count."""
    if fraction >= 1.0:
        return indices
    order = np.random.default_rng(seed).permutation(len(indices))
    keep = max(1, int(round(fraction * len(indices))))
    return np.sort(indices[order[:keep]])
