"""Thin wrappers that give logged models a plain tensor-in, tensor-out ``forward``.

MLflow's pyfunc flavour calls ``model(x)`` and expects one tensor back; the encoder and the
MAE return tuples. The wrapped module stays trainable: ``.encoder`` / ``.mae`` is the real one.
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderFeatures(nn.Module):
    """Pretrained encoder as a feature extractor: images (B,C,H,W) -> features (B,D)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)


class MAEReconstruction(nn.Module):
    """Full MAE: images -> reconstruction (visible patches kept, masked ones predicted)."""

    def __init__(self, mae: nn.Module, mask_ratio: float) -> None:
        super().__init__()
        self.mae = mae
        self.mask_ratio = mask_ratio

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mae.reconstruct(images, self.mask_ratio)[0]
