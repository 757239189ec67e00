"""Masked Autoencoder (He et al. 2021) for C-channel detector images.

The encoder (ViT or hybrid, see variants) sees only the visible patches; a light
transformer decoder gets the encoded visible tokens plus a shared learned mask token at
every masked position, and predicts the pixels of the masked patches. The loss is the per-patch
MSE averaged over the masked patches only: reconstructing what the encoder saw is trivial
and would dilute the signal.

Two options for sparse images (jets are ~1 % occupied, and a decoder that predicts empty
patches everywhere already scores a low plain MSE): ``occupied_pixel_weight`` weights the
squared error of occupied target pixels (input > 0) against empty ones, and
``occupied_patch_weight`` masks patches holding any occupied pixel more readily than empty
ones. Both default to 1, which is the plain MAE (same loss, same masks for the same noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mae_tracker.models.blocks import TransformerBlock
from mae_tracker.models.masking import gather_tokens, mask_to_map, occupancy_weighted_noise
from mae_tracker.models.pos_embed import sincos_pos_embed_2d
from mae_tracker.models.encoders import build_encoder
from mae_tracker.models.variants import EncoderConfig, MAEConfig
from mae_tracker.models.vit import init_mae_weights

__all__ = ["MAEConfig", "MaskedAutoencoder", "build_mae", "patchify", "unpatchify"]


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C); patches row-major, each flattened as (p, p, C)."""
    if imgs.ndim != 4:
        raise ValueError(f"patchify expects (B, C, H, W), got shape {tuple(imgs.shape)}")
    b, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(b, c, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # b, gh, gw, p, p, c
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int], in_chans: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W); exact inverse of ``patchify``."""
    b, n, d = patches.shape
    gh, gw = grid_size
    p, c = patch_size, in_chans
    if n != gh * gw or d != p * p * c:
        raise ValueError(f"patches {tuple(patches.shape)} do not fit grid {grid_size}, patch {p}, {c} channels")
    x = patches.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # b, c, gh, p, gw, p
    return x.reshape(b, c, gh * p, gw * p)


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT or hybrid encoder. ``forward`` -> (loss, pred (B, L, p*p*C), mask (B, L)).

    ``encoder_on_all_tokens`` (default: the encoder config's ``all_tokens``) switches to
    the benchmark baseline: the encoder processes all L tokens (masked ones replaced by a
    learned encoder mask token, SimMIM-like) and the decoder therefore needs no mask token
    of its own. Same loss, same decoder; only where masking happens changes.
    """

    def __init__(
        self,
        encoder_cfg: EncoderConfig,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = False,
        *,
        decoder_mlp_ratio: float = 4.0,
        encoder_on_all_tokens: bool | None = None,
        occupied_pixel_weight: float = 1.0,
        occupied_patch_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if encoder_on_all_tokens is not None and encoder_on_all_tokens != encoder_cfg.all_tokens:
            encoder_cfg = EncoderConfig.from_dict({**encoder_cfg.to_dict(), "all_tokens": encoder_on_all_tokens})
        # Validates the decoder settings too, and is what `config` hands back.
        self._config = MAEConfig(encoder=encoder_cfg, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                                 decoder_heads=decoder_heads, decoder_mlp_ratio=decoder_mlp_ratio,
                                 norm_pix_loss=norm_pix_loss, occupied_pixel_weight=occupied_pixel_weight,
                                 occupied_patch_weight=occupied_patch_weight)
        self.occupied_pixel_weight = float(occupied_pixel_weight)
        self.occupied_patch_weight = float(occupied_patch_weight)
        self.encoder = build_encoder(encoder_cfg)
        self.patch_size = encoder_cfg.patch_size
        self.in_chans = encoder_cfg.in_chans
        self.grid_size = encoder_cfg.grid_size
        self.num_patches = encoder_cfg.num_patches
        self.norm_pix_loss = norm_pix_loss
        self.all_tokens = encoder_cfg.all_tokens

        self.decoder_embed = nn.Linear(encoder_cfg.embed_dim, decoder_dim)
        self.mask_token = None if self.all_tokens else nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(decoder_dim, self.grid_size),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(decoder_dim, decoder_heads, decoder_mlp_ratio, qkv_bias=True)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.in_chans)
        for name, module in self.named_modules():
            if name.startswith("decoder"):
                init_mae_weights(module)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def config(self) -> MAEConfig:
        return self._config

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.patch_size, self.grid_size, self.in_chans)

    def patch_occupancy(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the patch holds at least one occupied pixel (> 0) in any channel."""
        return self.patchify(imgs).gt(0).any(dim=-1)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, 1+n, D) -> pixel predictions (B, L, p*p*C) in patch order.

        With patches masked, only the masked ones are predicted (the loss sees nothing
        else); the rows of visible patches are 0. Attention does not care about token order
        (positions travel in the embeddings), so the decoder takes its tokens as
        [masked..., cls, visible...] and its last block runs queries, projection and MLP for
        the masked tokens alone. Every masked patch still attends to every token: the
        prediction is the same as the full decoder's. The first block computes norm1 and qkv
        of the masked tokens once per patch position (they are the mask token plus the
        position's embedding in every sample) and picks them per sample.
        """
        x = self.decoder_embed(latent)
        b, n, d = x.shape
        if self.all_tokens or n == self.num_patches + 1:  # nothing masked, or the baseline
            x = x + self.decoder_pos_embed
            for block in self.decoder_blocks:
                x = block(x)
            return self.decoder_pred(self.decoder_norm(x))[:, 1:]
        n_visible = n - 1
        ids_shuffle = torch.argsort(ids_restore, dim=1)  # visible first, as the encoder had them
        ids_masked = ids_shuffle[:, n_visible:]
        n_masked = ids_masked.shape[1]
        pos = gather_tokens(self.decoder_pos_embed[:, 1:].expand(b, -1, -1), ids_shuffle[:, :n_visible])
        # What a masked token is at each patch position; F.embedding picks rows per sample.
        mask_rows = (self.mask_token + self.decoder_pos_embed[:, 1:])[0]  # (L, d)
        cls = x[:, :1] + self.decoder_pos_embed[:, :1]
        x = torch.cat([F.embedding(ids_masked, mask_rows), cls, x[:, 1:] + pos], dim=1)
        last = len(self.decoder_blocks) - 1
        for i, block in enumerate(self.decoder_blocks):
            keep = n_masked if i == last else None
            if not isinstance(block, TransformerBlock):  # a model pickled before blocks.py (timm Blocks)
                x = block(x)[:, :keep]
            else:  # the first block's masked rows are all rows of mask_rows: shared per position
                x = block(x, keep=keep, shared_rows=(mask_rows, ids_masked) if i == 0 else None)
        pred_masked = self.decoder_pred(self.decoder_norm(x))
        index = ids_masked.unsqueeze(-1).expand_as(pred_masked)
        return pred_masked.new_zeros(b, self.num_patches, pred_masked.shape[-1]).scatter(1, index, pred_masked)

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder should predict: pixels, or per-patch normalised pixels."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over masked patches of the per-patch MSE. An all-zero mask (mask_ratio=0)
        falls back to the mean over all patches, i.e. a plain autoencoder loss.

        With ``occupied_pixel_weight`` w != 1 the per-patch MSE is a weighted mean: occupied
        pixels (input > 0) count w, empty ones 1, so predicting zeros everywhere costs more."""
        error = (pred - self.target(imgs)).pow(2)
        if self.occupied_pixel_weight == 1.0:
            per_patch = error.mean(dim=-1)  # (B, L); the plain MAE loss, bit for bit
        else:
            pixel_weight = torch.where(self.patchify(imgs) > 0, self.occupied_pixel_weight, 1.0).to(error.dtype)
            per_patch = (error * pixel_weight).sum(dim=-1) / pixel_weight.sum(dim=-1)
        weights = torch.where(mask.sum() > 0, mask, torch.ones_like(mask))  # no host sync
        return (per_patch * weights).sum() / weights.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.occupied_patch_weight != 1.0 and mask_ratio > 0:
            if noise is None:  # the draw the encoder would have made
                noise = torch.rand(imgs.shape[0], self.num_patches, device=imgs.device)
            noise = occupancy_weighted_noise(noise, self.patch_occupancy(imgs), self.occupied_patch_weight)
        latent, mask, ids_restore = self.encoder(imgs, mask_ratio, noise)
        pred = self.decode(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For pictures: (composite (B, C, H, W), pixel_mask (B, 1, H, W), 1 = masked).

        composite = input on visible patches, prediction on masked ones; the masked input is
        ``imgs * (1 - pixel_mask)``. Runs in eval mode (restores the previous mode). With
        norm_pix_loss the prediction is mapped back to pixels with each patch's true mean
        and std (as MAE's own visualisation does), so it shows shape, not absolute level.
        """
        was_training = self.training
        self.eval()
        try:
            _, pred, mask = self.forward(imgs, mask_ratio, noise)
        finally:
            self.train(was_training)
        if self.norm_pix_loss:
            patches = self.patchify(imgs)
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        pixel_mask = mask_to_map(mask, self.grid_size, self.patch_size).to(imgs.dtype)
        composite = imgs * (1.0 - pixel_mask) + self.unpatchify(pred).to(imgs.dtype) * pixel_mask
        return composite, pixel_mask


def build_mae(cfg: MAEConfig) -> MaskedAutoencoder:
    """Fresh MaskedAutoencoder from a config (e.g. ``MAEConfig.from_dict`` of a logged one)."""
    model = MaskedAutoencoder(cfg.encoder, decoder_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth,
                              decoder_heads=cfg.decoder_heads, norm_pix_loss=cfg.norm_pix_loss,
                              decoder_mlp_ratio=cfg.decoder_mlp_ratio,
                              occupied_pixel_weight=cfg.occupied_pixel_weight,
                              occupied_patch_weight=cfg.occupied_patch_weight)
    model._config = cfg  # keep `extra` (variant name, ...) as given
    return model
