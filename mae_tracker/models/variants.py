"""Named model variants and the JSON-able configs that rebuild a model exactly.

An ``EncoderConfig`` (and ``MAEConfig``, which wraps one plus the decoder) is what gets
logged to MLflow and stored with checkpoints: ``build_encoder(EncoderConfig.from_dict(d))``
rebuilds a module whose ``state_dict`` loads (``models.encoders.build_encoder``).
This module needs no torch: configs and the variant table only, apart from the model files
(as timm keeps its registry apart from them). Variants are just defaults for it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

ENCODER_KINDS = ("vit", "hybrid")

# Encoder defaults per variant. "decoder" holds the MAE decoder defaults (used by mae_config).
# conv_* only matter for kind "hybrid"; conv_strides None = derived from the patch size.
VARIANTS: dict[str, dict[str, Any]] = {
    # CPU default: 32x32 images, patch 4 -> 64 tokens; ~1000 img/s MAE pretraining on 2 cores.
    "vit-nano": dict(kind="vit", patch_size=4, embed_dim=64, depth=4, num_heads=4,
                     decoder=dict(decoder_dim=64, decoder_depth=2, decoder_heads=4)),
    "vit-micro": dict(kind="vit", patch_size=4, embed_dim=128, depth=6, num_heads=4,
                      decoder=dict(decoder_dim=96, decoder_depth=2, decoder_heads=4)),
    # The standard ViT sizes (DeiT-Ti/S, ViT-B); patch 16 as in MAE. Decoders lighter than
    # MAE's 512x8 for the small ones, in the same spirit (decoder << encoder).
    "vit-tiny": dict(kind="vit", patch_size=16, embed_dim=192, depth=12, num_heads=3,
                     decoder=dict(decoder_dim=128, decoder_depth=4, decoder_heads=4)),
    "vit-small": dict(kind="vit", patch_size=16, embed_dim=384, depth=12, num_heads=6,
                      decoder=dict(decoder_dim=256, decoder_depth=4, decoder_heads=8)),
    "vit-base": dict(kind="vit", patch_size=16, embed_dim=768, depth=12, num_heads=12,
                     decoder=dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)),
    # ConvMAE-style: two masked conv stages down to the token grid, then a transformer.
    "hybrid-nano": dict(kind="hybrid", patch_size=4, embed_dim=64, depth=3, num_heads=4,
                        conv_dims=(32, 48), conv_depths=(1, 1),
                        decoder=dict(decoder_dim=64, decoder_depth=2, decoder_heads=4)),
    "hybrid-tiny": dict(kind="hybrid", patch_size=16, embed_dim=192, depth=11, num_heads=3,
                        conv_dims=(64, 128), conv_depths=(2, 2),
                        decoder=dict(decoder_dim=128, decoder_depth=4, decoder_heads=4)),
}
DEFAULT_VARIANT = "vit-nano"


def default_conv_strides(patch_size: int) -> tuple[int, int]:
    """Split the patch size over two conv stages, downsampling more in the first.

    (4 -> 2,2; 5 -> 5,1; 8 -> 4,2; 16 -> 4,4.) The product must equal the patch size so the
    last stage sits exactly on the token grid; stage pixels never straddle two patches.
    """
    second = max(d for d in range(1, math.isqrt(patch_size) + 1) if patch_size % d == 0)
    return patch_size // second, second


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an encoder. JSON-able via to_dict/from_dict."""

    kind: str  # "vit" | "hybrid"
    img_size: tuple[int, int]  # (H, W)
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0  # stochastic depth; MAE fine-tuning uses ~0.1
    # Hybrid only: per conv stage channels, number of conv blocks, downsampling stride.
    conv_dims: tuple[int, ...] = ()
    conv_depths: tuple[int, ...] = ()
    conv_strides: tuple[int, ...] = ()
    conv_kernel: int = 5  # depthwise conv kernel inside conv blocks
    # Benchmark baseline, not MAE: run the transformer over ALL L tokens, masked ones replaced
    # by a learned mask token (SimMIM-like). Adds one (1,1,embed_dim) parameter.
    all_tokens: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(s) for s in self.img_size)
        for name in ("conv_dims", "conv_depths", "conv_strides"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"unknown encoder kind {self.kind!r}; options: {', '.join(ENCODER_KINDS)}")
        if len(self.img_size) != 2 or min(self.img_size) < 1:
            raise ValueError(f"img_size must be (H, W) with positive sizes, got {self.img_size}")
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {self.in_chans}")
        h, w = self.img_size
        p = self.patch_size
        if p < 1 or h % p or w % p:
            common = [d for d in _divisors(math.gcd(h, w)) if d > 1]
            raise ValueError(
                f"image size {h}x{w} is not divisible by patch size {p}; "
                f"patch sizes that fit: {common or 'none (crop or pad the images)'}"
            )
        if self.depth < 1 or self.num_heads < 1:
            raise ValueError(f"depth and num_heads must be >= 1, got {self.depth}, {self.num_heads}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by 4 (2D sin-cos position embedding)")
        if self.kind == "hybrid":
            n = len(self.conv_dims)
            if n < 1 or len(self.conv_depths) != n or len(self.conv_strides) != n:
                raise ValueError(
                    "hybrid encoder needs conv_dims, conv_depths and conv_strides of the same length >= 1, "
                    f"got {self.conv_dims}, {self.conv_depths}, {self.conv_strides}"
                )
            if math.prod(self.conv_strides) != p or min(self.conv_strides) < 1:
                raise ValueError(f"conv_strides {self.conv_strides} must multiply to the patch size {p}")
            if self.conv_kernel % 2 == 0:
                raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        _check_keys(cls, d)
        return cls(**d)


def _check_keys(cls: type, d: dict[str, Any]) -> None:
    """A config saved by another version must fail loudly, not build a different model."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid: {sorted(names)}")


@dataclass
class MAEConfig:
    """Encoder config + the light decoder + loss option. JSON-able via to_dict/from_dict."""

    encoder: EncoderConfig
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    # Sparse images (see models.mae): loss weight of occupied target pixels vs empty ones, and
    # masking weight of patches with any occupied pixel vs empty ones. 1 = the plain MAE.
    occupied_pixel_weight: float = 1.0
    occupied_patch_weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (variant name, ...)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        if self.decoder_depth < 1 or self.decoder_heads < 1:
            raise ValueError("decoder_depth and decoder_heads must be >= 1")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} is not divisible by decoder_heads {self.decoder_heads}")
        if self.decoder_dim % 4:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be divisible by 4 (2D sin-cos position embedding)")
        check_occupied_weights(self.occupied_pixel_weight, self.occupied_patch_weight)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["encoder"] = self.encoder.to_dict()
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MAEConfig":
        _check_keys(cls, d)
        d = dict(d)
        d["encoder"] = EncoderConfig.from_dict(d["encoder"])
        return cls(**d)


def check_occupied_weights(occupied_pixel_weight: float, occupied_patch_weight: float) -> None:
    """Both weights are relative to 1 for empty pixels / patches: finite and > 0."""
    for name, value in (("occupied_pixel_weight", occupied_pixel_weight),
                        ("occupied_patch_weight", occupied_patch_weight)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0 (1 = off), got {value!r}")


_FIXED_FIELDS = {"kind", "img_size", "in_chans", "patch_size"}


def encoder_config(
    variant: str,
    *,
    img_size: int | tuple[int, int],
    in_chans: int,
    patch_size: int | None = None,
    **overrides: Any,
) -> EncoderConfig:
    """EncoderConfig for a named variant, adapted to the data and optionally overridden.

    ``overrides`` may set any other EncoderConfig field (depth, embed_dim, num_heads,
    mlp_ratio, drop_path_rate, conv_dims, conv_depths, conv_strides, conv_kernel,
    all_tokens). For hybrids, conv_strides default to a split of the patch size.
    Raises ValueError for an unknown variant or override, or an inconsistent result.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; options: {', '.join(VARIANTS)}")
    allowed = {f.name for f in dataclasses.fields(EncoderConfig)} - _FIXED_FIELDS
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown encoder override(s) {unknown}; options: {sorted(allowed)}")
    spec = {k: v for k, v in VARIANTS[variant].items() if k != "decoder"}
    spec.update(overrides)
    spec["patch_size"] = int(patch_size if patch_size is not None else spec["patch_size"])
    if spec["kind"] == "hybrid" and not spec.get("conv_strides"):
        spec["conv_strides"] = default_conv_strides(spec["patch_size"])
    return EncoderConfig(img_size=img_size, in_chans=in_chans, **spec)


def mae_config(
    variant: str,
    *,
    img_size: int | tuple[int, int],
    in_chans: int,
    patch_size: int | None = None,
    decoder_dim: int | None = None,
    decoder_depth: int | None = None,
    decoder_heads: int | None = None,
    norm_pix_loss: bool = False,
    occupied_pixel_weight: float = 1.0,
    occupied_patch_weight: float = 1.0,
    **encoder_overrides: Any,
) -> MAEConfig:
    """MAEConfig for a named variant: its encoder (see encoder_config) and default decoder."""
    enc = encoder_config(variant, img_size=img_size, in_chans=in_chans, patch_size=patch_size,
                         **encoder_overrides)
    dec = dict(VARIANTS[variant]["decoder"])
    for key, value in (("decoder_dim", decoder_dim), ("decoder_depth", decoder_depth),
                       ("decoder_heads", decoder_heads)):
        if value is not None:
            dec[key] = value
    return MAEConfig(encoder=enc, norm_pix_loss=norm_pix_loss, occupied_pixel_weight=occupied_pixel_weight,
                     occupied_patch_weight=occupied_patch_weight, extra={"variant": variant}, **dec)
