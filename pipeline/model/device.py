"""Where and in which precision the model runs: device resolution, autocast dtype, float32 precision, CPU
thread count, and the few process-wide CUDA calls a GPU replica makes (memory cap, cache, sync, peak memory).

CUDA is detected with `torch.cuda.is_available()` only (never from CUDA_VISIBLE_DEVICES), nothing here
runs at import time, and every CUDA call is a no-op for a CPU device.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# Full float32 ("ieee", never TF32) for what runs in float32 on CUDA: the post-processor's convolutions, the
# scene codes and every point query. They stay float32 because the density is exponentiated and thresholded
# at 25; TF32's 10-bit mantissa would move the surface, and the decoder MLP it would speed up is small.
# The speed path is the ViT and backbone's bf16 autocast, which these flags do not touch.
FLOAT32_PRECISION = "ieee"
# Share of a replica's GPU fraction left outside its allocator cap: the CUDA context (~0.5 GB per process,
# not counted by the cap) and fragmentation. Four 0.25-GPU replicas on a 24 GB card: 4 x (5.4 + 0.5) GB.
GPU_MEMORY_HEADROOM = 0.1


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


def set_float32_precision(precision: str = FLOAT32_PRECISION) -> None:
    """Set cuBLAS matmuls and cuDNN convolutions on float32 to `precision` ("ieee" or "tf32"), process-wide.

    Uses torch's fp32_precision settings (the allow_tf32 flags are deprecated since torch 2.9 and must not
    be mixed with them); harmless without CUDA.
    """
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"float32 precision must be 'ieee' or 'tf32', got {precision!r}")
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision  # type: ignore[attr-defined]


def memory_fraction(gpu_share: float, headroom: float = GPU_MEMORY_HEADROOM) -> float | None:
    """The share of the GPU's memory a replica holding `gpu_share` GPUs may allocate: share x (1 - headroom).

    None for no GPU (nothing to cap); a share of one GPU or more is capped at the whole card less headroom.
    """
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    if gpu_share < 0:
        raise ValueError(f"gpu_share must be >= 0, got {gpu_share}")
    if gpu_share == 0:
        return None
    return min(gpu_share, 1.0) * (1.0 - headroom)


def cap_process_memory(device: torch.device, fraction: float | None) -> float | None:
    """Cap this process's CUDA allocator at `fraction` of `device`'s memory (an allocation past it raises
    torch.OutOfMemoryError); returns the cap applied, None on the CPU or without a fraction."""
    if device.type != "cuda" or fraction is None:
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    logger.info("CUDA allocator capped at %.3f of %s's memory", fraction, device)
    return fraction


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued kernels (CUDA launches are asynchronous); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device) -> None:
    """Return the CUDA allocator's cached, unused blocks to the device (before an OOM retry); CPU no-op."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_bytes` (once per batch); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """The most CUDA memory allocated since the last reset, in bytes; None on the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))
