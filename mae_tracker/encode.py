"""Compression: the latent vectors of a pretrained encoder for a jet file or dataset (``mae-tracker encode``).

:func:`encode_file` streams a validated jet-image file through an encoder logged by
``mae-tracker pretrain`` (any MLflow model URI: ``runs:/<id>/encoder``, ``models:/<name>@<alias>``,
``models:/<name>/<version>``), with the preprocessing that travelled with the encoder, and writes

* ``latents`` (N, D) float32, ``y`` (N,) and ``pt`` (N,) when the source has it, rows in the
  source's order;
* attributes: ``encoder_uri``, ``data_sha256`` (the source's dataset digest: one file's sha256),
  ``source`` (its path: the file, or the dataset's folder), ``files`` (JSON: each file's path,
  sha256 and jets, in row order: a dataset's rows are its files' jets, files by sha256),
  ``preprocessing`` (JSON), ``encoder_config`` (JSON), ``pretrain_run_id``, ``task``,
  ``class_names``, ``channel_names`` and the figures below (``compression`` JSON).

It is atomic (a temporary file beside ``out`` renamed at the end; nothing is left on any error
or Ctrl-C) and returns the figures:

* compression ratio = bytes of images / bytes of latents, ``raw`` (N*C*H*W vs N*D float32) and
  ``stored`` (the HDF5 datasets' sizes on disk: the sparse images compress well with lzf, the
  dense latents hardly, so this one is much smaller than the raw ratio);
* reconstruction fidelity of the matching MAE (logged by the same pretrain run as
  ``runs:/<pretrain_run_id>/mae``) on up to ``fidelity_jets`` jets with a fixed mask:
  ``recon_mse`` (per pixel in preprocessed units, composite of visible + predicted patches) and
  ``recon_total_rel_error`` (energy-weighted |reconstructed - true| channel totals / true
  totals in the file's pixel units, as pretraining logs it). ``None`` with a reason when the MAE cannot be loaded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mae_tracker.atomic import atomic_path
from mae_tracker.data.errors import DataError
from mae_tracker.data.dataset import JetDataset, open_dataset
from mae_tracker.data.files import DataSpec
from mae_tracker.data.jetfile import iterate_batches
from mae_tracker.data.preprocess import Preprocessor

FIDELITY_SEED = 1234


def _expected_shape(encoder_config: dict[str, Any]) -> tuple[int, int, int] | None:
    chans = encoder_config.get("in_chans", encoder_config.get("channels"))
    size = encoder_config.get("img_size", encoder_config.get("image_size"))
    if chans is None or size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(chans), int(h), int(w)


def _storage_bytes(dataset: h5py.Dataset) -> int:
    return int(dataset.id.get_storage_size())


@torch.no_grad()
def _stored_image_bytes(dataset: JetDataset) -> int:
    """Bytes the images take on disk: an HDF5 file's image dataset, a Parquet file's whole size."""
    total = 0
    for info in dataset.file_infos:
        if info.format == "parquet":
            total += info.path.stat().st_size
        else:
            with h5py.File(info.path, "r") as src:
                total += _storage_bytes(src[info.images_key])
    return total


def _fidelity(pretrain_run_id: str | None, reader: JetDataset, n: int, preprocessor: Preprocessor,
              channel_names: tuple[str, ...], batch_size: int) -> dict[str, Any]:
    if not pretrain_run_id:
        return {"recon_mse": None, "reason": "the encoder names no pretrain run"}
    from mae_tracker.train.saved_model import UnsafeModelError, load_model

    try:
        wrapper, _ = load_model(f"runs:/{pretrain_run_id}/mae", kind="mae")
    except UnsafeModelError:
        raise  # a model that is not ours is refused, not skipped
    except ValueError as err:  # e.g. the pretrain run is in another store
        return {"recon_mse": None, "reason": str(err)}
    inner, mask_ratio = wrapper.mae, wrapper.mask_ratio
    torch.manual_seed(FIDELITY_SEED)  # else the MAE draws its mask from torch's global generator
    # one fixed mask per jet, whatever the batch size
    noise = torch.rand(n, inner.encoder.num_patches, generator=torch.Generator().manual_seed(FIDELITY_SEED))
    sq = 0.0
    pixels = 0
    seen = 0
    abs_err = total = None
    for raw, _ in iterate_batches(reader, np.arange(n), batch_size):
        raw = np.asarray(raw, dtype=np.float32)
        images = torch.from_numpy(preprocessor.transform(raw))
        recon = inner.reconstruct(images, mask_ratio, noise=noise[seen:seen + len(images)])[0]
        seen += len(images)
        sq += float((recon - images).double().pow(2).sum())
        pixels += images.numel()
        # channel totals in the file's units: the reconstruction mapped back per jet
        true_sum = np.where(raw < preprocessor.zero_threshold, 0.0, raw).sum(axis=(2, 3), dtype=np.float64)
        recon_sum = preprocessor.inverse_transform(recon.numpy(), raw).sum(axis=(2, 3), dtype=np.float64)
        err = np.abs(recon_sum - true_sum).sum(axis=0)
        abs_err = err if abs_err is None else abs_err + err
        total = true_sum.sum(axis=0) if total is None else total + true_sum.sum(axis=0)
    per_channel = abs_err / np.maximum(total, 1e-12)
    out: dict[str, Any] = {"recon_mse": sq / max(1, pixels), "recon_total_rel_error": float(per_channel.mean()),
                           "mask_ratio": mask_ratio, "jets": n, "mae_uri": f"runs:/{pretrain_run_id}/mae"}
    for name, value in zip(channel_names, per_channel):
        out[f"recon_total_rel_error_{name}"] = float(value)
    return out


def encode_file(encoder_uri: str, data: DataSpec, out: Path | str, *, batch_size: int = 256,
                progress: bool = True, fidelity_jets: int = 512) -> dict[str, Any]:
    """Write the latent vectors of ``encoder_uri`` for every jet of ``data`` into ``out``.

    Bad data raises :class:`DataError` (one line, names the file); an unloadable encoder or an
    encoder trained on another image shape raises ValueError. Returns the figures (see module).
    """
    from mae_tracker.progress import progress_bar

    from mae_tracker.train.saved_model import load_model

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out).expanduser()
    dataset = open_dataset(data)  # a file, folder, glob or list; rows in the dataset's jet order
    info = dataset.info
    for source in info.files:
        if out.exists() and os.path.samefile(source, out):  # same inode: symlink, hard link, ../
            raise ValueError(f"--out {out} is the input file {source}: encoding would replace the jets with their "
                             "latents; write to another file")
    model, meta = load_model(encoder_uri, kind="encoder")
    preprocessor = model.preprocessor  # as rebuilt from the model's own config
    preprocessing, encoder_config = preprocessor.to_dict(), model.encoder.config.to_dict()
    if preprocessor.channels != info.channels:
        raise DataError(info.path, f"has {info.channels} channels but encoder {encoder_uri} was trained on "
                              f"{preprocessor.channels}")
    expected = _expected_shape(encoder_config)
    if expected is not None and expected != info.image_shape:
        raise DataError(info.path, f"images are {info.image_shape} (C, H, W) but encoder {encoder_uri} expects "
                                   f"{expected}")
    model.eval()
    digest = dataset.digest
    start = time.perf_counter()
    n = info.n_jets
    with atomic_path(out) as tmp, dataset as reader, h5py.File(tmp, "w-") as f:
        latents = None
        rows = 0
        batches = iterate_batches(reader, np.arange(n), batch_size, preprocessor=preprocessor)
        with torch.no_grad():
            for images, _ in progress_bar(batches, desc=f"encode {info.path.name}", unit="batch", enabled=progress):
                # the batches are preprocessed already: straight into the encoder behind the model
                z = model.encoder.features(images, pool=model.pool)
                z = z.detach().cpu().numpy().astype(np.float32, copy=False).reshape(len(images), -1)
                if latents is None:
                    latents = f.create_dataset("latents", shape=(n, z.shape[1]), dtype="float32",
                                               chunks=(min(n, 1024), z.shape[1]), compression="lzf")
                latents[rows:rows + len(z)] = z
                rows += len(z)
        assert latents is not None and rows == n
        f.create_dataset("y", data=reader.labels().astype(np.float32))
        if "pt" in info.extra_keys:
            f.create_dataset("pt", data=reader.read_extra("pt", np.arange(n)).astype(np.float32))
        latent_dim = int(latents.shape[1])
        f.flush()
        latent_stored = _storage_bytes(latents)
        image_stored = _stored_image_bytes(dataset)
        c, h, w = info.image_shape
        figures: dict[str, Any] = {
            "n_jets": n, "latent_dim": latent_dim,
            "image_bytes_raw": n * c * h * w * 4, "latent_bytes_raw": n * latent_dim * 4,
            "image_bytes_stored": image_stored, "latent_bytes_stored": latent_stored,
            "compression_ratio_raw": (c * h * w) / latent_dim,
            "compression_ratio_stored": image_stored / max(1, latent_stored),
        }
        figures["fidelity"] = _fidelity(meta.get("pretrain_run_id"), reader, min(n, fidelity_jets),
                                        preprocessor, info.channel_names, batch_size)
        figures["seconds"] = time.perf_counter() - start
        f.attrs.update({
            "encoder_uri": encoder_uri, "data_sha256": digest, "source": str(info.path),
            "preprocessing": json.dumps(preprocessing), "encoder_config": json.dumps(encoder_config),
            "pretrain_run_id": str(meta.get("pretrain_run_id", "")), "task": info.task,
            "files": json.dumps(dataset.file_records()),
            "class_names": list(info.class_names), "channel_names": list(info.channel_names),
            "compression": json.dumps(figures), "creator": "mae-tracker",
        })
    return {"out": str(out), **figures}
