"""Parity with the official TripoSR on the tiny fixture (SPEC §16 tolerances), stage by stage and end to end.

Each stage is fed the official output of the stage before it, so a failure names the stage that drifted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model import TripoSR, load_pretrained
from pipeline.model.random_checkpoint import grid_points

SCENE_ATOL = 1e-4
QUERY_RTOL = 1e-4
COLOR_ATOL = 1e-4


def test_resize_matches_official_rgb_cond(tiny_model: TripoSR, fixture_image: torch.Tensor,
                                          reference: dict[str, np.ndarray]) -> None:
    pixels = tiny_model.resize_images(fixture_image)
    np.testing.assert_allclose(pixels.permute(0, 2, 3, 1).numpy(), reference["rgb_cond"], atol=1e-6, rtol=0)


def test_image_tokens_match(tiny_model: TripoSR, reference: dict[str, np.ndarray]) -> None:
    pixels = torch.from_numpy(reference["rgb_cond"]).permute(0, 3, 1, 2)
    with torch.inference_mode():
        tokens = tiny_model.tokenize_image(pixels)
    expected = reference["image_tokens"][:, 0].transpose(0, 2, 1)  # official (B, 1, D, T) -> (B, T, D)
    np.testing.assert_allclose(tokens.numpy(), expected, atol=SCENE_ATOL, rtol=0)


def test_backbone_matches(tiny_model: TripoSR, reference: dict[str, np.ndarray]) -> None:
    image_tokens = torch.from_numpy(reference["image_tokens"][:, 0].transpose(0, 2, 1).copy())
    with torch.inference_mode():
        out = tiny_model.run_backbone(image_tokens)
    np.testing.assert_allclose(out.numpy(), reference["backbone_out"], atol=SCENE_ATOL, rtol=0)


def test_detokenize_and_upsample_match(tiny_model: TripoSR, reference: dict[str, np.ndarray]) -> None:
    backbone_out = torch.from_numpy(reference["backbone_out"])
    with torch.inference_mode():
        lowres = tiny_model.tokenizer.detokenize(backbone_out)
        scene_codes = tiny_model.decode_planes(backbone_out)
    np.testing.assert_array_equal(lowres.numpy(), reference["triplane_lowres"])
    np.testing.assert_allclose(scene_codes.numpy(), reference["scene_codes"], atol=SCENE_ATOL, rtol=0)


def test_forward_end_to_end(tiny_model: TripoSR, fixture_image: torch.Tensor,
                            reference: dict[str, np.ndarray]) -> None:
    scene_codes = tiny_model(fixture_image)
    assert scene_codes.shape == (1, 3, 40, 16, 16) and scene_codes.dtype == torch.float32
    np.testing.assert_allclose(scene_codes.numpy(), reference["scene_codes"], atol=SCENE_ATOL, rtol=0)


def test_batch_is_one_forward_of_independent_images(tiny_model: TripoSR, fixture_image: torch.Tensor,
                                                    reference: dict[str, np.ndarray]) -> None:
    mirrored = fixture_image.flip(2)
    scene_codes = tiny_model(torch.cat([fixture_image, mirrored]))
    single_mirrored = tiny_model(mirrored)
    np.testing.assert_allclose(scene_codes[0].numpy(), reference["scene_codes"][0], atol=SCENE_ATOL, rtol=0)
    np.testing.assert_allclose(scene_codes[1].numpy(), single_mirrored[0].numpy(), atol=1e-5, rtol=0)
    assert not torch.allclose(scene_codes[0], scene_codes[1], atol=1e-3)


def test_point_queries_match(tiny_model: TripoSR, reference: dict[str, np.ndarray]) -> None:
    scene_code = torch.from_numpy(reference["scene_codes"][0])
    density_act, color = tiny_model.query(scene_code, torch.from_numpy(reference["query_points"]))
    assert density_act.shape == (4096,) and color.shape == (4096, 3)
    np.testing.assert_allclose(density_act.numpy(), reference["query_density_act"][:, 0], rtol=QUERY_RTOL, atol=0)
    np.testing.assert_allclose(color.numpy(), reference["query_color"], atol=COLOR_ATOL, rtol=0)


def test_density_grid_matches(tiny_model: TripoSR, reference: dict[str, np.ndarray]) -> None:
    expected = reference["mc_density_grid"]
    resolution = expected.shape[0]
    scene_code = torch.from_numpy(reference["scene_codes"][0])
    density_act, _ = tiny_model.query(scene_code, grid_points(resolution, tiny_model.renderer_radius))
    grid = density_act.reshape(resolution, resolution, resolution).numpy()
    np.testing.assert_allclose(grid, expected, rtol=QUERY_RTOL, atol=0)
    assert 0.2 < float((grid > 25.0).mean()) < 0.3  # the fixture's calibrated quarter is inside


def test_chunk_size_does_not_change_queries(tiny_model: TripoSR, reference: dict[str, np.ndarray]) -> None:
    scene_code = torch.from_numpy(reference["scene_codes"][0])
    points = torch.from_numpy(reference["query_points"])
    saved = tiny_model.chunk_size
    try:
        results = []
        for chunk_size in (0, 1000, 4096, 100_000):
            tiny_model.chunk_size = chunk_size
            results.append(tiny_model.query(scene_code, points))
    finally:
        tiny_model.chunk_size = saved
    for density_act, color in results[1:]:
        np.testing.assert_allclose(density_act.numpy(), results[0][0].numpy(), rtol=1e-6)
        np.testing.assert_allclose(color.numpy(), results[0][1].numpy(), atol=1e-6)


def test_renderer_radius_comes_from_config(tiny_model: TripoSR) -> None:
    assert tiny_model.renderer_radius == 0.87
    assert tiny_model.density_bias == -1.0
    assert not tiny_model.training


def test_inputs_are_validated(tiny_model: TripoSR, fixture_image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        tiny_model(fixture_image[0])
    with pytest.raises(ValueError, match="float"):
        tiny_model((fixture_image * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"points must be \(N, 3\)"):
        tiny_model.query(torch.zeros(3, 40, 16, 16), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="scene_code"):
        tiny_model.query(torch.zeros(1, 3, 40, 16, 16), torch.zeros(5, 3))


def test_autocast_path_keeps_float32_outputs(tiny_fixture_dir: Path, fixture_image: torch.Tensor,
                                             reference: dict[str, np.ndarray]) -> None:
    """The CUDA precision policy, exercised with CPU bf16 autocast: ViT and backbone in bf16, the rest float32."""
    model = load_pretrained(tiny_fixture_dir)
    model.autocast_dtype = torch.bfloat16
    scene_codes = model(fixture_image)
    assert scene_codes.dtype == torch.float32
    error = np.abs(scene_codes.numpy() - reference["scene_codes"])
    assert 1e-5 < error.max() < 0.25  # bf16 really ran, and stayed close (scene codes std 1.7)
    density_act, _ = model.query(scene_codes[0], torch.from_numpy(reference["query_points"]))
    assert density_act.dtype == torch.float32


def test_weights_stored_in_bf16_give_the_autocast_result_bit_for_bit(tiny_fixture_dir: Path,
                                                                     fixture_image: torch.Tensor) -> None:
    """What load_pretrained does on CUDA, checked under CPU bf16 autocast: the cast made once equals the
    cast autocast makes every forward, and a float32 forward of half weights is refused, not garbage."""
    per_forward = load_pretrained(tiny_fixture_dir)
    per_forward.autocast_dtype = torch.bfloat16
    stored = load_pretrained(tiny_fixture_dir)
    stored.autocast_dtype = torch.bfloat16
    assert stored.store_autocast_weights() > 0
    assert {p.dtype for m in stored.image_tokenizer.modules() if isinstance(m, torch.nn.Linear)
            for p in m.parameters(recurse=False)} == {torch.bfloat16}
    after_backbone = [*stored.post_processor.parameters(), *stored.decoder.parameters(), *stored.tokenizer.parameters()]
    assert {p.dtype for p in after_backbone} == {torch.float32}
    assert torch.equal(stored(fixture_image), per_forward(fixture_image))
    stored.autocast_dtype = None
    with pytest.raises(RuntimeError, match=r"stored in torch\.bfloat16"):
        stored(fixture_image)
