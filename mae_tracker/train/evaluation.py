"""How every classifier run (the downstream arms and the classical baselines) is scored and what
it leaves behind on the test split, so that their numbers and artifacts compare one to one."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import mlflow
import numpy as np
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from mae_tracker.train import plots, tracking


def classification_scores(prefix: str, labels: np.ndarray, scores: np.ndarray,
                          decisions: np.ndarray | None = None) -> dict[str, float]:
    """``<prefix>_auc``, ``_acc`` (``decisions``, default score > 0.5) and ``_loss`` (log-loss;
    scores clipped to [1e-7, 1 - 1e-7] so a saturated score cannot make it infinite)."""
    decisions = scores > 0.5 if decisions is None else decisions
    return {f"{prefix}_auc": float(roc_auc_score(labels, scores)),
            f"{prefix}_acc": float(accuracy_score(labels, decisions)),
            f"{prefix}_loss": float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))}


def log_test_predictions(name: str, labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                         title: str) -> None:
    """To the active run: test_predictions.csv, the ROC curve, the background rejection and the
    score histogram. ``class_names``: (label 1, label 0), e.g. the file's (quark, gluon)."""
    tracking.log_table({"label": labels.astype(int), "score": scores}, "test_predictions.csv")
    classes = dict(zip(("signal", "background"), class_names))
    mlflow.set_tag("class_names", ",".join(class_names))  # what label 1 and 0 are, for the report
    curves = {name: (labels, scores)}
    tracking.log_figure(plots.roc_figure(curves, title, **classes), "roc_curve.png")
    tracking.log_figure(plots.rejection_figure(curves, title, **classes), "roc_rejection.png")
    tracking.log_figure(plots.score_histogram(labels, scores, title, **classes), "score_histogram.png")


def keep_best_epoch(best: dict[str, Any], metrics: dict[str, float], epoch: int,
                    model: torch.nn.Module) -> dict[str, Any]:
    """Model selection on validation only, by log-loss (AUC alone can pick an early epoch whose
    ranking is fine but whose scores all sit on one side of 0.5): ``best`` or this epoch's."""
    if metrics["val_loss"] >= best["val_loss"]:
        return best
    return {"val_loss": metrics["val_loss"], "val_auc": metrics["val_auc"], "val_acc": metrics["val_acc"],
            "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
