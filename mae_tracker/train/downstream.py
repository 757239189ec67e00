"""The downstream arms: finetune, probe (frozen encoder, linear head) and scratch.

All three train the same classifier on the same labelled split with the same budget;
only the encoder's starting point and what is trainable differ.
"""

from __future__ import annotations

import sys
from typing import Any

import mlflow
import numpy as np
import torch

from mae_tracker.data.jetfile import iterate_batches
from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.models.classifier import JetClassifier
from mae_tracker.models.packaged import JetTagger
from mae_tracker.models.encoders import build_encoder
from mae_tracker.models.variants import EncoderConfig
from mae_tracker.train import distributed, loop, saved_model, tracking
from mae_tracker.train.config import DownstreamConfig, resolve_pixel_options
from mae_tracker.train.architecture import build_encoder_config
from mae_tracker.train.data import RunData, prepare_data, subsample
from mae_tracker.train.evaluation import (best_epoch_errors, classification_scores, keep_best_epoch,
                                          log_test_predictions, untrained_head_warning, validation_errors)
from mae_tracker.train.features import FrozenFeatures
from mae_tracker.train.log_writer import LogWriter


def train_classifier(config: DownstreamConfig, callback: loop.EpochCallback | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one downstream arm; returns final metrics plus ``run_id``.

    Under torchrun every rank trains; rank 0 alone validates, tests and talks to MLflow (``log_writer``).
    """
    ctx = distributed.init(config.device)
    log_writer = LogWriter.for_this_process()
    progress = progress and ctx.is_main
    config = distributed.on_main(tracking.resumed_config, config)
    data = distributed.on_main(prepare_data, config, progress=progress)
    device = loop.start(config)
    train_indices = subsample(data.splits["train"], config.label_fraction, config.seed)
    val_indices = data.splits["val"][:config.val_jets] if config.val_jets else data.splits["val"]
    if len(train_indices) < loop.global_batch_size(config):
        raise ValueError(f"labelled train split has {len(train_indices)} jets, fewer than one batch "
                         f"({loop.global_batch_size(config)}); raise --label-fraction or lower --batch-size")

    encoder, preprocessor, encoder_meta = distributed.on_main(_starting_encoder, config, data, train_indices,
                                                              progress)
    # What the run really used (the encoder's preprocessing, or the recipe it was fitted with) is
    # what gets logged, not an empty "inherit".
    config = resolve_pixel_options(config, {"pixel_transform": preprocessor.pixel_transform,
                                            "pixel_scaling": preprocessor.pixel_scaling})
    tags = {"arm": config.arm}
    if encoder_meta.get("pretrain_run_id"):
        tags["pretrain_run_id"] = encoder_meta["pretrain_run_id"]
    with log_writer.run(config.experiment, config.run_name or config.display_name(), config.resume, tags=tags) as run_id:
        ckpt = loop.checkpoint_path(config.checkpoint_dir, run_id)
        model = JetClassifier(encoder, linear_probe=config.arm == "probe", pool=config.pool,
                              dropout=config.dropout).to(device)
        optimizer = loop.make_optimizer(model, loop.peak_lr(config), config.weight_decay, config.layer_decay)
        steps_per_epoch = loop.steps_per_epoch(len(train_indices), config)
        scheduler = loop.warmup_cosine(optimizer, int(config.warmup_epochs * steps_per_epoch),
                                       config.epochs * steps_per_epoch)
        best = {"val_loss": float("inf"), "epoch": -1, "state": None}
        start_epoch = 0
        if config.resume:
            state = loop.load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
            best = state["extra"]["best"]
            start_epoch = state["epoch"] + 1
        else:
            log_writer.log_provenance(config.to_dict(), data.path, data.digest, data.split_sizes,
                                   {"train": len(train_indices), "val": len(val_indices),
                                    "test": len(data.splits["test"])},
                                   dataset=data.provenance())
            log_writer.log_params({"labelled_jets": len(train_indices),
                                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                                **loop.scale_info(config)})
            log_writer.log_dict(model.encoder.config.to_dict(), "encoder_config.json")
            log_writer.log_dict(preprocessor.to_dict(), "preprocessing.json")

        loss_fn = torch.nn.BCEWithLogitsLoss()
        train_model = loop.for_training(model, config, device)  # DDP / torch.compile; same weights
        # A linear probe's encoder never changes, so its features are computed once and every
        # epoch trains the head on them: same batches, same numbers, a matrix multiply per step.
        # Under torchrun the image path keeps DDP's gradient sync.
        source, source_preprocessor, scorer = data.reader, preprocessor, model
        if config.arm == "probe" and not ctx.enabled:
            source = FrozenFeatures(data.reader, np.concatenate([train_indices, val_indices,
                                                                 data.splits["test"]]),
                                    model.encoder, preprocessor, pool=config.pool, batch_size=config.batch_size,
                                    device=device)
            train_model = scorer = HeadOnFeatures(model)
            source_preprocessor = None

        trained = {"epochs": start_epoch}

        def train(epoch: int) -> dict[str, float]:
            model.train()
            trained["epochs"] = epoch + 1
            return loop.train_one_epoch(
                source, train_indices, source_preprocessor, config, epoch,
                lambda images, labels: loss_fn(train_model(images).float(), labels.float()),
                optimizer, scheduler, progress=progress, desc=f"{config.arm} epoch {epoch}", device=device)

        def evaluate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
            nonlocal best
            labels, scores = predict(scorer, source, val_indices, source_preprocessor, config.batch_size, device)
            scored = {**classification_scores("val", labels, scores),
                      **validation_errors(labels, scores)}  # what promotion's floor and margin read
            best = keep_best_epoch(best, {**metrics, **scored}, epoch, model)
            return scored

        def checkpoint(epoch: int) -> None:
            loop.save_checkpoint(ckpt, epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler,
                                 extra={"best": best})

        def no_better_for_a_while(epoch: int) -> bool:  # early stopping on the validation curve
            return bool(config.patience) and epoch - best["epoch"] >= config.patience

        metrics = loop.run_epochs(start_epoch, config.epochs, train=train, evaluate=evaluate,
                                  checkpoint=checkpoint, log_metrics=log_writer.log_metrics, callback=callback,
                                  stop=no_better_for_a_while)
        final = distributed.on_main(_finish, config, model, best, trained["epochs"], scorer, source,
                                    source_preprocessor, preprocessor, data, encoder_meta, run_id, device)
        ckpt.unlink(missing_ok=True)  # the logged classifier replaces it
    return {**metrics, **final, "run_id": run_id}


def _finish(config: DownstreamConfig, model: JetClassifier, best: dict[str, Any], epochs_trained: int,
            scorer: torch.nn.Module,
            source: Any, source_preprocessor: Preprocessor | None, preprocessor: Preprocessor, data: RunData,
            encoder_meta: dict[str, Any], run_id: str, device: torch.device) -> dict[str, Any]:
    """After the last epoch (``epochs_trained`` of them: fewer when stopped early), on rank 0: the
    best epoch's weights scored once on the test jets,
    the warning for an untrained head, the test predictions and the logged classifier."""
    model.load_state_dict(best["state"])
    labels, scores = predict(scorer, source, data.splits["test"], source_preprocessor, config.batch_size, device)
    final = {**classification_scores("test", labels, scores), "best_epoch": best["epoch"],
             "epochs_trained": epochs_trained,
             "best_val_loss": best["val_loss"], "best_val_auc": best["val_auc"], "best_val_acc": best["val_acc"],
             **best_epoch_errors(best)}
    mlflow.log_metrics(final)
    warning = untrained_head_warning(labels, scores)
    if warning:  # on the run and on screen: its accuracy and AUC would otherwise be taken at face value
        mlflow.set_tag("warning", warning)
        print(f"warning: {config.arm} run {run_id}: {warning}", file=sys.stderr, flush=True)
    log_test_predictions(config.arm, labels, scores, data.info.class_names,
                         f"{config.arm}: test ROC AUC {final['test_auc']:.4f}")
    # The logged model is the JetTagger: raw images as stored in the file (channels last,
    # like E2E X_jets), preprocessing inside, P(label 1) out; `.classifier` is the JetClassifier.
    example, _ = data.reader.read(data.splits["test"][:2])  # (n, C, H, W) raw
    saved_model.log_model(JetTagger(model, preprocessor), "classifier",
                          np.ascontiguousarray(example.transpose(0, 2, 3, 1), dtype=np.float32),
                          {"encoder_config": model.encoder.config.to_dict(), "arm": config.arm,
                           "preprocessing": preprocessor.to_dict(),
                           "pretrain_run_id": encoder_meta.get("pretrain_run_id", ""),
                           "channel_names": list(data.info.channel_names), "data_sha256": data.digest,
                           "split_scheme": data.split_scheme, "input_layout": JetTagger.input_layout})
    return final


def _starting_encoder(config: DownstreamConfig, data: RunData, train_indices: np.ndarray,
                      progress: bool) -> tuple[torch.nn.Module, Preprocessor, dict[str, Any]]:
    """Pretrained weights (finetune, probe) or the same architecture at random (scratch).

    With an encoder its preprocessing is used (the weights only make sense on it): an explicit,
    different pixel_transform / pixel_scaling is an error. Without one the preprocessing is
    fitted on the labelled jets with the config's options ("" = the reference recipe).
    """
    if config.encoder_uri:
        wrapper, meta = saved_model.load_model(config.encoder_uri, kind="encoder")
        encoder_cfg = EncoderConfig.from_dict(meta["encoder_config"])
        _check_shape(encoder_cfg, data)
        preprocessor = Preprocessor.from_dict(meta["preprocessing"])
        for name in ("pixel_transform", "pixel_scaling"):
            wanted, used = getattr(config, name), getattr(preprocessor, name)
            if wanted and wanted != used:
                raise ValueError(f"{name} {wanted!r} differs from the encoder's {used!r}; leave it empty to "
                                 f"use the encoder's preprocessing")
        if config.arm == "scratch":  # only the architecture is borrowed
            return build_encoder(encoder_cfg), preprocessor, meta
        return wrapper.encoder, preprocessor, meta
    from mae_tracker.train.config import resolve_pixel_options  # local: this function's own need

    encoder = build_encoder(build_encoder_config(config, data))
    options = resolve_pixel_options(config)
    return encoder, Preprocessor.fit(data.reader, train_indices, progress=progress,
                                     pixel_transform=options.pixel_transform,
                                     pixel_scaling=options.pixel_scaling), {}


def _check_shape(encoder_cfg: EncoderConfig, data: RunData) -> None:
    expected = (encoder_cfg.in_chans, *encoder_cfg.img_size)
    if tuple(expected) != tuple(data.info.image_shape):
        raise ValueError(f"encoder expects images {expected} (C,H,W) but {data.path} has "
                         f"{data.info.image_shape}")


class HeadOnFeatures(torch.nn.Module):
    """The classifier's head alone, on precomputed pooled features (B, D) -> logits (B,)."""

    def __init__(self, classifier: JetClassifier) -> None:
        super().__init__()
        self.head = classifier.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(-1)


@torch.no_grad()
def predict(model: torch.nn.Module, data: RunData | Any, indices: np.ndarray, preprocessor: Preprocessor | None,
            batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Labels and signal probabilities for the given jets, in index order. ``data``: the run's
    data or any reader (e.g. FrozenFeatures, with ``model`` a HeadOnFeatures)."""
    model.eval()
    labels, scores = [], []
    for images, batch_labels in iterate_batches(data.reader if isinstance(data, RunData) else data, indices, batch_size, shuffle=False,
                                                preprocessor=preprocessor):
        scores.append(torch.sigmoid(model(images.to(device))).cpu().numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(labels), np.concatenate(scores)
