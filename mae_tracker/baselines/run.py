"""run_baseline: one classical baseline as one MLflow run, on the arms' split and labelled jets.

Like the arms it splits with train.data.prepare_data and takes the labelled subset with
train.data.subsample(splits["train"], label_fraction, seed), chooses everything on the val
jets and scores the test jets once. Under an active run (a pipeline, a sweep) it nests.
"""

from __future__ import annotations

import time
from typing import Any

import mlflow
import numpy as np
import torch
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from mae_tracker.baselines.cnn import JetCNN
from mae_tracker.baselines.config import CNN_PIXEL_OPTIONS, BaselineConfig
from mae_tracker.baselines.models import fit_best_observable, fit_gbdt
from mae_tracker.baselines.observables import Geometry, observable_names, observables_of
from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.train import loop, tracking
from mae_tracker.train.config import resolve_pixel_options
from mae_tracker.train.data import RunData, prepare_data, subsample
from mae_tracker.train.downstream import predict
from mae_tracker.train.evaluation import classification_scores, keep_best_epoch, log_test_predictions


def labelled_indices(config: BaselineConfig, data: RunData) -> np.ndarray:
    """The labelled training jets: exactly the arms' subset for the same label_fraction and seed."""
    return subsample(data.splits["train"], config.label_fraction, config.seed)


def resolve_preprocessing(config: BaselineConfig) -> BaselineConfig:
    """The CNN's empty pixel_transform / pixel_scaling resolved to log1p / channel (what it logs);
    the other kinds read raw images and keep the config as given."""
    if config.kind != "cnn":
        return config
    return resolve_pixel_options(config, CNN_PIXEL_OPTIONS)


def run_baseline(config: BaselineConfig, progress: bool = True) -> dict[str, Any]:
    """Fit one baseline, log it as one run; returns run_id, test_auc, test_acc, val_auc,
    labelled_jets (plus the other final metrics). Same seed and data -> same numbers."""
    config = resolve_preprocessing(tracking.resumed_config(config))
    data = prepare_data(config, progress=progress)
    device = loop.start(config)  # threads and seeds, as the arms set them
    train_indices = labelled_indices(config, data)
    if config.kind == "cnn" and len(train_indices) < config.batch_size:  # before a run exists, like the arms
        raise ValueError(f"labelled train split has {len(train_indices)} jets, fewer than one batch "
                         f"({config.batch_size}); raise label_fraction or lower batch_size")
    tags = {"arm": config.kind, "baseline": "true"}
    with tracking.tracked_run(config.experiment, config.run_name or config.display_name(), config.resume,
                              tags=tags) as run:
        if not config.resume:
            tracking.log_provenance(config.to_dict(), data.path, data.digest, data.split_sizes,
                                    {"train": len(train_indices), "val": len(data.splits["val"]),
                                     "test": len(data.splits["test"])},
                                    dataset=data.provenance())
            tracking.log_params_once({"labelled_jets": len(train_indices)})
        started = time.perf_counter()
        if config.kind == "cnn":
            labels, scores, decisions, final = _cnn(config, data, train_indices, device, run.info.run_id, progress)
        else:
            labels, scores, decisions, final = _classical(config, data, train_indices)
        final = {**classification_scores("test", labels, scores, decisions), **final,
                 "train_time_s": time.perf_counter() - started}
        mlflow.log_metrics(final)
        log_test_predictions(config.kind, labels, scores, data.info.class_names,
                             f"{config.kind} baseline: test ROC AUC {final['test_auc']:.4f}")
    return {**final, "val_auc": final["best_val_auc"], "labelled_jets": len(train_indices),
            "run_id": run.info.run_id}


Outcome = tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]
"""Test labels, test scores in [0, 1], test decisions (label 1 or not), extra final metrics."""


def _classical(config: BaselineConfig, data: RunData, train_indices: np.ndarray) -> Outcome:
    # scikit-learn's OpenMP threads spin while they wait: on a busy 2-core machine a 2-thread fit
    # of 120 jets took 16 s instead of 0.14 s (measured), so they get num_threads (0: one).
    with threadpool_limits(limits=config.num_threads or 1, user_api="openmp"):
        return _fit_classical(config, data, train_indices)


def _fit_classical(config: BaselineConfig, data: RunData, train_indices: np.ndarray) -> Outcome:
    geometry = Geometry.from_info(data.info)
    names = observable_names(geometry, data.info.extra_keys)
    train, val, test = (observables_of(data.reader, idx, geometry)
                        for idx in (train_indices, data.splits["val"], data.splits["test"]))
    tracking.log_params_once({"observables": ",".join(names), "cell_size": geometry.cell_size
                              if geometry.cell_size_known else "unknown (girth in pixels)"})
    if config.kind == "observable":
        cut = fit_best_observable(train, val, names)
        tracking.log_params_once({"observable": cut.name, "observable_direction": "larger" if cut.sign > 0 else "smaller",
                           "observable_cut": cut.threshold})
        mlflow.set_tag("observable", cut.name)
        # AUC from the observable itself: the probability map saturates far out in the tails
        return (test[1], cut.probability(test[0]), cut.decide(test[0]),
                {"test_auc": float(roc_auc_score(test[1], cut.signed(test[0]))),
                 "best_val_auc": cut.val_auc, "best_val_acc": cut.val_acc})
    model = fit_gbdt(train, val, seed=config.seed, learning_rate=config.gbdt_learning_rate,
                     max_iter=config.gbdt_max_iter, max_leaf_nodes=config.gbdt_max_leaf_nodes,
                     min_samples_leaf=config.gbdt_min_samples_leaf, patience=config.gbdt_patience)
    val_scores = model.predict_proba(val[0])[:, 1]
    scores = model.predict_proba(test[0])[:, 1]
    best = classification_scores("val", val[1], val_scores, val_scores > 0.5)
    tracking.log_params_once({"gbdt_rounds": int(model.n_iter_), "gbdt_leaf_size": model.min_samples_leaf})
    # What the trees rely on, for a person reading the run: val AUC lost when a column is shuffled.
    drop = permutation_importance(model, *val, scoring="roc_auc", n_repeats=5, random_state=config.seed)
    tracking.log_table({"observable": names, "val_auc_drop_when_shuffled": drop.importances_mean},
                       "gbdt_importance.csv")
    return (test[1], scores, scores > 0.5, {"best_val_auc": best["val_auc"], "best_val_acc": best["val_acc"],
                                            "best_val_loss": best["val_loss"], "gbdt_rounds": float(model.n_iter_)})


def _cnn(config: BaselineConfig, data: RunData, train_indices: np.ndarray, device: torch.device,
         run_id: str, progress: bool) -> Outcome:
    """Train from scratch with the arms' loop; best epoch by val log-loss, like train/downstream.py."""
    preprocessor = Preprocessor.fit(data.reader, train_indices, progress=progress,
                                    pixel_transform=config.pixel_transform, pixel_scaling=config.pixel_scaling)
    model = JetCNN(data.info.image_shape, config.conv_channels(), config.cnn_hidden, config.dropout).to(device)
    optimizer = loop.make_optimizer(model, loop.peak_lr(config), config.weight_decay)
    steps = loop.steps_per_epoch(len(train_indices), config)
    scheduler = loop.warmup_cosine(optimizer, int(config.warmup_epochs * steps), config.epochs * steps)
    ckpt = loop.checkpoint_path(config.checkpoint_dir, run_id)
    best: dict[str, Any] = {"val_loss": float("inf"), "epoch": -1, "state": None}
    start_epoch = 0
    if config.resume:
        state = loop.load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        best, start_epoch = state["extra"]["best"], state["epoch"] + 1
    else:
        mlflow.log_params({"trainable_params": sum(p.numel() for p in model.parameters()), **loop.scale_info(config)})
        mlflow.log_dict(preprocessor.to_dict(), "preprocessing.json")
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def train(epoch: int) -> dict[str, float]:
        model.train()
        return loop.train_one_epoch(
            data.reader, train_indices, preprocessor, config, epoch,
            lambda images, labels: loss_fn(model(images).float(), labels.float()),
            optimizer, scheduler, progress=progress, desc=f"cnn epoch {epoch}", device=device)

    def evaluate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        nonlocal best
        labels, scores = predict(model, data, data.splits["val"], preprocessor, config.batch_size, device)
        scored = classification_scores("val", labels, scores, scores > 0.5)
        best = keep_best_epoch(best, {**metrics, **scored}, epoch, model)
        return scored

    def checkpoint(epoch: int) -> None:
        loop.save_checkpoint(ckpt, epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler,
                             extra={"best": best})

    loop.run_epochs(start_epoch, config.epochs, train=train, evaluate=evaluate, checkpoint=checkpoint,
                    log_metrics=mlflow.log_metrics)
    model.load_state_dict(best["state"])
    labels, scores = predict(model, data, data.splits["test"], preprocessor, config.batch_size, device)
    ckpt.unlink(missing_ok=True)  # nothing to resume once the run is scored
    return (labels, scores, scores > 0.5, {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                                           "best_val_auc": best["val_auc"], "best_val_acc": best["val_acc"]})
