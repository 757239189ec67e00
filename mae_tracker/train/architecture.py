"""The network an arm builds from its config and its data: one place every arm imports."""

from __future__ import annotations

from mae_tracker.models.mae import MAEConfig
from mae_tracker.models.variants import VARIANTS, EncoderConfig, encoder_config
from mae_tracker.train.config import CommonConfig, PretrainConfig
from mae_tracker.train.data import RunData


def build_encoder_config(config: CommonConfig, data: RunData) -> EncoderConfig:
    """Encoder architecture from the variant plus the config's non-zero overrides, fitted to
    the file's image shape and channels."""
    overrides = {name: getattr(config, name) for name in ("depth", "embed_dim", "num_heads")
                 if getattr(config, name)}
    return encoder_config(config.variant, img_size=(data.info.height, data.info.width),
                          in_chans=data.info.channels, patch_size=config.patch_size or None, **overrides)


def build_mae_config(config: PretrainConfig, data: RunData) -> MAEConfig:
    """The encoder above plus the variant's decoder with the config's non-zero overrides."""
    decoder = dict(VARIANTS[config.variant]["decoder"])
    for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
        if getattr(config, name):
            decoder[name] = getattr(config, name)
    return MAEConfig(encoder=build_encoder_config(config, data), norm_pix_loss=config.norm_pix_loss,
                     occupied_pixel_weight=config.occupied_pixel_weight,
                     occupied_patch_weight=config.occupied_patch_weight, extra={"variant": config.variant}, **decoder)
