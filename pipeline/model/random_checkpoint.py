"""Random-weight TripoSR checkpoints in the official format: a testing and benchmarking tool, not a model.

`full` has the released dimensions (419,275,628 parameters, the 549 released keys); `tiny` has the parity
fixture's. Random weights give a degenerate iso-surface, so the last decoder layer is calibrated (as the
fixture's) until about a quarter of a 64^3 grid is inside (density_act > 25) and colours spread around 0.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor

from pipeline.model.checkpoint import assign_weights, build_model
from pipeline.model.config import DINO_VITB16, DINO_VITB16_NAME, KNOWN_CLASS_PATHS, ViTConfig, parse_config
from pipeline.model.decoder import density_threshold_raw, sample_triplane
from pipeline.model.hub import CHECKPOINT_FILENAME, CONFIG_FILENAME, VIT_CONFIG_FILENAME
from pipeline.model.tsr import TripoSR
from pipeline.presets import DEFAULT_CHUNK_SIZE

logger = logging.getLogger(__name__)

Size = Literal["tiny", "full"]
TINY_VIT_NAME = "shop3d/random-vit-tiny"
TINY_VIT = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     patch_size=8, image_size=56)
CALIBRATION_RESOLUTION = 64
INSIDE_FRACTION = 0.25
DENSITY_SPREAD = 4.0  # std of the calibrated raw density: a smooth but clearly bounded surface
COLOR_SPREAD = 0.75  # std of the calibrated colour logits: colours roughly in 0.3..0.7
_SMOOTH_GRID = 4  # triplane embeddings are noise on a 4x4 grid, upsampled: a blob, not speckle


def official_config(size: Size) -> dict[str, Any]:
    """The official config.yaml mapping (released values, or the tiny fixture's), interpolation unresolved."""
    tiny = size == "tiny"
    return {
        "cond_image_size": 128 if tiny else 512,
        "image_tokenizer_cls": KNOWN_CLASS_PATHS["image_tokenizer_cls"],
        "image_tokenizer": {"pretrained_model_name_or_path": TINY_VIT_NAME if tiny else DINO_VITB16_NAME},
        "tokenizer_cls": KNOWN_CLASS_PATHS["tokenizer_cls"],
        "tokenizer": {"plane_size": 8 if tiny else 32, "num_channels": 64 if tiny else 1024},
        "backbone_cls": KNOWN_CLASS_PATHS["backbone_cls"],
        "backbone": {"in_channels": "${tokenizer.num_channels}", "num_attention_heads": 4 if tiny else 16,
                     "attention_head_dim": 16 if tiny else 64, "num_layers": 2 if tiny else 16,
                     "cross_attention_dim": 32 if tiny else 768},
        "post_processor_cls": KNOWN_CLASS_PATHS["post_processor_cls"],
        "post_processor": {"in_channels": 64 if tiny else 1024, "out_channels": 40},
        "decoder_cls": KNOWN_CLASS_PATHS["decoder_cls"],
        "decoder": {"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9, "activation": "silu"},
        "renderer_cls": KNOWN_CLASS_PATHS["renderer_cls"],
        "renderer": {"radius": 0.87, "feature_reduction": "concat", "density_activation": "exp",
                     "density_bias": -1.0, "num_samples_per_ray": 128},
    }


def vit_config_for(size: Size) -> ViTConfig:
    return TINY_VIT if size == "tiny" else DINO_VITB16


def _generator(seed: int, key: str) -> torch.Generator:
    """A per-key stream, so a tensor's values do not depend on the order or set of other keys."""
    # torch's CPU generator keeps only the low 32 bits of a seed, so seed and key are hashed together.
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))


def random_tensor(key: str, shape: torch.Size, seed: int) -> Tensor:
    """Fixture-style fill: weights N/sqrt(fan_in), norm gains 1 + 0.1N, biases and embeddings 0.02N."""
    gen = _generator(seed, key)
    if key == "tokenizer.embeddings":
        planes, channels, side, _ = shape
        coarse = torch.randn(planes, channels, _SMOOTH_GRID, _SMOOTH_GRID, generator=gen)
        smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=True)
        return smooth / smooth.std()
    if key == "post_processor.upsample.weight":
        # Equal 2x2 taps make the upsampling nearest-neighbour. Independent random taps turn every 2x2
        # block into a checkerboard, and the iso-surface speckles into hundreds of pieces.
        inputs, outputs, taps, _ = shape
        tap = torch.randn(inputs, outputs, 1, 1, generator=gen).mul_(1.0 / math.sqrt(inputs))
        return tap.expand(inputs, outputs, taps, taps).contiguous()
    noise = torch.randn(shape, generator=gen)
    if key.endswith(("cls_token", "position_embeddings", "bias")):
        return noise.mul_(0.02)
    if len(shape) == 1:  # LayerNorm / GroupNorm gain
        return noise.mul_(0.1).add_(1.0)
    return noise.mul_(1.0 / math.sqrt(math.prod(shape[1:])))


def make_calibration_image(size: int = 512) -> Tensor:
    """(1, size, size, 3) float in [0, 1]: a red disc on the official 0.5 gray (127/255) background."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2) < 0.3 ** 2
    image = torch.full((size, size, 3), 127 / 255)
    image[inside] = torch.tensor([0.8, 0.15, 0.1])
    return image[None]



def make_stripes_image(size: int = 512) -> Tensor:
    """(1, size, size, 3): a square of diagonal stripes on the official gray; from the same weights it gives a
    more convoluted surface than the calibration disc (the benches' and tests' hard case)."""
    index = torch.arange(size)
    stripes = ((index[:, None] + index[None, :]) // max(size // 16, 1)) % 2 == 0
    square = (index[:, None] - size // 2).abs().maximum((index[None, :] - size // 2).abs()) < size // 3
    image = torch.full((size, size, 3), 127 / 255)
    image[stripes & square] = torch.tensor([0.15, 0.6, 0.2])
    image[~stripes & square] = torch.tensor([0.85, 0.2, 0.6])
    return image[None]

def grid_points(resolution: int, radius: float) -> Tensor:
    """(R^3, 3) points of the marching-cubes grid with endpoints, flat index ix*R^2 + iy*R + iz."""
    axis = torch.linspace(-radius, radius, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def calibrate_last_layer(model: TripoSR) -> None:
    """Rescale decoder.layers[-1] so INSIDE_FRACTION of the calibration grid is inside, colours near 0.5."""
    scene_code = model(make_calibration_image(model.config.cond_image_size))[0]
    points = grid_points(CALIBRATION_RESOLUTION, model.renderer_radius)
    hidden = torch.cat([model.decoder.hidden_features(sample_triplane(scene_code, chunk, model.renderer_radius))
                        for chunk in torch.split(points, DEFAULT_CHUNK_SIZE)])
    last = model.decoder.layers[-1]
    if not isinstance(last, torch.nn.Linear):
        raise TypeError(f"the decoder must end in a Linear layer, not {type(last).__name__}")
    logits = hidden @ last.weight.T  # (M, 4), the direction of each output kept from the random fill
    spread, centre = logits.std(dim=0), logits.mean(dim=0)
    scale = torch.cat([DENSITY_SPREAD / spread[:1], COLOR_SPREAD / spread[1:]])
    inside_at = torch.quantile(logits[:, 0], 1.0 - INSIDE_FRACTION)
    raw_threshold = density_threshold_raw(25.0, model.density_bias)
    bias = torch.cat([raw_threshold - scale[:1] * inside_at, -scale[1:] * centre[1:]])
    # Assign fresh tensors: the model's own may be memory-mapped read-only storage.
    last.weight = torch.nn.Parameter(last.weight * scale[:, None], requires_grad=False)
    last.bias = torch.nn.Parameter(bias, requires_grad=False)


def random_model(size: Size, seed: int = 0) -> TripoSR:
    """A calibrated random TripoSR in memory (one copy of the weights)."""
    model = build_model(parse_config(official_config(size), vit_config_for(size)))
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    model = assign_weights(model, {key: random_tensor(key, shape, seed) for key, shape in shapes.items()})
    calibrate_last_layer(model)
    return model


def write_random_checkpoint(out_dir: Path, size: Size, seed: int = 0) -> Path:
    """Write config.yaml + model.ckpt (+ vit_config.json for tiny) into out_dir; load_pretrained(out_dir) works
    offline with no environment. The state_dict is saved tensor by tensor from the model: no second copy.
    """
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    out_dir = Path(out_dir)
    model = random_model(size, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILENAME).write_text(yaml.safe_dump(official_config(size), sort_keys=False), encoding="utf-8")
    if size == "tiny":
        vit = {"architectures": ["ViTModel"], "model_type": "vit", "hidden_act": "gelu", **asdict(TINY_VIT)}
        (out_dir / VIT_CONFIG_FILENAME).write_text(json.dumps(vit, indent=2), encoding="utf-8")
    torch.save(model.state_dict(), out_dir / CHECKPOINT_FILENAME)
    logger.info("random %s TripoSR checkpoint (seed %d) written to %s", size, seed, out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """`shop3d model random --size tiny|full DIR [--seed N]`: write a random checkpoint, print its directory."""
    parser = argparse.ArgumentParser(prog="shop3d model random", description=main.__doc__)
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(write_random_checkpoint(args.directory, args.size, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
