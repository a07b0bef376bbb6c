"""Fixtures of the model tests: the tiny fixture's reference arrays and its checkpoint loaded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model import TripoSR, load_pretrained


@pytest.fixture(scope="session")
def reference(tiny_fixture_dir: Path) -> dict[str, np.ndarray]:
    """The official code's outputs on the tiny fixture (SPEC §16), as plain arrays."""
    with np.load(tiny_fixture_dir / "reference.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


@pytest.fixture(scope="session")
def tiny_model(tiny_fixture_dir: Path) -> TripoSR:
    """The tiny fixture checkpoint through load_pretrained (its ViT config from vit_config.json beside it)."""
    return load_pretrained(tiny_fixture_dir, chunk_size=8192)


@pytest.fixture(scope="session")
def fixture_image(reference: dict[str, np.ndarray]) -> torch.Tensor:
    """The model input: the fixture's uint8 512^2 RGB image as (1, 512, 512, 3) float in [0, 1]."""
    return torch.from_numpy(reference["image"]).float().div(255.0)[None]
