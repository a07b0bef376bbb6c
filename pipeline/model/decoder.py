"""The per-point decoder: bilinear triplane lookup plus the official `NeRFMLP` (density + colour logits).

The extraction code calls this millions of times per mesh, so the lookup is a single grid_sample over
the three planes at once and the MLP activations run in place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.config import DecoderConfig

# (column axis, row axis) of each plane: grid_sample's x reads columns (W), y reads rows (H).
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
_ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


class NeRFMLP(nn.Module):
    """`layers` = Sequential(Linear, act, ..., Linear): Linear at indices 0, 2, ..., 2*n_hidden_layers.

    Output (N, 4): column 0 raw density, columns 1-3 colour logits.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        activation = _ACTIVATIONS[config.activation]
        modules: list[nn.Module] = [nn.Linear(config.in_channels, config.n_neurons, bias=config.bias),
                                    activation(inplace=True)]
        for _ in range(config.n_hidden_layers - 1):
            modules += [nn.Linear(config.n_neurons, config.n_neurons, bias=config.bias), activation(inplace=True)]
        modules.append(nn.Linear(config.n_neurons, 4, bias=config.bias))
        self.layers = nn.Sequential(*modules)

    def forward(self, features: Tensor) -> Tensor:
        raw: Tensor = self.layers(features)
        return raw

    def hidden_features(self, features: Tensor) -> Tensor:
        """(N, in) -> (N, n_neurons): everything but the last Linear (used to calibrate random weights)."""
        hidden: Tensor = self.layers[:-1](features)
        return hidden


def plane_lookup_grid(points: Tensor, radius: float) -> Tensor:
    """(N, 3) world points in [-r, r]^3 -> grid_sample coordinates (3, 1, N, 2) in [-1, 1], one row per plane."""
    normalized = points / radius
    index = torch.tensor(PLANE_AXES, device=points.device)
    return normalized[:, index].permute(1, 0, 2).unsqueeze(1)


def sample_triplane(scene_code: Tensor, points: Tensor, radius: float) -> Tensor:
    """Bilinear features (N, 3*C), plane-major, of scene_code (3, C, h, w) at (N, 3) points.

    align_corners=False and zero padding, as the official renderer: points outside the box read zeros.
    """
    sampled = F.grid_sample(scene_code, plane_lookup_grid(points, radius), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (3, C, 1, N)
    return sampled.squeeze(2).permute(2, 0, 1).reshape(points.shape[0], -1)


def query_points(decoder: NeRFMLP, scene_code: Tensor, points: Tensor, radius: float,
                 density_bias: float, chunk_size: int) -> tuple[Tensor, Tensor]:
    """density_act (N,) = exp(raw + density_bias) and colour (N, 3) = sigmoid(logits), in chunks.

    chunk_size points per decoder call bounds the memory (0 = one call); results do not depend on it.
    """
    count = points.shape[0]
    step = count if chunk_size <= 0 else chunk_size
    density = torch.empty(count, dtype=scene_code.dtype, device=scene_code.device)
    color = torch.empty(count, 3, dtype=scene_code.dtype, device=scene_code.device)
    for start in range(0, count, max(step, 1)):
        stop = min(start + step, count)
        raw = decoder(sample_triplane(scene_code, points[start:stop], radius))
        density[start:stop] = torch.exp(raw[:, 0] + density_bias)
        color[start:stop] = torch.sigmoid(raw[:, 1:])
    return density, color


def density_threshold_raw(threshold: float, density_bias: float) -> float:
    """The raw density at which density_act equals `threshold` (4.2189 for 25 and bias -1)."""
    return math.log(threshold) - density_bias
