"""Quark/gluon classifier: an encoder (pretrained or fresh) + a small head -> one logit.

Two regimes, following the MAE recipes:
- linear probe: the encoder is frozen (no gradients, kept in eval mode even when the
  classifier is put in train mode, so nothing inside it changes); the head is
  BatchNorm1d without affine parameters + Linear. The BatchNorm only rescales features,
  which MAE found essential for probing (features have very different scales).
- fine-tune / from scratch: all weights train; head = LayerNorm + (dropout) + Linear.

Pooling (``pool``): "mean" of the patch tokens after the encoder's final norm by default
for both regimes, so the arms differ only in what trains; "cls" reproduces MAE's
linear-probe choice exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from mae_tracker.models.vit import POOLING


class JetClassifier(nn.Module):
    """forward(x (B, C, H, W)) -> logits (B,); sigmoid(logit) = P(label 1), e.g. quark."""

    def __init__(self, encoder: nn.Module, *, linear_probe: bool = False, dropout: float = 0.0,
                 pool: str = "mean") -> None:
        super().__init__()
        if pool not in POOLING:
            raise ValueError(f"unknown pool {pool!r}; options: {', '.join(POOLING)}")
        self.encoder = encoder
        self.linear_probe = linear_probe
        self.pool = pool
        dim = encoder.embed_dim
        if linear_probe:
            encoder.requires_grad_(False)
            encoder.eval()
            norm: nn.Module = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        else:
            norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(norm, nn.Dropout(dropout), nn.Linear(dim, 1))
        linear = self.head[-1]
        nn.init.trunc_normal_(linear.weight, std=0.01)  # MAE probe init: start near logit 0
        nn.init.zeros_(linear.bias)

    def train(self, mode: bool = True) -> "JetClassifier":
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()  # frozen means frozen: no dropout / drop-path, no stat updates
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features (B, D); no autograd graph through a frozen encoder."""
        if self.linear_probe:
            with torch.no_grad():
                return self.encoder.features(x, pool=self.pool)
        return self.encoder.features(x, pool=self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters an optimiser should get (the head only for a linear probe)."""
        return [p for p in self.parameters() if p.requires_grad]
