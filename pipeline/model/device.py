"""Where and in which precision the model runs: device resolution, autocast dtype, CPU thread count.

CUDA is detected with `torch.cuda.is_available()` only (never from CUDA_VISIBLE_DEVICES), and nothing here
runs at import time.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu", "cuda", "cuda:N" or a torch.device as given.

    Raises ValueError when CUDA is asked for but unavailable, or for an unknown name.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use 'auto' or 'cpu')")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device type {resolved.type!r} is not supported (only cpu and cuda)")
    return resolved


def autocast_dtype_for(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA (fp16 where bf16 is unsupported) for the ViT and backbone; None = float32 on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def set_num_threads(num_threads: int | None) -> None:
    """Set torch's intra-op CPU thread count; None leaves torch's default (one per core)."""
    if num_threads is None:
        return
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    logger.info("torch intra-op threads set to %d", num_threads)
