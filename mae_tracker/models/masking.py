"""Per-sample random token masking (MAE style) and its pixel-level views.

Convention everywhere: ``mask`` is (B, L) float with 0 = visible (kept), 1 = masked,
in the original row-major patch order. ``ids_restore`` undoes the shuffle that put the
visible tokens first, so a decoder can put its tokens back in patch order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenMask:
    mask: torch.Tensor  # (B, L) 0 = visible, 1 = masked
    ids_keep: torch.Tensor  # (B, len_keep) indices of visible tokens, in shuffled order
    ids_restore: torch.Tensor  # (B, L) position of each original token in the shuffled order

    @property
    def len_keep(self) -> int:
        return self.ids_keep.shape[1]


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """How many tokens stay visible: round(L * (1 - mask_ratio)), at least one.

    Rounds (half up) rather than truncating so that e.g. L=25, ratio 0.6 keeps 10, not 9.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(num_tokens * (1.0 - mask_ratio) + 0.5)
    if keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} leaves no visible token out of {num_tokens}; lower it"
        )
    return min(keep, num_tokens)


def random_token_mask(
    batch: int,
    num_tokens: int,
    mask_ratio: float,
    *,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> TokenMask:
    """Draw an independent random mask per sample by sorting per-token noise.

    Tokens with the smallest noise are kept, so every sample keeps exactly
    ``num_visible(L, mask_ratio)`` tokens. Pass ``noise`` (B, L) to make the mask
    deterministic (tests, fixed visualisation jets); otherwise uniform noise is drawn from
    torch's global generator on ``device``. With nothing to mask the order is left
    untouched (ids_restore = arange), so mask_ratio=0 is a plain encoder pass.
    """
    len_keep = num_visible(num_tokens, mask_ratio)
    if noise is not None:
        if noise.shape != (batch, num_tokens):
            raise ValueError(f"noise must have shape {(batch, num_tokens)}, got {tuple(noise.shape)}")
        device = noise.device
    if len_keep == num_tokens:
        order = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
        zeros = torch.zeros(batch, num_tokens, device=device)
        return TokenMask(mask=zeros, ids_keep=order, ids_restore=order)
    if noise is None:
        noise = torch.rand(batch, num_tokens, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: smallest noise first = kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_tokens, device=device)
    mask[:, :len_keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)  # back to original patch order
    return TokenMask(mask=mask, ids_keep=ids_shuffle[:, :len_keep], ids_restore=ids_restore)


def occupancy_weighted_noise(noise: torch.Tensor, occupied: torch.Tensor, weight: float) -> torch.Tensor:
    """Masking noise that masks occupied tokens ``weight`` times as readily as empty ones.

    Efraimidis-Spirakis: with keys ``u ** (1 / w)`` the tokens with the largest keys are a
    weighted sample without replacement, and ``random_token_mask`` masks exactly the largest
    keys (it keeps the smallest), so the mask count stays exactly the requested one. Empty tokens
    keep their noise unchanged; ``weight`` 1 returns ``noise`` itself (the same masks as before).
    ``occupied`` is (B, L) bool.
    """
    if weight == 1.0:
        return noise
    exponent = torch.where(occupied, torch.full_like(noise, 1.0 / weight), torch.ones_like(noise))
    return noise.pow(exponent)


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, D), ids (B, n) -> (B, n, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def mask_to_map(mask: torch.Tensor, grid_size: tuple[int, int], scale: int) -> torch.Tensor:
    """Token mask (B, L) -> map (B, 1, gh*scale, gw*scale), each token a scale x scale block."""
    gh, gw = grid_size
    grid = mask.reshape(mask.shape[0], 1, gh, gw)
    if scale == 1:
        return grid
    return grid.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
