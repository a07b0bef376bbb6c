"""The image tokenizer: a DINO ViT written to the transformers<=4.44 `ViTModel` key layout and numerics.

Module names mirror that layout (`model.embeddings`, `model.encoder.layer.{i}.attention.attention.query`,
...) so the official checkpoint loads strictly. Position embeddings use the LEGACY interpolation
(scale_factor = (H/patch + 0.1)/grid): TripoSR was trained with it and transformers>=4.45 changed it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.config import ViTConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def interpolate_position_table(table: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """Resample a `(1, 1 + g*g, D)` position table (CLS first) to `(1, 1 + grid_h*grid_w, D)`.

    Legacy ViT method: bicubic with the scale factor (grid+0.1)/g, so source coordinates come from that
    factor, not from grid/g. A table already at the target grid is returned unchanged, as upstream does.
    """
    stored = table.shape[1] - 1
    side = math.isqrt(stored)
    if side * side != stored:
        raise ValueError(f"position table of {stored} patches is not a square grid")
    if grid_h * grid_w == stored and grid_h == grid_w:
        return table
    cls_entry, patches = table[:, :1], table[:, 1:]
    dim = table.shape[-1]
    patches = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((grid_h + 0.1) / side, (grid_w + 0.1) / side)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False)
    if patches.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"legacy interpolation gave {tuple(patches.shape[-2:])}, not {(grid_h, grid_w)}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([cls_entry, patches], dim=1)


class PatchEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size,
                                    kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, H/p * W/p, D), row-major over the patch grid."""
        patches: Tensor = self.projection(pixels)
        return patches.flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.grid_size ** 2 + 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) normalised pixels -> (B, 1 + H/p * W/p, D) tokens with positions added."""
        batch, _, height, width = pixels.shape
        patches = self.patch_embeddings(pixels)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1).to(patches.dtype), patches], dim=1)
        positions = interpolate_position_table(self.position_embeddings, height // self.patch_size,
                                               width // self.patch_size)
        return tokens + positions.to(tokens.dtype)


class ViTSelfAttention(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        size = config.hidden_size
        self.query = nn.Linear(size, size, bias=config.qkv_bias)
        self.key = nn.Linear(size, size, bias=config.qkv_bias)
        self.value = nn.Linear(size, size, bias=config.qkv_bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D): softmax(q k^T / sqrt(head_dim)) v over all heads, heads concatenated."""
        batch, tokens, dim = hidden.shape
        q, k, v = (proj(hidden).view(batch, tokens, self.num_heads, -1).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v)
        return attended.transpose(1, 2).reshape(batch, tokens, dim)


class ViTSelfOutput(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        hidden = self.dense(hidden)
        return hidden


class ViTAttention(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.attention = ViTSelfAttention(config)
        self.output = ViTSelfOutput(config)

    def forward(self, hidden: Tensor) -> Tensor:
        hidden = self.attention(hidden)
        hidden = self.output(hidden)
        return hidden


class ViTDense(nn.Module):
    """A single Linear under the name `dense` (the `intermediate` and `output` keys of a ViT layer)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)

    def forward(self, hidden: Tensor) -> Tensor:
        hidden = self.dense(hidden)
        return hidden


class ViTLayer(nn.Module):
    """Pre-LN encoder layer: x + attn(LN(x)), then + MLP(LN(x)) with exact (erf) GELU."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.attention = ViTAttention(config)
        self.intermediate = ViTDense(config.hidden_size, config.intermediate_size)
        self.output = ViTDense(config.intermediate_size, config.hidden_size)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: Tensor) -> Tensor:
        hidden = hidden + self.attention(self.layernorm_before(hidden))
        hidden = hidden + self.output(F.gelu(self.intermediate(self.layernorm_after(hidden))))
        return hidden


class ViTEncoder(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: Tensor) -> Tensor:
        for layer in self.layer:
            hidden = layer(hidden)
        return hidden


class ViTPooler(nn.Module):
    """Kept only so the checkpoint's pooler weights load strictly; TripoSR discards its output."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class ViTModel(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) normalised -> last hidden state (B, 1 + H/p * W/p, D); the pooler is skipped."""
        last_hidden: Tensor = self.layernorm(self.encoder(self.embeddings(pixels)))
        return last_hidden


class DINOImageTokenizer(nn.Module):
    """Official `DINOSingleImageTokenizer` for one view: ImageNet-normalise, then the ViT."""

    image_mean: Tensor
    image_std: Tensor

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.model = ViTModel(config)
        # Non-persistent (not in the checkpoint) and built on the CPU explicitly, so a module constructed
        # on the meta device still holds real constants after the weights are assigned.
        mean = torch.tensor(IMAGENET_MEAN, device="cpu").view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device="cpu").view(1, 3, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> image tokens (B, 1 + H/p * W/p, D), CLS at index 0."""
        tokens: Tensor = self.model((images - self.image_mean) / self.image_std)
        return tokens
