"""Small Parquet jet files in the CMS layouts, written by the tests (pyarrow + numpy only).

``write_cms_parquet`` builds the nested lists with pyarrow from Python lists (the slow, obvious
way: an independent oracle for the reader) unless ``fast`` is set, which uses the project's
offsets-based builder for larger files.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mae_tracker.data.layouts import nested_list_array


def write_cms_parquet(path: Path, images: np.ndarray, labels: np.ndarray | None = None, *, key: str = "X_jets",
                      extras: dict[str, np.ndarray] | None = None, row_group_size: int = 1,
                      channels_last: bool = False, fast: bool = False,
                      metadata: dict[bytes, bytes] | None = None) -> Path:
    """``images`` (n, C, H, W) as CMS writes them: doubles, channels first (or last), labels and
    extras as doubles, ``row_group_size`` jets per row group. Returns ``path``."""
    n = len(images)
    stored = images.transpose(0, 2, 3, 1) if channels_last else images
    stored = stored.astype(np.float64)
    column = nested_list_array(stored) if fast else pa.array(stored.tolist(),
                                                              type=pa.list_(pa.list_(pa.list_(pa.float64()))))
    labels = np.arange(n) % 2 if labels is None else labels
    rng = np.random.default_rng(n)
    extras = {"pt": rng.uniform(70, 200, n), "m0": rng.uniform(0, 50, n)} if extras is None else extras
    table = pa.table({key: column, "y": pa.array(np.asarray(labels, np.float64)),
                      **{k: pa.array(np.asarray(v, np.float64)) for k, v in extras.items()}})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path, row_group_size=row_group_size, compression="snappy")
    return path


def jet_images(n: int, c: int = 3, h: int = 12, w: int = 12, *, seed: int = 0, occupancy: float = 0.05) -> np.ndarray:
    """(n, C, H, W) float32, mostly zeros, values exactly representable in float32."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, c, h, w), np.float32)
    hit = rng.random(x.shape) < occupancy
    x[hit] = rng.exponential(2.0, hit.sum()).astype(np.float32)
    return x


def write_egamma_pair(folder: Path, n: int = 30, *, seed: int = 0) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The CMS electron/photon pair: two HDF5 files, one class each, ``X`` (N, 32, 32, 2), ``y``."""
    folder.mkdir(parents=True, exist_ok=True)
    photons, electrons = jet_images(n, 2, 32, 32, seed=seed), jet_images(n + 4, 2, 32, 32, seed=seed + 1)
    paths = []
    for name, images, label in (("SinglePhotonPt50_IMGCROPS_n249k_RHv1.hdf5", photons, 0),
                                ("SingleElectronPt50_IMGCROPS_n249k_RHv1.hdf5", electrons, 1)):
        with h5py.File(folder / name, "w") as f:
            f.create_dataset("X", data=images.transpose(0, 2, 3, 1), chunks=(1, 32, 32, 2), compression="lzf")
            f.create_dataset("y", data=np.full(len(images), label, np.float32))
        paths.append(folder / name)
    return paths[0], paths[1], photons, electrons
