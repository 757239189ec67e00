"""Hybrid Conv+ViT encoder in the spirit of ConvMAE (Gao et al. 2022).

A few convolutional stages bring the image down to the token grid (H/p, W/p); the
transformer then runs on the visible tokens only, exactly as in ``ViTEncoder``.

Masking without leaks: the token mask is drawn first, blown up to each stage's
resolution, and applied (1) to the input pixels, (2) to every stage's downsampling output
and (3) before and after every spatial (depthwise) convolution. Masked positions are
therefore exactly zero everywhere (the masked region acts like zero padding), so a
visible token can see *that* a neighbour is masked but never *what* the masked pixels
contained. (1), (2) and the masking before the depthwise conv each block content leaks on
their own; together they also stop constants such as norm biases spreading from masked
positions. Norms are LayerNorm over
channels (per pixel, per sample); BatchNorm would mix statistics across samples and
positions, masked ones included. Downsampling convs have kernel = stride, and the strides
multiply to the patch size, so a stage pixel never straddles two patches.

Not taken from ConvMAE: its multi-scale fusion of conv features into the decoder input.
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from torch import nn

from mae_tracker.models.masking import mask_to_map
from mae_tracker.models.variants import EncoderConfig
from mae_tracker.models.vit import ViTEncoder, init_mae_weights, init_patchify_conv


class MaskedConvBlock(nn.Module):
    """Residual depthwise-conv + pointwise-MLP block that keeps masked positions at zero."""

    def __init__(self, dim: int, kernel: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = LayerNorm2d(dim)
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        # The norm turns a zero vector into its bias: re-mask before the spatial conv.
        x = x + self.dwconv(self.norm1(x) * visible) * visible
        return x + self.mlp(self.norm2(x)) * visible  # pointwise: no mixing, just re-mask


class ConvStage(nn.Module):
    """Downsample by ``stride`` (kernel = stride), LayerNorm, then ``depth`` conv blocks."""

    def __init__(self, in_dim: int, dim: int, stride: int, depth: int, kernel: int, mlp_ratio: float) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_dim, dim, kernel_size=stride, stride=stride)
        self.norm = LayerNorm2d(dim)
        self.blocks = nn.ModuleList(MaskedConvBlock(dim, kernel, mlp_ratio) for _ in range(depth))

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.down(x)) * visible
        for block in self.blocks:
            x = block(x, visible)
        return x


class HybridEncoder(ViTEncoder):
    """Conv stages -> tokens -> transformer on visible tokens. Same interface as ViTEncoder."""

    patch_tokens_are_local = False  # the convolutions see neighbouring pixels: embed the whole image

    def _build_patch_embed(self, cfg: EncoderConfig) -> None:
        dims = (cfg.in_chans,) + cfg.conv_dims
        self.stages = nn.ModuleList(
            ConvStage(dims[i], dims[i + 1], cfg.conv_strides[i], cfg.conv_depths[i], cfg.conv_kernel, cfg.mlp_ratio)
            for i in range(len(cfg.conv_dims))
        )
        # Upsampling factor from the token grid to the input and to each stage's output.
        self._scales = [cfg.patch_size]
        for stride in cfg.conv_strides:
            self._scales.append(self._scales[-1] // stride)
        self.token_proj = nn.Linear(cfg.conv_dims[-1], cfg.embed_dim)  # per token: no mixing

    def _init_weights(self) -> None:
        for stage in self.stages:
            init_patchify_conv(stage.down)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if not isinstance(module, nn.Conv2d):  # convs other than `down` keep torch's default
                init_mae_weights(module)

    def embed_patches(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        visible = 1.0 - mask  # (B, L), 1 = visible
        x = x * mask_to_map(visible, self.grid_size, self._scales[0]).to(x.dtype)
        for stage, scale in zip(self.stages, self._scales[1:]):
            x = stage(x, mask_to_map(visible, self.grid_size, scale).to(x.dtype))
        return self.token_proj(x.flatten(2).transpose(1, 2))  # (B, L, conv_dims[-1]) -> (B, L, D)
