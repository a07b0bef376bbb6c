"""Triplane tokens in and out of the backbone: the learned token grid, its inverse, and the 2x upsampler.

Token index n = plane * S*S + row * S + col (S = plane_size), channels first, as the official
`Triplane1DTokenizer`; the upsampler is one ConvTranspose2d shared by the three planes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.model.config import PostProcessorConfig, TokenizerConfig

NUM_PLANES = 3


class Triplane1DTokenizer(nn.Module):
    """Learned triplane embeddings `(3, C, S, S)` flattened to backbone tokens `(B, C, 3*S*S)`."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.plane_size = config.plane_size
        self.num_channels = config.num_channels
        self.embeddings = nn.Parameter(torch.zeros(NUM_PLANES, config.num_channels,
                                                   config.plane_size, config.plane_size))

    def forward(self, batch_size: int) -> Tensor:
        """The same tokens for every image: (B, C, 3*S*S), plane-major then row-major."""
        tokens = self.embeddings.permute(1, 0, 2, 3).reshape(1, self.num_channels, -1)
        return tokens.expand(batch_size, -1, -1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        """Exact inverse of forward's layout: (B, C, 3*S*S) -> (B, 3, C, S, S)."""
        batch, channels, count = tokens.shape
        if channels != self.num_channels or count != NUM_PLANES * self.plane_size ** 2:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not fit planes of {self.plane_size}^2 x {channels}")
        planes = tokens.reshape(batch, channels, NUM_PLANES, self.plane_size, self.plane_size)
        return planes.permute(0, 2, 1, 3, 4)


class TriplaneUpsampleNetwork(nn.Module):
    """Official post-processor: ConvTranspose2d(k=2, s=2) per plane, (B, 3, Cin, S, S) -> (B, 3, Cout, 2S, 2S)."""

    def __init__(self, config: PostProcessorConfig) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(config.in_channels, config.out_channels, kernel_size=2, stride=2)

    def forward(self, planes: Tensor) -> Tensor:
        batch = planes.shape[0]
        upsampled: Tensor = self.upsample(planes.flatten(0, 1))
        return torch.unflatten(upsampled, 0, (batch, NUM_PLANES))  # Tensor.unflatten is unannotated
