"""The pretrain arm: a masked autoencoder on the unlabelled split, tracked in MLflow."""

from __future__ import annotations

import functools
import time
from typing import Any

import mlflow
import numpy as np
import torch

from mae_tracker.data.jetfile import iterate_batches
from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.models.packaged import JetEncoder, MAEReconstruction
from mae_tracker.models.mae import MAEConfig, build_mae
from mae_tracker.train import distributed, loop, plots, saved_model, tracking
from mae_tracker.train.architecture import build_mae_config
from mae_tracker.train.config import PretrainConfig, resolve_pixel_options
from mae_tracker.train.data import RunData, prepare_data
from mae_tracker.train.evaluation import standard_error
from mae_tracker.train.monitor import ProbeMonitor
from mae_tracker.train.log_writer import LogWriter

EVAL_NOISE_SEED = 12345  # the same masks every epoch, so eval losses are comparable


def pretrain(config: PretrainConfig, callback: loop.EpochCallback | None = None,
             progress: bool = True) -> dict[str, float]:
    """Train an MAE; log metrics per epoch, grids, and the encoder + MAE models.

    Returns the last epoch's metrics plus the final figures (and ``run_id``, ``encoder_uri``).
    Under torchrun every rank trains; rank 0 alone evaluates and talks to MLflow (``log_writer``).
    """
    ctx = distributed.init(config.device)
    log_writer = LogWriter.for_this_process()
    progress = progress and ctx.is_main
    # "" pixel options become the reference recipe here, so the logged config says what was run.
    config = resolve_pixel_options(distributed.on_main(tracking.resumed_config, config))
    data = distributed.on_main(prepare_data, config, progress=progress)
    device = loop.start(config)
    train_indices = data.splits["pretrain"]
    if config.max_jets:
        train_indices = train_indices[:config.max_jets]
    test_indices = data.splits["test"][:config.eval_jets]
    if len(train_indices) < loop.global_batch_size(config):
        raise ValueError(f"pretrain split has {len(train_indices)} jets, fewer than one batch "
                         f"({loop.global_batch_size(config)}); use more data or a smaller --batch-size")

    with log_writer.run(config.experiment, config.run_name or config.display_name(), config.resume,
                     tags={"arm": "pretrain"}) as run_id:
        ckpt = loop.checkpoint_path(config.checkpoint_dir, run_id)
        mae_config = build_mae_config(config, data)
        model = build_mae(mae_config).to(device)
        optimizer = loop.make_optimizer(model, loop.peak_lr(config), config.weight_decay)
        steps_per_epoch = loop.steps_per_epoch(len(train_indices), config)
        scheduler = loop.warmup_cosine(optimizer, int(config.warmup_epochs * steps_per_epoch),
                                       config.epochs * steps_per_epoch)
        start_epoch = 0
        if config.resume:
            state = loop.load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
            preprocessor = Preprocessor.from_dict(state["extra"]["preprocessing"])
            start_epoch = state["epoch"] + 1
        else:
            # Statistics from the training split only; they travel with the logged models.
            preprocessor = distributed.on_main(Preprocessor.fit, data.reader, train_indices, progress=progress,
                                               pixel_transform=config.pixel_transform,
                                               pixel_scaling=config.pixel_scaling)
            log_writer.log_provenance(config.to_dict(), data.path, data.digest, data.split_sizes,
                                   {"pretrain": len(train_indices), "test": len(test_indices)},
                                   dataset=data.provenance())
            log_writer.log_params({"encoder_params": sum(p.numel() for p in model.encoder.parameters()),
                                "num_patches": model.encoder.num_patches, **loop.scale_info(config)})
            log_writer.log_dict(mae_config.to_dict(), "mae_config.json")
            log_writer.log_dict(preprocessor.to_dict(), "preprocessing.json")

        train_model = loop.for_training(model, config, device)  # DDP / torch.compile; same weights
        # The online probe's jets, read once when rank 0 first evaluates (only rank 0 evaluates).
        probe_monitor = functools.cache(lambda: _probe_monitor(config, data, preprocessor))
        grids = {"train": _grid_jets(data, train_indices[:config.image_jets]),
                 "test": _grid_jets(data, test_indices[:config.image_jets])}

        def train(epoch: int) -> dict[str, float]:
            model.train()
            return loop.train_one_epoch(
                data.reader, train_indices, preprocessor, config, epoch,
                lambda images, _: train_model(images, mask_ratio=config.mask_ratio, noise=loop.mask_noise(
                    len(images), model.encoder.num_patches, device))[0],
                optimizer, scheduler, progress=progress, desc=f"pretrain epoch {epoch}", device=device)

        def evaluate(epoch: int, _: dict[str, float]) -> dict[str, float]:
            metrics: dict[str, float] = {}
            # train_eval_loss is the reconstruction objective a sweep may promote on: with its error.
            metrics["train_eval_loss"], metrics["train_eval_loss_se"] = _eval_loss(
                model, data, train_indices[:len(test_indices)], preprocessor, config, device)
            metrics["test_loss"], _ = _eval_loss(model, data, test_indices, preprocessor, config, device,
                                                 with_error=False)
            monitor = probe_monitor()
            if monitor is not None:
                started = time.perf_counter()
                metrics.update(monitor.metrics(model.encoder, device))  # val_probe_auc, _se, _ci_low, _ci_high
                metrics["val_probe_time_s"] = time.perf_counter() - started
            if epoch == config.epochs - 1 or (config.image_every and epoch % config.image_every == 0):
                # Two figures of the same layout (the report picks up test_epoch_*.png); the
                # artifact keeps the loop's 0-based index, what a person reads counts from 1.
                for split, jets in grids.items():
                    _log_grid(model, jets, preprocessor, data.info.channel_names, config, device,
                              f"reconstructions/{split}_epoch_{epoch:03d}.png",
                              f"{split} jets after epoch {epoch + 1} of {config.epochs}, "
                              f"mask ratio {config.mask_ratio:.3g}", log_writer)
            return metrics

        def checkpoint(epoch: int) -> None:
            loop.save_checkpoint(ckpt, epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler,
                                 extra={"preprocessing": preprocessor.to_dict()})

        metrics = loop.run_epochs(start_epoch, config.epochs, train=train, evaluate=evaluate,
                                  checkpoint=checkpoint, log_metrics=log_writer.log_metrics, callback=callback)
        log_writer.flush_figures()  # every grid is logged (or its error raised) before the models
        final = distributed.on_main(_finish, model, mae_config, preprocessor, data, config, run_id, test_indices,
                                    device)
        ckpt.unlink(missing_ok=True)  # the logged models replace it
    return {**metrics, **final, "run_id": run_id}


def _finish(model: torch.nn.Module, mae_config: MAEConfig, preprocessor: Preprocessor, data: RunData,
            config: PretrainConfig, run_id: str, test_indices: np.ndarray, device: torch.device) -> dict[str, Any]:
    """After the last epoch, on rank 0: the compression figures and the logged models."""
    final: dict[str, Any] = _compression_figures(model, data, test_indices, preprocessor, config, device)
    mlflow.log_metrics(final)
    final["encoder_uri"] = _log_models(model, mae_config, preprocessor, data, config, run_id, test_indices[:2])
    if config.register_as:
        mlflow.register_model(final["encoder_uri"], config.register_as)
    return final


def _probe_monitor(config: PretrainConfig, data: RunData, preprocessor: Preprocessor) -> ProbeMonitor | None:
    """The online linear probe's fixed jets: the first labelled train-split and validation jets
    of the (seeded) split, the same every epoch and for every run on the same split."""
    if not (config.probe_train_jets and config.probe_val_jets):
        return None
    return ProbeMonitor(data.reader, data.splits["train"][:config.probe_train_jets],
                        data.splits["val"][:config.probe_val_jets], preprocessor)


def _grid_jets(data: RunData, indices: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The grid's jets as stored (N, C, H, W) and each one's class name (label 1 -> class_names[0])."""
    images, labels = data.reader.read(np.asarray(indices))
    signal, background = data.info.class_names
    names = [signal if label == 1 else background if label == 0 else "unlabelled" for label in np.asarray(labels)]
    return np.asarray(images, dtype=np.float32), names


@torch.no_grad()
def _eval_loss(model: torch.nn.Module, data: RunData, indices: np.ndarray, preprocessor: Preprocessor,
               config: PretrainConfig, device: torch.device, with_error: bool = True) -> tuple[float, float]:
    """Reconstruction loss with fixed masks (same noise every epoch) on the given jets, and the
    standard error of that mean over jets (each jet's own masked-patch loss; NaN without)."""
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    total, seen = 0.0, 0
    per_jet: list[float] = []
    for images, _ in iterate_batches(data.reader, indices, config.batch_size, shuffle=False,
                                     preprocessor=preprocessor):
        noise = torch.rand(len(images), model.encoder.num_patches, generator=generator)
        images = images.to(device)
        loss, pred, mask = model(images, mask_ratio=config.mask_ratio, noise=noise.to(device))
        total += loss.item() * len(images)
        seen += len(images)
        if with_error:
            per_jet += [float(model.forward_loss(images[i:i + 1], pred[i:i + 1], mask[i:i + 1]))
                        for i in range(len(images))]
    return total / max(1, seen), standard_error(np.asarray(per_jet)) if with_error else float("nan")


@torch.no_grad()
def _log_grid(model: torch.nn.Module, jets: tuple[np.ndarray, list[str]], preprocessor: Preprocessor,
              channel_names: Any, config: PretrainConfig, device: torch.device, artifact_file: str, title: str,
              log_writer: LogWriter) -> None:
    """Reconstruct here (needs the model, fast); render + upload on the log_writer's figure thread.

    The model sees preprocessed images; the grid shows the file's pixel values: the
    preprocessing is invertible per jet given the stored jet (Preprocessor.inverse_transform)."""
    model.eval()
    raw, labels = jets
    images = torch.from_numpy(preprocessor.transform(raw))
    noise = torch.rand(len(images), model.encoder.num_patches,
                       generator=torch.Generator().manual_seed(EVAL_NOISE_SEED))
    reconstruction, pixel_mask = model.reconstruct(images.to(device), config.mask_ratio, noise=noise.to(device))
    original = np.where(raw < preprocessor.zero_threshold, np.float32(0.0), raw)  # what the model was shown
    args = (original, pixel_mask.cpu().numpy(), preprocessor.inverse_transform(reconstruction.cpu().numpy(), raw),
            channel_names, title, config.image_scale, labels)
    log_writer.submit_figure(artifact_file, _grid_figure, args)


def _grid_figure(original: np.ndarray, pixel_mask: np.ndarray, reconstruction: np.ndarray, channel_names: Any,
                 title: str, scale: str, labels: list[str]) -> Any:
    return plots.reconstruction_grid(original, pixel_mask, reconstruction, channel_names, title, scale=scale,
                                     labels=labels, unit="stored pixel value")


@torch.no_grad()
def _compression_figures(model: torch.nn.Module, data: RunData, indices: np.ndarray,
                         preprocessor: Preprocessor, config: PretrainConfig, device: torch.device
                         ) -> dict[str, float]:
    """How much smaller the latent vector is than the stored image, and how faithfully the
    masked reconstruction keeps each channel's total, in the file's pixel units (the composite
    is mapped back per jet with Preprocessor.inverse_transform; the README's Metrics table)."""
    model.eval()
    c, h, w = data.info.image_shape
    figures = {"compression_ratio": (c * h * w) / model.encoder.embed_dim}
    generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    abs_error = np.zeros(c, dtype=np.float64)
    total = np.zeros(c, dtype=np.float64)
    for raw, _ in iterate_batches(data.reader, indices, config.batch_size, shuffle=False):
        raw = np.asarray(raw, dtype=np.float32)
        noise = torch.rand(len(raw), model.encoder.num_patches, generator=generator)
        images = torch.from_numpy(preprocessor.transform(raw)).to(device)
        reconstruction, _ = model.reconstruct(images, config.mask_ratio, noise=noise.to(device))
        reconstructed = preprocessor.inverse_transform(reconstruction.cpu().numpy(), raw)
        true_sum = np.where(raw < preprocessor.zero_threshold, 0.0, raw).sum(axis=(2, 3), dtype=np.float64)
        abs_error += np.abs(reconstructed.sum(axis=(2, 3), dtype=np.float64) - true_sum).sum(axis=0)
        total += true_sum.sum(axis=0)
    # Energy-weighted: sum over jets of |reconstructed total - true total| / sum of true totals,
    # so jets with an (almost) empty channel cannot blow the figure up.
    per_channel = abs_error / np.maximum(total, 1e-12)
    for name, value in zip(data.info.channel_names, per_channel):
        figures[f"recon_total_rel_error_{name}"] = float(value)
    figures["recon_total_rel_error"] = float(per_channel.mean())
    return figures


def _log_models(model: torch.nn.Module, mae_config: MAEConfig, preprocessor: Preprocessor, data: RunData,
                config: PretrainConfig, run_id: str, example_rows: np.ndarray) -> str:
    """Log encoder and full MAE only after training succeeded: a failed run has no model.
    Both take raw images as stored in the file (channels last), preprocessing inside."""
    metadata = {"encoder_config": mae_config.encoder.to_dict(), "mae_config": mae_config.to_dict(),
                "preprocessing": preprocessor.to_dict(), "pretrain_run_id": run_id,
                "channel_names": list(data.info.channel_names), "data_sha256": data.digest,
                "data_path": str(data.path), "data_spec": data.spec, "split_scheme": data.split_scheme,
                "mask_ratio": config.mask_ratio}
    images, _ = data.reader.read(np.asarray(example_rows))  # (n, C, H, W) raw
    input_example = np.ascontiguousarray(images.transpose(0, 2, 3, 1), dtype=np.float32)
    encoder_uri = saved_model.log_model(JetEncoder(model.encoder, preprocessor), "encoder", input_example, metadata)
    saved_model.log_model(MAEReconstruction(model, preprocessor, config.mask_ratio), "mae", input_example, metadata)
    mlflow.set_tag("encoder_uri", encoder_uri)
    return encoder_uri
