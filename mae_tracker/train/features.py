"""Frozen encoder features computed once, for the probe arm.

A linear probe never changes the encoder (frozen, eval mode, no augmentation), so every epoch
would recompute exactly the same pooled features. Computing them once for the labelled,
validation and test jets turns each further epoch into a matrix multiply: the probe can then
train as long as a linear head needs (the MAE paper probes for 90 epochs) at the cost of one
encoder pass. Batches, their order and the head's numbers are those of the image path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mae_tracker.data.jetfile import iterate_batches


class FrozenFeatures:
    """Pooled features (n, D) of ``indices``, with the reader's ``read(indices)`` interface
    (global indices), so the shared loop and batch iterator use it as they use a reader."""

    def __init__(self, reader: Any, indices: np.ndarray, encoder: torch.nn.Module, preprocessor: Any, *,
                 pool: str = "mean", batch_size: int = 512, device: torch.device | None = None) -> None:
        self.info = reader.info
        self.indices = np.unique(np.asarray(indices, dtype=np.int64))
        device = device or torch.device("cpu")
        was_training = encoder.training
        encoder.eval()
        parts, labels = [], []
        with torch.no_grad():
            for images, batch_labels in iterate_batches(reader, self.indices, batch_size, shuffle=False,
                                                        preprocessor=preprocessor):
                parts.append(encoder.features(images.to(device), pool=pool).float().cpu())
                labels.append(batch_labels)
        encoder.train(was_training)
        self.features = torch.cat(parts).numpy()
        self._labels = torch.cat(labels).numpy()

    def __len__(self) -> int:
        return self.info.n_jets

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def read(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        pos = np.searchsorted(self.indices, idx)
        if idx.size and (pos.max() >= len(self.indices) or np.any(self.indices[pos] != idx)):
            raise IndexError("some jets are not among the cached features")
        return self.features[pos], self._labels[pos]
