"""Build an encoder from its config: the one place that knows every encoder class."""

from __future__ import annotations

from torch import nn

from mae_tracker.models.hybrid import HybridEncoder
from mae_tracker.models.variants import EncoderConfig
from mae_tracker.models.vit import ViTEncoder


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """Fresh, initialised encoder (ViTEncoder or HybridEncoder) for a config."""
    if cfg.kind == "vit":
        return ViTEncoder(cfg)
    return HybridEncoder(cfg)
