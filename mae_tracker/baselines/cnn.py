"""A small CNN of the CMS end-to-end family, trained from scratch on the preprocessed images.

The E2E papers classify jet images with stacks of 3x3 convolutions, ReLU and max-pooling
followed by dense layers; this is the smallest member of that family that fits a CPU budget.
"""

from __future__ import annotations

import torch
from torch import nn


class JetCNN(nn.Module):
    """forward(images (N, C, H, W), preprocessed) -> logit (N,) of label 1.

    Each block: 3x3 conv (padding 1) + ReLU + 2x2 max-pool, halving H and W; then flatten,
    a dense ReLU layer, dropout and one logit.
    """

    def __init__(self, image_shape: tuple[int, int, int], channels: tuple[int, ...] = (32, 64, 64),
                 hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        in_chans, height, width = image_shape
        if min(height, width) < 2 ** len(channels):
            raise ValueError(f"cnn_channels has {len(channels)} pooling blocks, too many for "
                             f"{height}x{width} images (each halves the side)")
        blocks: list[nn.Module] = []
        for out_chans in channels:
            blocks += [nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            in_chans = out_chans
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(in_chans * height * width, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)
