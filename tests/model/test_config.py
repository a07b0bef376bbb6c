"""Parsing the official config.yaml: interpolation, the *_cls table, unknown and unsupported options."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.model.config import (
    DINO_VITB16,
    ConfigError,
    ViTConfig,
    parse_config,
    parse_vit_config,
    read_config_yaml,
    resolve_interpolations,
)
from tests.support.paths import RELEASED_DIR


@pytest.fixture
def released_raw() -> dict[str, Any]:
    return read_config_yaml(RELEASED_DIR / "config.yaml")


def test_released_config_parses_to_released_sizes(released_raw: dict[str, Any]) -> None:
    assert released_raw["backbone"]["in_channels"] == "${tokenizer.num_channels}"  # plain YAML keeps the string
    config = parse_config(released_raw, DINO_VITB16)
    assert config.backbone.in_channels == 1024
    assert config.backbone.inner_dim == 1024
    assert config.cond_image_size == 512
    assert config.vit_name == "facebook/dino-vitb16"
    assert config.decoder.n_hidden_layers == 9 and config.decoder.activation == "silu"
    assert config.renderer.radius == 0.87 and config.renderer.density_bias == -1.0


def test_tiny_fixture_config_parses(tiny_fixture_dir: Path) -> None:
    vit = parse_vit_config(json.loads((tiny_fixture_dir / "vit_config.json").read_text()))
    config = parse_config(read_config_yaml(tiny_fixture_dir / "config.yaml"), vit)
    assert (vit.hidden_size, vit.patch_size, vit.grid_size) == (32, 8, 7)
    assert config.tokenizer.plane_size == 8 and config.backbone.in_channels == 64


def test_interpolation_resolves_nested_and_rejects_partial() -> None:
    root = {"a": {"b": 3}, "c": "${a.b}", "d": ["${c}"]}
    assert resolve_interpolations(root, root) == {"a": {"b": 3}, "c": 3, "d": [3]}
    with pytest.raises(ConfigError, match="unsupported interpolation"):
        resolve_interpolations({"x": "size-${a.b}"}, root)
    with pytest.raises(ConfigError, match="missing key"):
        resolve_interpolations({"x": "${a.zz}"}, root)


def test_unknown_class_path_is_rejected(released_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(released_raw)
    raw["backbone_cls"] = "os.system"
    with pytest.raises(ConfigError, match=re.escape("backbone_cls='os.system' is not a known TripoSR class")):
        parse_config(raw, DINO_VITB16)


def test_missing_class_path_is_rejected(released_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(released_raw)
    del raw["decoder_cls"]
    with pytest.raises(ConfigError, match="decoder_cls=None"):
        parse_config(raw, DINO_VITB16)


@pytest.mark.parametrize("section, key, value, message", [
    ("backbone", "activation_fn", "gelu", "not supported"),
    ("renderer", "density_activation", "trunc_exp", "not supported"),
    ("renderer", "feature_reduction", "mean", "not supported"),
    ("decoder", "mystery", 1, "unknown config key decoder.mystery"),
    ("decoder", "activation", "tanh", "decoder.activation"),
    ("post_processor", "in_channels", 512, "post_processor.in_channels"),
    ("backbone", "cross_attention_dim", 512, "cross_attention_dim"),
])
def test_unsupported_options_are_rejected(released_raw: dict[str, Any], section: str, key: str,
                                          value: object, message: str) -> None:
    raw = copy.deepcopy(released_raw)
    raw[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, DINO_VITB16)


def test_default_valued_upstream_options_are_accepted(released_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(released_raw)
    raw["backbone"].update(dropout=0.0, norm_num_groups=32, attention_bias=False)
    raw["decoder"].update(bias=True, weight_init="kaiming_uniform")
    assert parse_config(raw, DINO_VITB16).backbone.norm_num_groups == 32


def test_unknown_top_level_key_is_rejected(released_raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unknown top-level"):
        parse_config({**released_raw, "camera_embedder_cls": "x"}, DINO_VITB16)


def test_vit_config_reads_hf_json_and_rejects_tanh_gelu() -> None:
    vit = parse_vit_config({"hidden_size": 64, "num_attention_heads": 4, "architectures": ["ViTModel"]})
    assert vit == ViTConfig(hidden_size=64, num_attention_heads=4)
    with pytest.raises(ConfigError, match="hidden_act"):
        parse_vit_config({"hidden_act": "gelu_new"})
