"""load_pretrained on real files: local directories, HF cache layouts offline, strict key checks, devices.

Nothing here reaches the network: every hub case runs with HF_HUB_OFFLINE=1 against a real on-disk cache.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model import CheckpointError, ModelUnavailableError, load_pretrained, resolve_device, set_num_threads
from pipeline.model.config import DINO_VITB16
from pipeline.model.hub import read_vit_config

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def copy_model_dir(fixture: Path, target: Path, *, with_vit_config: bool) -> Path:
    target.mkdir(parents=True)
    names = ["config.yaml", "model.ckpt"] + (["vit_config.json"] if with_vit_config else [])
    for name in names:
        shutil.copy(fixture / name, target / name)
    return target


def add_hub_repo(hub_dir: Path, repo_id: str, files: dict[str, Path]) -> None:
    """An HF cache entry as hf_hub_download leaves it: refs/main -> snapshots/<sha>/<files>."""
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE=1 and HF_HOME pointing at an empty folder under tmp_path (returned)."""
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def assert_fixture_scene_codes(model: torch.nn.Module, image: torch.Tensor, reference: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(model(image).numpy(), reference["scene_codes"], atol=1e-4, rtol=0)


def test_vit_config_read_through_copied_fixture_hf_home(tiny_fixture_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         fixture_image: torch.Tensor,
                                                         reference: dict[str, np.ndarray]) -> None:
    model_dir = copy_model_dir(tiny_fixture_dir, tmp_path / "model", with_vit_config=False)
    hf_home = shutil.copytree(tiny_fixture_dir / "hf-home", tmp_path / "hf-home")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert_fixture_scene_codes(load_pretrained(model_dir), fixture_image, reference)


def test_missing_vit_config_offline_is_a_clear_error(tiny_fixture_dir: Path, tmp_path: Path,
                                                     offline_env: Path) -> None:
    model_dir = copy_model_dir(tiny_fixture_dir, tmp_path / "model", with_vit_config=False)
    with pytest.raises(ModelUnavailableError, match=r"ViT config: tsr-fixture/vit-tiny/config.json .*TSR_MODEL"):
        load_pretrained(model_dir)


def test_hub_id_loads_from_hf_cache_layout_offline(tiny_fixture_dir: Path, offline_env: Path,
                                                   fixture_image: torch.Tensor,
                                                   reference: dict[str, np.ndarray]) -> None:
    hub = offline_env / "hub"
    add_hub_repo(hub, "tsr-fixture/tsr-tiny", {name: tiny_fixture_dir / name for name in ("config.yaml", "model.ckpt")})
    vit_snapshot = next((tiny_fixture_dir / "hf-home/hub/models--tsr-fixture--vit-tiny/snapshots").iterdir())
    add_hub_repo(hub, "tsr-fixture/vit-tiny", {"config.json": vit_snapshot / "config.json"})
    assert_fixture_scene_codes(load_pretrained("tsr-fixture/tsr-tiny"), fixture_image, reference)


def test_hub_id_with_explicit_cache_dir(tiny_fixture_dir: Path, tmp_path: Path, offline_env: Path,
                                        fixture_image: torch.Tensor, reference: dict[str, np.ndarray]) -> None:
    cache = tmp_path / "elsewhere"
    add_hub_repo(cache, "shop/tsr", {name: tiny_fixture_dir / name
                                     for name in ("config.yaml", "model.ckpt", "vit_config.json")})
    assert_fixture_scene_codes(load_pretrained("shop/tsr", cache_dir=cache), fixture_image, reference)


def test_offline_hub_id_without_local_copy_says_set_tsr_model(offline_env: Path) -> None:
    expected = re.escape("HF_HUB_OFFLINE is set. Set TSR_MODEL to a local directory")
    with pytest.raises(ModelUnavailableError, match=expected):
        load_pretrained("stabilityai/TripoSR")


def test_dino_vit_config_is_known_and_never_fetched(offline_env: Path, tmp_path: Path) -> None:
    assert read_vit_config("facebook/dino-vitb16", tmp_path) == DINO_VITB16


def test_paths_that_are_not_hub_ids_are_not_looked_up(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a hub id"):
        load_pretrained(tmp_path / "missing" / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape("has no config.yaml")):
        load_pretrained(tmp_path / "empty")


def _rewrite_checkpoint(model_dir: Path, edit: str) -> None:
    state = torch.load(model_dir / "model.ckpt", weights_only=True)
    if edit == "missing":
        del state["decoder.layers.18.bias"]
    elif edit == "missing_pooler":
        del state["image_tokenizer.model.pooler.dense.weight"]
    elif edit == "extra":
        state["decoder.layers.20.weight"] = torch.zeros(4, 64)
    elif edit == "shape":
        state["decoder.layers.0.weight"] = torch.zeros(64, 121)
    torch.save(state, model_dir / "model.ckpt")


@pytest.mark.parametrize("edit, message", [
    ("missing", r"missing keys: decoder.layers.18.bias"),
    ("missing_pooler", r"missing keys: image_tokenizer.model.pooler.dense.weight"),
    ("extra", r"unexpected keys: decoder.layers.20.weight"),
    ("shape", r"wrong shapes: decoder.layers.0.weight \(64, 121\) != \(64, 120\)"),
])
def test_strict_loading_names_the_bad_keys(tiny_fixture_dir: Path, tmp_path: Path, edit: str, message: str) -> None:
    model_dir = copy_model_dir(tiny_fixture_dir, tmp_path / "model", with_vit_config=True)
    _rewrite_checkpoint(model_dir, edit)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(model_dir)


def test_wrapped_checkpoint_is_rejected(tiny_fixture_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_model_dir(tiny_fixture_dir, tmp_path / "model", with_vit_config=True)
    state = torch.load(model_dir / "model.ckpt", weights_only=True)
    torch.save({"state_dict": state}, model_dir / "model.ckpt")
    with pytest.raises(CheckpointError, match="plain"):
        load_pretrained(model_dir)


def test_half_precision_checkpoint_loads_as_float32(tiny_fixture_dir: Path, tmp_path: Path,
                                                    fixture_image: torch.Tensor,
                                                    reference: dict[str, np.ndarray]) -> None:
    model_dir = copy_model_dir(tiny_fixture_dir, tmp_path / "model", with_vit_config=True)
    state = torch.load(model_dir / "model.ckpt", weights_only=True)
    torch.save({key: value.half() for key, value in state.items()}, model_dir / "model.ckpt")
    model = load_pretrained(model_dir)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    np.testing.assert_allclose(model(fixture_image).numpy(), reference["scene_codes"], atol=0.05, rtol=0)


def test_loaded_model_is_real_frozen_and_on_cpu(tiny_model: torch.nn.Module) -> None:
    tensors = list(tiny_model.parameters()) + list(tiny_model.buffers())
    assert all(t.device.type == "cpu" and not t.is_meta for t in tensors)
    assert not any(p.requires_grad for p in tiny_model.parameters())
    assert tiny_model.autocast_dtype is None
    assert len(tiny_model.state_dict()) == 109  # image_mean/std are non-persistent


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"unknown device|not supported"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # an env var alone must not make us pick CUDA
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_pretrained("/nonexistent", device="cuda")


def test_thread_count_and_precision_are_validated(tiny_fixture_dir: Path) -> None:
    saved = torch.get_num_threads()
    try:
        set_num_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
    with pytest.raises(ValueError, match="num_threads"):
        set_num_threads(0)
    with pytest.raises(ValueError, match="precision"):
        load_pretrained(tiny_fixture_dir, precision="fp8")  # type: ignore[arg-type]
