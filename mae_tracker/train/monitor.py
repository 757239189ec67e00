"""Is the encoder learning something useful? An online linear probe, every pretrain epoch.

Reconstruction loss says little about the features (a small MAE can lower it by predicting
empty patches), so, like the online k-NN / linear monitors of self-supervised libraries, we
fit a logistic regression on frozen, pooled encoder features of a fixed labelled subset of
the *train* split and score ROC AUC on a fixed subset of the *validation* split. The test
split is never touched, so a sweep may prune and choose on this number.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.train.evaluation import AucInterval, auc_interval

KEY = "val_probe_auc"


class ProbeMonitor:
    """Holds the (small) preprocessed monitor sets in memory, so an epoch's check costs one
    encoder forward over them plus a logistic-regression fit on D-dimensional features."""

    def __init__(self, reader, train_indices: np.ndarray, val_indices: np.ndarray,
                 preprocessor: Preprocessor, batch_size: int = 512) -> None:
        self.batch_size = batch_size
        self.train_images, self.train_labels = _load(reader, train_indices, preprocessor)
        self.val_images, self.val_labels = _load(reader, val_indices, preprocessor)
        for name, labels in (("train", self.train_labels), ("validation", self.val_labels)):
            if len(np.unique(labels)) < 2:
                raise ValueError(f"the probe monitor's {name} subset holds one class only; "
                                 "raise probe_train_jets / probe_val_jets")

    @torch.no_grad()
    def features(self, encoder: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
        was_training = encoder.training
        encoder.eval()
        parts = [encoder.features(images[i:i + self.batch_size].to(device)).float().cpu()
                 for i in range(0, len(images), self.batch_size)]
        encoder.train(was_training)
        return torch.cat(parts).numpy().astype(np.float64)

    def auc(self, encoder: torch.nn.Module, device: torch.device) -> float:
        """Validation ROC AUC of a linear probe on the encoder's current features."""
        return self.interval(encoder, device).auc

    def interval(self, encoder: torch.nn.Module, device: torch.device) -> AucInterval:
        """The same AUC with its DeLong standard error and 95 % interval (all NaN for NaN features)."""
        train_x = self.features(encoder, self.train_images, device)
        val_x = self.features(encoder, self.val_images, device)
        if not (np.isfinite(train_x).all() and np.isfinite(val_x).all()):
            nan = float("nan")
            return AucInterval(nan, nan, nan, nan, int(self.val_labels.sum()), int((1 - self.val_labels).sum()))
        # Standardised features and an L2-regularised fit: deterministic (lbfgs) and fast.
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        probe.fit(train_x, self.train_labels)
        return auc_interval(self.val_labels, probe.predict_proba(val_x)[:, 1])

    def metrics(self, encoder: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """``val_probe_auc`` and its ``_se``, ``_ci_low``, ``_ci_high``: what promotion reads."""
        return self.interval(encoder, device).as_metrics(KEY)


def _load(reader, indices: np.ndarray, preprocessor: Preprocessor) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = reader.read(np.sort(np.asarray(indices)))
    return torch.from_numpy(preprocessor.transform(images)), np.asarray(labels)
