"""How the arms get their data: validation once per file content, splits, label subsets."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import file_digest
from mae_tracker.paths import cache_dir
from mae_tracker.train.config import PretrainConfig
from mae_tracker.train.data import prepare_data, subsample


def _file(path, nan: bool = False):
    images = np.random.default_rng(0).exponential(1.0, (40, 16, 16, 3)).astype(np.float32)
    if nan:
        images[30, 2, 2, 0] = np.nan
    with h5py.File(path, "w") as f:
        f["X_jets"] = images
        f["y"] = np.arange(40) % 2
    return path


def test_values_are_scanned_once_per_file_content(tmp_path):
    good = _file(tmp_path / "good.h5")
    data = prepare_data(PretrainConfig(data=str(good)), progress=False)
    assert (cache_dir() / "validated" / data.digest).exists()
    assert data.split_sizes == {"pretrain": 20, "train": 12, "val": 4, "test": 4}

    bad = _file(tmp_path / "bad.h5", nan=True)
    with pytest.raises(DataError, match="NaN"):
        prepare_data(PretrainConfig(data=str(bad)), progress=False)
    marker = cache_dir() / "validated" / file_digest(bad)
    assert not marker.exists(), "a file that failed the scan is never marked as scanned"

    # With a marker the upfront scan is skipped; the per-batch check still stops bad pixels.
    marker.touch()
    data = prepare_data(PretrainConfig(data=str(bad)), progress=False)
    with pytest.raises(DataError, match="NaN"):
        data.reader.read(np.arange(40))


def test_label_subsets_are_nested_and_seeded():
    indices = np.arange(100, 400)
    quarter, half = subsample(indices, 0.25, seed=1), subsample(indices, 0.5, seed=1)
    assert len(quarter) == 75 and len(half) == 150
    assert set(quarter) <= set(half)
    assert not np.array_equal(subsample(indices, 0.25, seed=2), quarter)
    assert subsample(indices, 1.0, seed=1) is indices
