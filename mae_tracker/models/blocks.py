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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

EXPLICIT_ATTENTION_MAX_TOKENS = 128


class Attention(nn.Module):
    """Multi-head self-attention; ``keep`` limits the queries to the first ``keep`` tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        b, n, dim = x.shape
        h, hd = self.num_heads, self.head_dim
        keep = n if keep is None else keep
        if keep == n:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            w_q, w_kv = self.qkv.weight.split([dim, 2 * dim])
            b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([dim, 2 * dim])
            q = F.linear(x[:, :keep], w_q, b_q).reshape(b, keep, h, hd).transpose(1, 2)
            k, v = F.linear(x, w_kv, b_kv).reshape(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        if x.device.type == "cpu" and n <= EXPLICIT_ATTENTION_MAX_TOKENS:
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

    def forward(self, x: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        residual = x if keep is None else x[:, :keep]
        x = residual + self.drop_path1(self.attn(self.norm1(x), keep))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
