"""Failures at the device boundary, sorted into what a batch does next:

    out of memory   free the cache, retry smaller (half the batch, a quarter of the query chunk), and at the
                    floor give the job TransientError("gpu_out_of_memory"): the queue retries it later
    CUDA fault      an illegal address or a device-side assert poisons the process's CUDA context for good:
                    the jobs get TransientError("gpu_fault"), the replica's DeviceHealth turns faulty, its
                    check_health fails and Serve replaces it; the retry runs on a fresh replica
    anything else   not a device fault; the caller's own error mapping applies

Neither device code is ever terminal: the input was not at fault.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal

import torch

from pipeline.errors import TransientError
from pipeline.model.device import synchronize
from pipeline.presets import DEFAULT_CHUNK_SIZE

logger = logging.getLogger(__name__)

DeviceFault = Literal["out_of_memory", "cuda_fault"]

# Before torch.OutOfMemoryError (and for cuBLAS failing to allocate its workspace) an OOM was a RuntimeError;
# Warp (the "gpu" extraction's marching cubes) raises RuntimeError("Failed to allocate N bytes on device 'cuda:0'").
_OOM_MARKERS = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
_WARP_OOM = ("Failed to allocate", "on device 'cuda")
# What torch prints for a CUDA runtime, cuBLAS or cuDNN failure when it raises a plain RuntimeError.
_FAULT_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "an illegal instruction",
                  "unspecified launch failure", "CUBLAS_STATUS_", "CUDNN_STATUS_")


def classify_fault(exc: BaseException) -> DeviceFault | None:
    """"out_of_memory", "cuda_fault" (torch.AcceleratorError, or a RuntimeError naming a CUDA failure) or None."""
    if isinstance(exc, torch.OutOfMemoryError):
        return "out_of_memory"
    if not isinstance(exc, RuntimeError):
        return None
    message = str(exc)
    if any(marker in message for marker in _OOM_MARKERS) or all(part in message for part in _WARP_OOM):
        return "out_of_memory"
    if isinstance(exc, torch.AcceleratorError) or any(marker in message for marker in _FAULT_MARKERS):
        return "cuda_fault"
    return None


def gpu_out_of_memory(during: str) -> TransientError:
    """The retried error of a job whose `during` ran out of GPU memory at the smallest batch or chunk."""
    return TransientError("gpu_out_of_memory", f"out of GPU memory during {during}, even at the smallest size")


def gpu_fault(during: str) -> TransientError:
    """The retried error of a job whose replica hit a CUDA fault (during `during`, or earlier)."""
    return TransientError("gpu_fault", f"a CUDA fault during {during}; retried on another replica")


class DeviceUnhealthy(RuntimeError):
    """Raised by DeviceHealth.probe: the replica must be replaced (Serve does it when check_health raises)."""


class DeviceHealth:
    """One replica's verdict on its device. A CUDA fault is sticky (the context stays poisoned), so only a
    new process clears `fault`; until then the replica refuses work and its health check fails."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.fault: str | None = None
        self._lock = threading.Lock()   # the batch thread and the health check may mark it at once

    @property
    def healthy(self) -> bool:
        return self.fault is None

    def mark_faulty(self, reason: str) -> None:
        """Record the first fault (later ones are its consequences); logged once."""
        with self._lock:
            if self.fault is None:
                self.fault = reason
                logger.error("device %s is faulty, the replica must be replaced: %s", self.device, reason)

    def probe(self) -> None:
        """Raise DeviceUnhealthy when marked faulty, or when a tiny op on the device (then a sync) fails."""
        if self.fault is not None:
            raise DeviceUnhealthy(f"device {self.device} faulty: {self.fault}")
        try:
            (torch.ones(8, device=self.device) * 2).sum().item()
            synchronize(self.device)
        except RuntimeError as exc:
            self.mark_faulty(f"health probe failed: {type(exc).__name__}: {exc}")
            raise DeviceUnhealthy(f"device {self.device} faulty: {self.fault}") from exc

    def note(self, exc: BaseException, during: str) -> TransientError | None:
        """The retried error `exc` gives its jobs if it is a device fault (a CUDA fault marks this health
        faulty first), else None."""
        fault = classify_fault(exc)
        if fault == "cuda_fault":
            self.mark_faulty(f"{type(exc).__name__} during {during}: {exc}")
            return gpu_fault(during)
        if fault == "out_of_memory":
            return gpu_out_of_memory(during)
        return None


@dataclass(frozen=True)
class OomPolicy:
    """How far OOM retries shrink: a batch is halved down to one image; an extraction's query chunk is
    divided by `chunk_divisor` down to `min_chunk_size` points (an unchunked query first tries the default)."""

    chunk_divisor: int = 4
    min_chunk_size: int = 4096

    def __post_init__(self) -> None:
        if self.chunk_divisor < 2 or self.min_chunk_size < 1:
            raise ValueError(f"chunk_divisor must be >= 2 and min_chunk_size >= 1, got {self}")

    def chunk_sizes(self, chunk_size: int) -> list[int]:
        """The chunk sizes to try in turn: [65536, 16384, 4096] for 65536; [0, 65536, ...] for 0 (unchunked)."""
        sizes = [chunk_size]
        current = chunk_size if chunk_size > 0 else DEFAULT_CHUNK_SIZE * self.chunk_divisor
        while current > self.min_chunk_size:
            current = max(current // self.chunk_divisor, self.min_chunk_size)
            sizes.append(current)
        return sizes


DEFAULT_OOM_POLICY = OomPolicy()
