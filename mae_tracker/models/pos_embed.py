"""Fixed 2D sine-cosine position embeddings for a (possibly non-square) token grid.

Fixed rather than learned so that a pretrained encoder carries no position parameters
tied to one grid, and because MAE found them as good as learned ones. Half of the
channels encode the row index, the other half the column index; each half is the usual
1D transformer encoding (sin of a geometric ladder of frequencies, then cos).
"""

from __future__ import annotations

import torch


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim) with dim/2 sines followed by dim/2 cosines."""
    if dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even dimension, got {dim}")
    freq = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    freq = 1.0 / (10000.0**freq)
    angles = positions.to(torch.float64)[:, None] * freq[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: tuple[int, int], *, cls_token: bool = True) -> torch.Tensor:
    """Position embedding table of shape (1, [1 +] gh*gw, dim), float32, row-major tokens.

    Token k sits at row k // gw, column k % gw (the order of ``x.flatten(2)`` on an
    NCHW map). With ``cls_token`` a zero row is prepended for the class token.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs embed dim divisible by 4, got {dim}")
    gh, gw = grid_size
    rows = torch.arange(gh).repeat_interleave(gw)  # row index of each token
    cols = torch.arange(gw).repeat(gh)  # column index of each token
    table = torch.cat([_sincos_1d(dim // 2, rows), _sincos_1d(dim // 2, cols)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float().unsqueeze(0)
