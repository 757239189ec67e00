"""ViT encoder for MAE: timm PatchEmbed + Blocks, running on the visible tokens only.

The transformer part (position embedding, masking, cls token, blocks, final norm) lives
in ``ViTEncoder`` and is shared by the hybrid encoder, which only replaces how the image
becomes a (B, L, D) token sequence (``embed_patches``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import nn

from mae_tracker.models.blocks import TransformerBlock
from mae_tracker.models.masking import TokenMask, gather_tokens, random_token_mask
from mae_tracker.models.pos_embed import sincos_pos_embed_2d
from mae_tracker.models.variants import EncoderConfig

POOLING = ("mean", "cls")


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_patchify_conv(conv: nn.Conv2d) -> None:
    """A non-overlapping conv is a linear map of a flattened patch: init it like one."""
    nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ViTEncoder(nn.Module):
    """MAE ViT encoder.

    forward(x, mask_ratio, noise) -> (latent, mask, ids_restore):
      latent (B, 1 + n_visible, D): cls token + visible tokens (in shuffled order), normed;
             with ``config.all_tokens`` it is (B, 1 + L, D) in patch order instead.
      mask (B, L): 0 visible, 1 masked, patch order. ids_restore (B, L).
    """

    # A patch's token depends on its own pixels only, so masked patches need not be embedded
    # (``embed_visible``). The hybrid's convolutions see neighbouring pixels: False there.
    patch_tokens_are_local = True

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_dim = cfg.embed_dim
        self.grid_size = cfg.grid_size
        self.num_patches = cfg.num_patches
        self.patch_size = cfg.patch_size
        self._build_patch_embed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # Non-persistent: recomputed from the config, never stale in a checkpoint.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.embed_dim, cfg.grid_size), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.all_tokens else None
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, drop_path=rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self._init_weights()

    # --- pieces a subclass replaces -------------------------------------------------------
    def _build_patch_embed(self, cfg: EncoderConfig) -> None:
        self.patch_embed = PatchEmbed(img_size=cfg.img_size, patch_size=cfg.patch_size,
                                      in_chans=cfg.in_chans, embed_dim=cfg.embed_dim)

    def embed_patches(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, D) tokens in row-major patch order.

        ``mask`` (B, L) is unused here: a patch embedding never mixes patches. The hybrid
        encoder needs it to keep masked pixels out of its convolutions.
        """
        return self.patch_embed(x)

    def embed_visible(self, x: torch.Tensor, tm: TokenMask) -> torch.Tensor:
        """Tokens of the visible patches with their positions, (B, n_visible, D), in
        ``tm.ids_keep`` order.

        The patch embedding is a linear map of each patch's own pixels, so only the visible
        patches are embedded: the same tokens as embedding all L and keeping the visible ones,
        for (1 - mask_ratio) of the work.
        """
        b, c, h, w = x.shape
        p = self.patch_size
        # (B, L, C*p*p): each patch flattened as (C, p, p), the order of the conv's weights
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, self.num_patches, -1)
        proj = self.patch_embed.proj
        tokens = F.linear(gather_tokens(patches, tm.ids_keep), proj.weight.flatten(1), proj.bias)
        return tokens + gather_tokens(self.pos_embed[:, 1:].expand(b, -1, -1), tm.ids_keep)

    def _init_weights(self) -> None:
        init_patchify_conv(self.patch_embed.proj)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if not name.startswith("patch_embed"):
                init_mae_weights(module)

    # --- shared transformer path ----------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        c, (h, w) = self.config.in_chans, self.config.img_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] != h or x.shape[3] != w:
            raise ValueError(f"encoder expects images (B, {c}, {h}, {w}), got {tuple(x.shape)}")

    def forward(
        self, x: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(x)
        tm = random_token_mask(x.shape[0], self.num_patches, mask_ratio, noise=noise, device=x.device)
        if self.patch_tokens_are_local and self.mask_token is None and tm.len_keep < self.num_patches:
            tokens = self.embed_visible(x, tm)
        else:  # nothing masked, the all-tokens baseline or the hybrid: every patch is embedded
            tokens = self._select_tokens(self.embed_patches(x, tm.mask) + self.pos_embed[:, 1:], tm)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.norm(h), tm.mask, tm.ids_restore

    def _select_tokens(self, tokens: torch.Tensor, tm: TokenMask) -> torch.Tensor:
        if self.mask_token is None:
            return gather_tokens(tokens, tm.ids_keep)  # MAE: visible tokens only
        # Baseline: keep all L tokens, masked ones swapped for the (position-tagged) mask token.
        m = tm.mask.unsqueeze(-1)
        return tokens * (1.0 - m) + (self.mask_token + self.pos_embed[:, 1:]) * m

    def features(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """Pooled (B, D) representation of unmasked images.

        "mean": average of the patch tokens after the final norm (MAE fine-tuning's
        global pooling; uses every patch, robust for jets whose energy sits in a few
        pixels). "cls": the class token after the final norm (MAE linear-probe recipe).
        """
        if pool not in POOLING:
            raise ValueError(f"unknown pool {pool!r}; options: {', '.join(POOLING)}")
        latent, _, _ = self.forward(x, mask_ratio=0.0)
        return latent[:, 1:].mean(dim=1) if pool == "mean" else latent[:, 0]
