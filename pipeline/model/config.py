"""The TripoSR network configuration: frozen dataclasses parsed from the official `config.yaml`.

The official code loads the file with OmegaConf and builds classes named by `*_cls` strings. We resolve
the one interpolation it uses ourselves and check every `*_cls` against an explicit table of the class
paths we re-implement, so a file can never make us import arbitrary code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DINO_VITB16_NAME = "facebook/dino-vitb16"

# The official `*_cls` path each section must name; we implement exactly these classes.
KNOWN_CLASS_PATHS: dict[str, str] = {
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}

_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


class ConfigError(ValueError):
    """The config names a class or an option we do not implement, or its sizes do not fit together."""


@dataclass(frozen=True)
class ViTConfig:
    """The DINO ViT hyper-parameters (HF `config.json` of the image tokenizer); not in `config.yaml`."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    image_size: int = 224
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    num_channels: int = 3

    @property
    def grid_size(self) -> int:
        """Side of the stored position-embedding grid (14 for ViT-B/16 at 224)."""
        return self.image_size // self.patch_size


# facebook/dino-vitb16 config.json (revision f205d5d8); hard-coded so loading never fetches it.
DINO_VITB16 = ViTConfig()


@dataclass(frozen=True)
class TokenizerConfig:
    plane_size: int
    num_channels: int


@dataclass(frozen=True)
class BackboneConfig:
    in_channels: int
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    cross_attention_dim: int
    norm_num_groups: int = 32

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


@dataclass(frozen=True)
class PostProcessorConfig:
    in_channels: int
    out_channels: int


@dataclass(frozen=True)
class DecoderConfig:
    in_channels: int
    n_neurons: int
    n_hidden_layers: int
    activation: str = "silu"
    bias: bool = True


@dataclass(frozen=True)
class RendererConfig:
    radius: float
    density_bias: float = -1.0
    num_samples_per_ray: int = 128


@dataclass(frozen=True)
class TripoSRConfig:
    """The whole network; `vit` comes from the image tokenizer's HF config, the rest from config.yaml."""

    cond_image_size: int
    vit_name: str
    vit: ViTConfig
    tokenizer: TokenizerConfig
    backbone: BackboneConfig
    post_processor: PostProcessorConfig
    decoder: DecoderConfig
    renderer: RendererConfig


# Options of the official classes that we accept only at the value the released model uses.
_FIXED_OPTIONS: dict[str, dict[str, Any]] = {
    "image_tokenizer": {"enable_gradient_checkpointing": False},
    "backbone": {"dropout": 0.0, "attention_bias": False, "activation_fn": "geglu",
                 "only_cross_attention": False, "double_self_attention": False, "upcast_attention": False,
                 "norm_type": "layer_norm", "norm_elementwise_affine": True},
    "decoder": {"weight_init": None, "bias_init": None},  # only matter at construction: accepted, unused
    "renderer": {"feature_reduction": "concat", "density_activation": "exp", "randomized": False},
}
_FREE_INIT_OPTIONS = {"weight_init", "bias_init"}
_SUPPORTED_ACTIVATIONS = ("silu", "relu")
_SUPPORTED_HIDDEN_ACTS = ("gelu",)


def resolve_interpolations(node: Any, root: Mapping[str, Any]) -> Any:
    """Replace every whole-string `${a.b}` with the value at that dotted path of `root` (OmegaConf style)."""
    if isinstance(node, dict):
        return {key: resolve_interpolations(value, root) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve_interpolations(value, root) for value in node]
    if not isinstance(node, str) or "${" not in node:
        return node
    match = _INTERPOLATION.fullmatch(node.strip())
    if match is None:
        raise ConfigError(f"unsupported interpolation {node!r}: only a whole-value ${{path}} is resolved")
    value: Any = root
    for part in match.group(1).split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ConfigError(f"interpolation {node!r} points at a missing key")
        value = value[part]
    return resolve_interpolations(value, root)


def _section(raw: Mapping[str, Any], name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """The known fields of one config section; fixed options are checked, unknown keys are an error."""
    section = raw.get(name)
    if not isinstance(section, Mapping):
        raise ConfigError(f"config section {name!r} is missing or not a mapping")
    fixed = _FIXED_OPTIONS.get(name, {})
    for key, value in section.items():
        if key in fields or (key in fixed and (key in _FREE_INIT_OPTIONS or value == fixed[key])):
            continue
        if key in fixed:
            raise ConfigError(f"{name}.{key}={value!r} is not supported (only {fixed[key]!r})")
        raise ConfigError(f"unknown config key {name}.{key}")
    return {key: section[key] for key in fields if key in section}


def _check_class_paths(raw: Mapping[str, Any]) -> None:
    for key, expected in KNOWN_CLASS_PATHS.items():
        given = raw.get(key)
        if given != expected:
            raise ConfigError(f"{key}={given!r} is not a known TripoSR class (expected {expected!r})")


def parse_vit_config(raw: Mapping[str, Any]) -> ViTConfig:
    """A ViTConfig from an HF ViT `config.json` dict; extra HF keys are ignored, missing ones default."""
    if raw.get("hidden_act", "gelu") not in _SUPPORTED_HIDDEN_ACTS:
        raise ConfigError(f"ViT hidden_act {raw.get('hidden_act')!r} is not supported (only exact gelu)")
    fields = ViTConfig.__dataclass_fields__
    return ViTConfig(**{key: raw[key] for key in fields if key in raw})


def parse_config(raw: Mapping[str, Any], vit: ViTConfig) -> TripoSRConfig:
    """Validate an official config dict (interpolations unresolved or not) into a TripoSRConfig.

    Raises ConfigError for an unknown `*_cls`, an unknown or unsupported option, or mismatched sizes.
    """
    raw = resolve_interpolations(dict(raw), raw)
    known_top = set(KNOWN_CLASS_PATHS) | {key[: -len("_cls")] for key in KNOWN_CLASS_PATHS} | {"cond_image_size"}
    unknown = sorted(set(raw) - known_top)
    if unknown:
        raise ConfigError(f"unknown top-level config keys: {unknown}")
    _check_class_paths(raw)
    image_tokenizer = _section(raw, "image_tokenizer", ("pretrained_model_name_or_path",))
    if "pretrained_model_name_or_path" not in image_tokenizer:
        raise ConfigError("image_tokenizer.pretrained_model_name_or_path is missing")
    try:
        config = TripoSRConfig(
            cond_image_size=int(raw["cond_image_size"]),
            vit_name=str(image_tokenizer["pretrained_model_name_or_path"]),
            vit=vit,
            tokenizer=TokenizerConfig(**_section(raw, "tokenizer", ("plane_size", "num_channels"))),
            backbone=BackboneConfig(**_section(raw, "backbone", (
                "in_channels", "num_attention_heads", "attention_head_dim", "num_layers",
                "cross_attention_dim", "norm_num_groups"))),
            post_processor=PostProcessorConfig(**_section(raw, "post_processor", ("in_channels", "out_channels"))),
            decoder=DecoderConfig(**_section(raw, "decoder", (
                "in_channels", "n_neurons", "n_hidden_layers", "activation", "bias"))),
            renderer=RendererConfig(**_section(raw, "renderer", ("radius", "density_bias", "num_samples_per_ray"))),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"incomplete or mistyped config: {exc}") from exc
    check_sizes(config)
    return config


def check_sizes(config: TripoSRConfig) -> None:
    """Raise ConfigError when the parts' channel counts do not connect."""
    tok, bb, post, dec = config.tokenizer, config.backbone, config.post_processor, config.decoder
    problems = []
    if bb.in_channels != tok.num_channels:
        problems.append(f"backbone.in_channels {bb.in_channels} != tokenizer.num_channels {tok.num_channels}")
    if post.in_channels != tok.num_channels:
        problems.append(f"post_processor.in_channels {post.in_channels} != tokenizer.num_channels")
    if bb.cross_attention_dim != config.vit.hidden_size:
        problems.append(f"backbone.cross_attention_dim {bb.cross_attention_dim} != ViT hidden_size")
    if bb.in_channels % bb.norm_num_groups:
        problems.append("backbone.in_channels is not divisible by norm_num_groups")
    if dec.in_channels != 3 * post.out_channels:
        problems.append(f"decoder.in_channels {dec.in_channels} != 3 planes x {post.out_channels} (concat)")
    if dec.activation not in _SUPPORTED_ACTIVATIONS:
        problems.append(f"decoder.activation {dec.activation!r} is not one of {_SUPPORTED_ACTIVATIONS}")
    if config.vit.hidden_size % config.vit.num_attention_heads:
        problems.append("ViT hidden_size is not divisible by num_attention_heads")
    if config.cond_image_size % config.vit.patch_size:
        problems.append("cond_image_size is not a multiple of the ViT patch size")
    if problems:
        raise ConfigError("; ".join(problems))


def read_config_yaml(path: Path) -> dict[str, Any]:
    """The raw mapping of an official `config.yaml` (plain YAML; interpolations left as strings)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} does not hold a YAML mapping")
    return raw
