"""The network parts against independent hand computations: the SPEC §15 traps, one test each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.model.config import BackboneConfig, DecoderConfig, PostProcessorConfig, TokenizerConfig
from pipeline.model.decoder import NeRFMLP, sample_triplane
from pipeline.model.image_tokenizer import interpolate_position_table
from pipeline.model.transformer import GEGLU, Transformer1D
from pipeline.model.triplane import Triplane1DTokenizer, TriplaneUpsampleNetwork


def keys_cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys cubic convolution weights of the taps at offsets -1, 0, 1, 2 for a fraction t in [0, 1)."""
    def near(x: float) -> float:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def legacy_resample(grid: np.ndarray, out_size: int, scale: float) -> np.ndarray:
    """Resample axis 0 of `grid` the legacy way: source from the GIVEN scale factor, taps clamped."""
    out = np.zeros((out_size, *grid.shape[1:]))
    for dst in range(out_size):
        src = (dst + 0.5) / scale - 0.5
        base = math.floor(src)
        for offset, weight in zip(range(-1, 3), keys_cubic_weights(src - base), strict=False):
            out[dst] += weight * grid[min(max(base + offset, 0), grid.shape[0] - 1)]
    return out


def test_position_table_uses_legacy_scale_factor() -> None:
    side, target, dim = 7, 16, 5
    table = torch.randn(1, 1 + side * side, dim, dtype=torch.float64)
    result = interpolate_position_table(table, target, target)[0].numpy()
    grid = table[0, 1:].reshape(side, side, dim).numpy()
    scale = (target + 0.1) / side
    expected = legacy_resample(legacy_resample(grid, target, scale).swapaxes(0, 1), target, scale).swapaxes(0, 1)
    np.testing.assert_allclose(result[0], table[0, 0].numpy(), atol=0)
    np.testing.assert_allclose(result[1:].reshape(target, target, dim), expected, atol=1e-10)
    modern = F.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=(target, target), mode="bicubic",
                           align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(modern - expected).max() > 1e-2  # the >=4.45 method really is different


def test_position_table_at_its_own_grid_is_unchanged() -> None:
    table = torch.randn(1, 1 + 14 * 14, 3)
    assert interpolate_position_table(table, 14, 14) is table


def test_geglu_first_half_is_value_second_is_gate() -> None:
    geglu = GEGLU(dim=2, inner=1)
    with torch.no_grad():
        geglu.proj.weight.copy_(torch.eye(2))
        geglu.proj.bias.zero_()
    value, gate = 3.0, -0.7
    out = geglu(torch.tensor([[value, gate]]))
    exact_gelu = gate * 0.5 * (1 + math.erf(gate / math.sqrt(2)))
    assert out.item() == pytest.approx(value * exact_gelu, rel=1e-6)  # the swapped order gives -2.1


def test_backbone_residual_adds_the_pre_groupnorm_tokens() -> None:
    backbone = Transformer1D(BackboneConfig(in_channels=32, num_attention_heads=2, attention_head_dim=8,
                                            num_layers=1, cross_attention_dim=16))
    with torch.no_grad():
        backbone.proj_out.weight.zero_()
        backbone.proj_out.bias.zero_()
    tokens = torch.randn(2, 32, 12) * 5 + 3
    assert torch.equal(backbone(tokens, torch.randn(2, 4, 16)), tokens)


def test_triplane_token_index_is_plane_row_col() -> None:
    tokenizer = Triplane1DTokenizer(TokenizerConfig(plane_size=4, num_channels=3))
    with torch.no_grad():
        tokenizer.embeddings.copy_(torch.randn(3, 3, 4, 4))
    tokens = tokenizer(2)
    assert tokens.shape == (2, 3, 48)
    plane, channel, row, col = 2, 1, 3, 1
    assert tokens[1, channel, plane * 16 + row * 4 + col] == tokenizer.embeddings[plane, channel, row, col]
    assert torch.equal(tokenizer.detokenize(tokens)[0], tokenizer.embeddings)


def test_upsample_is_a_shared_2x2_transposed_convolution() -> None:
    upsample = TriplaneUpsampleNetwork(PostProcessorConfig(in_channels=3, out_channels=2))
    planes = torch.randn(1, 3, 3, 4, 4)
    out = upsample(planes)
    assert out.shape == (1, 3, 2, 8, 8)
    weight, bias = upsample.upsample.weight, upsample.upsample.bias
    plane, h, w, i, j = 1, 2, 3, 1, 0
    expected = bias + torch.einsum("c,co->o", planes[0, plane, :, h, w], weight[:, :, i, j])
    torch.testing.assert_close(out[0, plane, :, 2 * h + i, 2 * w + j], expected)


def test_triplane_lookup_axes_and_zero_padding() -> None:
    """Channel 0 of each plane is a column ramp and channel 1 a row ramp, so samples read back coordinates."""
    size, radius = 8, 0.87
    centres = (torch.arange(size) + 0.5) / size * 2 - 1  # normalised pixel centres (align_corners=False)
    plane = torch.stack([centres[None, :].expand(size, size), centres[:, None].expand(size, size)])
    scene_code = plane[None].repeat(3, 1, 1, 1)
    points = torch.tensor([[0.3, -0.5, 0.6], [-0.2, 0.1, -0.65]]) * radius
    features = sample_triplane(scene_code, points, radius)
    x, y, z = (points / radius).T
    expected = torch.stack([x, y, x, z, y, z], dim=1)  # planes (x, y), (x, z), (y, z); first coord = column
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
    outside = sample_triplane(scene_code, torch.tensor([[5.0, 0.3 * radius, -0.4 * radius]]), radius)
    assert torch.equal(outside[0, :4], torch.zeros(4))  # x far outside: planes 0 and 1 read zero padding
    torch.testing.assert_close(outside[0, 4:], torch.tensor([0.3, -0.4]), atol=1e-6, rtol=0)


def test_decoder_linear_layers_sit_at_even_indices() -> None:
    decoder = NeRFMLP(DecoderConfig(in_channels=120, n_neurons=64, n_hidden_layers=9))
    linear_keys = sorted(int(key.split(".")[1]) for key in decoder.state_dict() if key.endswith("weight"))
    assert linear_keys == list(range(0, 19, 2))
    assert decoder(torch.randn(5, 120)).shape == (5, 4)
