"""ColorField: the detached colour field gives the model's own colours, also after pickling (as it
crosses from the Reconstruct replica to the CPU-only Publish replica)."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from pipeline.model import TripoSR
from pipeline.model.color_field import ColorField


def test_color_field_matches_model_query_after_pickling(tiny_model: TripoSR, fixture_image: torch.Tensor) -> None:
    scene_code = tiny_model(fixture_image)[0]
    points = np.random.default_rng(0).uniform(-0.87, 0.87, size=(5000, 3)).astype(np.float32)
    _, expected = tiny_model.query(scene_code, torch.from_numpy(points))
    field = pickle.loads(pickle.dumps(ColorField.from_model(tiny_model, scene_code)))
    colors = field(points)
    assert colors.shape == (5000, 3) and colors.dtype == np.float32
    np.testing.assert_allclose(colors, expected.numpy(), atol=1e-6)
    payload = scene_code.numel() * 4 + sum(p.numel() * 4 for p in tiny_model.decoder.parameters())
    assert len(pickle.dumps(field)) < payload + 10_000   # scene code + decoder only, no ViT or backbone
