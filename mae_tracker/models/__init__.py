"""Models: MAE (ViT and hybrid Conv+ViT encoders) and classifiers. Knows nothing of data files."""

from mae_tracker.models.classifier import JetClassifier
from mae_tracker.models.encoders import build_encoder
from mae_tracker.models.hybrid import HybridEncoder
from mae_tracker.models.mae import MaskedAutoencoder, build_mae, patchify, unpatchify
from mae_tracker.models.variants import (
    DEFAULT_VARIANT,
    VARIANTS,
    EncoderConfig,
    MAEConfig,
    encoder_config,
    mae_config,
)
from mae_tracker.models.vit import ViTEncoder

__all__ = [
    "DEFAULT_VARIANT",
    "VARIANTS",
    "EncoderConfig",
    "HybridEncoder",
    "JetClassifier",
    "MAEConfig",
    "MaskedAutoencoder",
    "ViTEncoder",
    "build_encoder",
    "build_mae",
    "encoder_config",
    "mae_config",
    "patchify",
    "unpatchify",
]
