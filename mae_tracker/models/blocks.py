"""The pre-norm transformer block of ViT and MAE, with attention that is fast on short sequences.

Parameter for parameter the same network as timm's ``vision_transformer.Block`` (same module
and state-dict names: ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``), so checkpoints load either way. What differs is how attention is computed:

* On CPU, for sequences of at most ``EXPLICIT_ATTENTION_MAX_TOKENS`` tokens, attention is
  two batched matmuls and a softmax on contiguous q, k, v. PyTorch's fused CPU kernel
  (``scaled_dot_product_attention``) splits the work into one tiny task per (sample, head)
  and is 2.4x slower at MAE's 17 visible tokens and 1.3x at 65 (fwd + bwd, measured on the
  2-core CPU; ``bench/bench_mae.py``). From ~130 tokens on it wins, and it never stores the
  N x N attention matrix, so long sequences keep using it.
* On CUDA (or any other device) the fused kernel is always used (flash / memory-efficient).

``forward(x, keep=n)`` returns only the first ``n`` tokens of the output: they still attend
to every token, but the queries, the projection and the MLP of the other tokens are skipped.
MAE's last decoder block uses it, since the loss only looks at the masked patches.

``forward(x, shared_rows=(table, ids))`` says that the first tokens of ``x`` are rows of a
small table (MAE's first decoder block: a masked token is the mask token plus its position's
embedding, the same in every sample): their norm1 and qkv projection run once per table row.
At vit-micro's decoder (batch 128) that cuts the first block's qkv rows from 128 x 65 to
128 x 17 + 64 (-73 %), forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

EXPLICIT_ATTENTION_MAX_TOKENS = 128


class Attention(nn.Module):
    """Multi-head self-attention; ``keep`` limits the queries to the first ``keep`` tokens.

    ``prefix_qkv`` (B, m, 3 * dim) holds the qkv projections of m tokens that come before
    ``x``'s (computed elsewhere, see ``TransformerBlock``): attention runs over all m + n.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, tokens, dim) -> (B, heads, tokens, head_dim), a view."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, keep: int | None = None,
                prefix_qkv: torch.Tensor | None = None) -> torch.Tensor:
        b, n, dim = x.shape
        m = 0 if prefix_qkv is None else prefix_qkv.shape[1]
        keep = m + n if keep is None else keep
        if prefix_qkv is None and keep < n:  # queries (and their projection) for `keep` tokens only
            w_q, w_kv = self.qkv.weight.split([dim, 2 * dim])
            b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([dim, 2 * dim])
            q = F.linear(x[:, :keep], w_q, b_q)
            k, v = F.linear(x, w_kv, b_kv).split(dim, dim=-1)
        else:
            q, k, v = self.qkv(x).split(dim, dim=-1)
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
        if prefix_qkv is not None:  # cat per head layout: the copy .contiguous() would make anyway
            q_pre, k_pre, v_pre = (self.heads(t) for t in prefix_qkv.split(dim, dim=-1))
            q = torch.cat([q_pre, q], dim=2)[:, :, :keep]
            k, v = torch.cat([k_pre, k], dim=2), torch.cat([v_pre, v], dim=2)
        if x.device.type == "cpu" and m + n <= EXPLICIT_ATTENTION_MAX_TOKENS:
            # Contiguous operands: batched matmul on strided views copies inside every call.
            q, k, v = (t.contiguous() for t in (q * self.scale, k, v))
            out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, keep, dim))


class TransformerBlock(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(x)); optional stochastic depth (drop_path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, keep: int | None = None,
                shared_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``shared_rows`` = (table (R, dim), ids (B, m)) says that ``x[:, :m]`` is ``table[ids]``
        (MAE's decoder input: every masked token is the mask token plus its position's
        embedding). norm1 and the qkv projection then run once per table row, not per token."""
        residual = x if keep is None else x[:, :keep]
        if shared_rows is None:
            attended = self.attn(self.norm1(x), keep)
        else:
            table, ids = shared_rows
            # F.embedding, not a gather on an expanded table: its backward adds into R rows
            # instead of filling and summing a (B, R, 3 * dim) tensor.
            prefix_qkv = F.embedding(ids, self.attn.qkv(self.norm1(table)))
            attended = self.attn(self.norm1(x[:, ids.shape[1]:]), keep, prefix_qkv=prefix_qkv)
        x = residual + self.drop_path1(attended)
        return x + self.drop_path2(self.mlp(self.norm2(x)))
