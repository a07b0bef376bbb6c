"""Loading: the one road from a hub id or a local directory to a ready `TripoSR` in eval mode.

The network is built on the meta device and the memory-mapped checkpoint tensors are assigned into it,
so loading never holds two copies of the weights (upstream peaks at twice the checkpoint size).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from pipeline.model.config import TripoSRConfig, parse_config, read_config_yaml
from pipeline.model.device import autocast_dtype_for, resolve_device, set_float32_precision, set_num_threads
from pipeline.model.hub import locate_model_files, read_vit_config
from pipeline.model.tsr import TripoSR
from pipeline.presets import DEFAULT_CHUNK_SIZE

logger = logging.getLogger(__name__)

Precision = Literal["auto", "float32"]
_LISTED_KEYS = 8


class CheckpointError(RuntimeError):
    """The checkpoint file is not a plain state_dict in the official key layout for its config."""


def build_model(config: TripoSRConfig, chunk_size: int = DEFAULT_CHUNK_SIZE) -> TripoSR:
    """The network on the meta device: no memory, parameters to be assigned from a state_dict."""
    with torch.device("meta"):
        return TripoSR(config, chunk_size=chunk_size)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The checkpoint's tensors, memory-mapped (weights_only: never unpickles arbitrary objects)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc
        logger.warning("%s is in the legacy torch format; loading it without mmap", path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} must hold a plain {{key: tensor}} state_dict")
    return dict(loaded)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LISTED_KEYS else "")


def check_state_dict(expected: Mapping[str, torch.Size], found: Mapping[str, Tensor]) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys (strict official layout)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    misshaped = [f"{key} {tuple(found[key].shape)} != {tuple(shape)}"
                 for key, shape in expected.items() if key in found and found[key].shape != shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {_listed(misshaped)}")
    if problems:
        raise CheckpointError("checkpoint does not match the config: " + "; ".join(problems))


def assign_weights(model: TripoSR, state_dict: Mapping[str, Tensor]) -> TripoSR:
    """Strictly check, then assign (not copy) the tensors into the meta-built model; frozen, eval mode."""
    expected = {key: value.shape for key, value in model.state_dict().items()}
    check_state_dict(expected, state_dict)
    as_float = {key: value if value.dtype == torch.float32 else value.float() for key, value in state_dict.items()}
    model.load_state_dict(as_float, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()


def load_config(config_path: Path, model_dir: Path, cache_dir: str | Path | None = None) -> TripoSRConfig:
    """Parse config.yaml and fetch the ViT architecture it names (see hub.read_vit_config)."""
    raw = read_config_yaml(config_path)
    tokenizer = raw.get("image_tokenizer") or {}
    vit = read_vit_config(str(tokenizer.get("pretrained_model_name_or_path", "")), model_dir, cache_dir)
    return parse_config(raw, vit)


def load_pretrained(name_or_dir: str | Path, device: str | torch.device = "cpu", *,
                    cache_dir: str | Path | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    precision: Precision = "auto", num_threads: int | None = None) -> TripoSR:
    """A TripoSR in eval mode from a directory with config.yaml + model.ckpt, or a hub id (HF cache).

    precision "auto": bf16/fp16 autocast for the ViT and backbone on CUDA (their linear and convolution
    weights stored in that dtype), float32 on the CPU; "float32": float32 everywhere. Raises
    ModelUnavailableError offline without a cached copy.
    """
    if precision not in ("auto", "float32"):
        raise ValueError(f"precision must be 'auto' or 'float32', got {precision!r}")
    started = time.perf_counter()
    target = resolve_device(device)
    set_num_threads(num_threads)
    set_float32_precision()   # the same float32 numerics in the CLI as in a replica (warm_start sets it too)
    files = locate_model_files(name_or_dir, cache_dir)
    config = load_config(files.config_path, files.directory, cache_dir)
    model = assign_weights(build_model(config, chunk_size), read_state_dict(files.checkpoint_path))
    model = model.to(target)
    model.autocast_dtype = autocast_dtype_for(target) if precision == "auto" else None
    if model.autocast_dtype is not None:   # CUDA: the cast autocast would make each forward, made once
        model.store_autocast_weights()
    logger.info("TripoSR %s loaded on %s in %.2fs (autocast %s)", name_or_dir, target,
                time.perf_counter() - started, model.autocast_dtype)
    return model
