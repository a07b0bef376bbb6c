"""The random-checkpoint maker: official layout (full size checked on the meta device), round trips through
load_pretrained offline, determinism, and a calibrated, non-degenerate iso-surface."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mcubes
import pytest
import torch
import trimesh

from pipeline.model import load_pretrained
from pipeline.model.checkpoint import build_model
from pipeline.model.config import DINO_VITB16, parse_config, parse_vit_config, read_config_yaml
from pipeline.model.random_checkpoint import (
    grid_points,
    main,
    make_calibration_image,
    official_config,
    random_model,
    random_tensor,
    write_random_checkpoint,
)
from pipeline.model.tsr import TripoSR
from tests.support.paths import RELEASED_DIR

RELEASED_PARAMS = 419_275_628


def inside_fraction_and_colors(model: TripoSR, resolution: int = 64) -> tuple[float, torch.Tensor, torch.Tensor]:
    scene_code = model(make_calibration_image(model.config.cond_image_size))[0]
    density_act, color = model.query(scene_code, grid_points(resolution, model.renderer_radius))
    return float((density_act > 25.0).float().mean()), density_act, color


def test_full_config_is_the_released_config() -> None:
    assert official_config("full") == read_config_yaml(RELEASED_DIR / "config.yaml")
    assert parse_vit_config(json.loads((RELEASED_DIR / "vit_config.json").read_text())) == DINO_VITB16


def test_full_key_table_equals_released_on_meta_device() -> None:
    model = build_model(parse_config(official_config("full"), DINO_VITB16))
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    released = json.loads((RELEASED_DIR / "state_dict_shapes.json").read_text())
    ours = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    assert ours == list(released.items())  # same 549 keys, same shapes, same order
    assert sum(math.prod(shape) for _, shape in ours) == RELEASED_PARAMS


def test_tiny_round_trips_offline_without_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    out = write_random_checkpoint(tmp_path / "tiny", "tiny", seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.ckpt", "vit_config.json"]
    model = load_pretrained(out)
    saved = torch.load(out / "model.ckpt", weights_only=True)
    assert list(saved) == list(model.state_dict())
    assert all(torch.equal(saved[key], value) for key, value in model.state_dict().items())
    fraction, _, color = inside_fraction_and_colors(model)
    assert 0.2 < fraction < 0.3
    assert 0.4 < float(color.mean()) < 0.6 and float(color.std()) > 0.05


def test_tiny_surface_is_a_few_real_pieces() -> None:
    model = random_model("tiny", seed=0)
    _, density_act, _ = inside_fraction_and_colors(model)
    vertices, faces = mcubes.marching_cubes(density_act.reshape(64, 64, 64).numpy() - 25.0, 0.0)
    pieces = trimesh.Trimesh(vertices, faces).split(only_watertight=False)
    assert len(faces) > 1000 and len(pieces) <= 20  # independent random taps gave ~270 speckles


def test_fill_is_per_key_and_seeded() -> None:
    shape = torch.Size([64, 120])
    first = random_tensor("decoder.layers.0.weight", shape, seed=0)
    assert torch.equal(first, random_tensor("decoder.layers.0.weight", shape, seed=0))
    assert not torch.equal(first, random_tensor("decoder.layers.0.weight", shape, seed=1))
    assert not torch.equal(first, random_tensor("decoder.layers.2.weight", shape, seed=0))
    assert abs(float(first.std()) - 1 / math.sqrt(120)) < 0.01
    gains = random_tensor("backbone.norm.weight", torch.Size([1024]), seed=0)
    assert abs(float(gains.mean()) - 1.0) < 0.02


def test_main_writes_and_prints_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "tiny", "--seed", "3", str(tmp_path / "ckpt")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.ckpt").is_file()
    with pytest.raises(ValueError, match="size"):
        write_random_checkpoint(tmp_path / "bad", "medium")  # type: ignore[arg-type]


@pytest.mark.slow
def test_full_random_checkpoint_round_trip(full_random_checkpoint: Path) -> None:
    out = full_random_checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.ckpt"]
    assert abs((out / "model.ckpt").stat().st_size - 1_677_290_527) < 1_000_000
    model = load_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAMS
    fraction, _, color = inside_fraction_and_colors(model)
    assert 0.2 < fraction < 0.3
    assert 0.4 < float(color.mean()) < 0.6
