"""The backbone: a diffusers-style `Transformer1D` over triplane tokens, cross-attending to image tokens.

Key names follow the official checkpoint (`transformer_blocks.{j}.attn1.to_q`, `ff.net.0.proj`, ...);
dropout slots (p=0 upstream) are `nn.Identity` so the Sequential indices of the keys stay the same.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.config import BackboneConfig


class Attention(nn.Module):
    """Multi-head attention without q/k/v bias; `context=None` means self-attention."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Identity()])

    def forward(self, hidden: Tensor, context: Tensor | None = None) -> Tensor:
        """hidden (B, N, Dq), context (B, M, Dc) -> (B, N, Dq); scale 1/sqrt(head_dim), no mask."""
        context = hidden if context is None else context
        batch, tokens, _ = hidden.shape
        q = self.to_q(hidden).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k = self.to_k(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v)
        projected: Tensor = self.to_out[0](attended.transpose(1, 2).reshape(batch, tokens, -1))
        return projected


class GEGLU(nn.Module):
    """Linear to 2*inner, then value * GELU(gate): the FIRST half is the value, the second the gate."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, hidden: Tensor) -> Tensor:
        projected: Tensor = self.proj(hidden)
        value, gate = projected.chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """`net` = [GEGLU(dim -> 4*dim), dropout slot, Linear(4*dim -> dim)]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, hidden: Tensor) -> Tensor:
        hidden = self.net[0](hidden)
        hidden = self.net[2](hidden)
        return hidden


class BasicTransformerBlock(nn.Module):
    """h + self-attn(LN1 h), + cross-attn(LN2 h, image tokens), + GEGLU FF(LN3 h); LayerNorm eps 1e-5."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, cross_attention_dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, hidden: Tensor, image_tokens: Tensor) -> Tensor:
        hidden = hidden + self.attn1(self.norm1(hidden))
        hidden = hidden + self.attn2(self.norm2(hidden), image_tokens)
        hidden = hidden + self.ff(self.norm3(hidden))
        return hidden


class Transformer1D(nn.Module):
    """(B, C, N) triplane tokens + (B, M, Dc) image tokens -> (B, C, N), plus the pre-norm input."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        inner = config.inner_dim
        self.norm = nn.GroupNorm(config.norm_num_groups, config.in_channels, eps=1e-6)
        self.proj_in = nn.Linear(config.in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, config.num_attention_heads, config.attention_head_dim,
                                  config.cross_attention_dim)
            for _ in range(config.num_layers))
        self.proj_out = nn.Linear(inner, config.in_channels)

    def forward(self, tokens: Tensor, image_tokens: Tensor) -> Tensor:
        hidden: Tensor = self.proj_in(self.norm(tokens).transpose(1, 2))
        for block in self.transformer_blocks:
            hidden = block(hidden, image_tokens)
        hidden = self.proj_out(hidden)
        # The residual adds the tokens from before the GroupNorm (SPEC §7.4).
        return hidden.transpose(1, 2) + tokens
