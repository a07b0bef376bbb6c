"""Framed photos -> native-frame meshes: one batched TripoSR forward, then one extraction per scene code.

This is the GPU stage's work (pipeline.run.stages.reconstruct_batch; deployments/reconstruct.py batches
requests into one call); on a machine without CUDA it runs the same code on the CPU. Device faults are
sorted by `pipeline.model.device_faults`: a forward out of GPU memory is retried on halves of the batch,
an extraction with smaller query chunks (a scene code depends on neither, a mesh not on the chunk), and
what still fails is a retried error for its own job only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import JobRejected, Shop3dError
from pipeline.intake.images import to_model_input
from pipeline.isosurface.extraction import DEFAULT_THRESHOLD, ExtractionMethod, extract_mesh_with_stats
from pipeline.mesh_arrays import MeshArrays
from pipeline.model import TripoSR
from pipeline.model.color_field import ColorField
from pipeline.model.device import (
    cap_process_memory,
    empty_cache,
    memory_fraction,
    peak_memory_bytes,
    reset_peak_memory,
    set_float32_precision,
    synchronize,
)
from pipeline.model.device_faults import (
    DEFAULT_OOM_POLICY,
    DeviceHealth,
    OomPolicy,
    classify_fault,
    gpu_fault,
    gpu_out_of_memory,
)
from pipeline.presets import DEFAULT_CHUNK_SIZE

__all__ = ["DEFAULT_THRESHOLD", "ExtractionMethod", "Reconstruction", "WarmStart", "model_batch",
           "reconstruct_meshes", "warm_start"]

logger = logging.getLogger(__name__)
WARMUP_RESOLUTION = 16   # enough to run every extraction kernel once


@dataclass(frozen=True)
class Reconstruction:
    """One image's mesh (native frame) and what it cost; `forward_s` is the batch's forward time (every
    attempt, synchronized), `extract_s` this image's extraction (retries included).
    `color_field` is set when asked for: texture bakes query it on a replica without the model."""

    mesh: MeshArrays
    forward_s: float
    extract_s: float
    points_queried: int
    color_field: ColorField | None = None


@dataclass(frozen=True)
class WarmStart:
    """A replica's start-up: its allocator cap (a fraction of the GPU's memory; None on the CPU) and the
    seconds of its warm-up forward and point query."""

    memory_fraction: float | None
    warmup_s: float


def model_batch(model: TripoSR, framed_images: Sequence[np.ndarray]) -> torch.Tensor:
    """Framed (S_i, S_i, 3) uint8 images of any sizes -> (B, S, S, 3) float at the model's input size.

    Each image is resized on its own (antialiased bilinear, as upstream), so a batch of different
    framings gives each image exactly the pixels it would get alone.
    """
    resized = [model.resize_images(torch.from_numpy(to_model_input(image))[None]) for image in framed_images]
    return torch.cat(resized).permute(0, 2, 3, 1)


def warm_start(model: TripoSR, gpu_share: float, method: ExtractionMethod = "auto") -> WarmStart:
    """Ready a replica's device before its first job: float32 precision, the allocator capped at its GPU
    share less headroom, then one forward, one point query and one small extraction by `method` (which
    compiles Warp's kernels where "auto" picks the GPU path), synchronized and timed, so that lazy CUDA
    module loading, kernel compiles and allocator growth are paid here and not by the first batch."""
    set_float32_precision()
    fraction = cap_process_memory(model.device, memory_fraction(gpu_share))
    started = time.perf_counter()
    size = model.config.cond_image_size
    scene_codes = model(torch.full((1, size, size, 3), 0.5))
    model.query(scene_codes[0], torch.zeros(model.chunk_size or DEFAULT_CHUNK_SIZE, 3))
    with contextlib.suppress(JobRejected):   # a flat grey picture may have no surface; the kernels ran anyway
        extract_mesh_with_stats(model, scene_codes[0], WARMUP_RESOLUTION, method=method)
    synchronize(model.device)
    warmup_s = time.perf_counter() - started
    logger.info("warm-up forward and point query on %s: %.2fs (memory cap %s)", model.device, warmup_s, fraction)
    return WarmStart(fraction, warmup_s)


def reconstruct_meshes(model: TripoSR, framed_images: Sequence[np.ndarray], resolutions: Sequence[int], *,
                       method: ExtractionMethod = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
                       thresholds: Sequence[float] | None = None, color_fields: Sequence[bool] | None = None,
                       health: DeviceHealth | None = None, policy: OomPolicy = DEFAULT_OOM_POLICY,
                       job_ids: Sequence[str] | None = None) -> list[Reconstruction | Shop3dError]:
    """A mesh per framed image at its own marching-cubes resolution (and density threshold), in order; an
    image that fails gets its error instead, so one bad image does not fail a whole batch.

    A forward that fails on its input gives its images JobRejected("model_failed"); an image out of GPU
    memory at the floor gets TransientError("gpu_out_of_memory"); a CUDA fault marks `health` faulty and
    gives this and every later image TransientError("gpu_fault"). `job_ids` only name images in logs.
    """
    count = len(framed_images)
    wants_field = list(color_fields) if color_fields is not None else [False] * count
    levels = list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * count
    names = list(job_ids) if job_ids is not None else [f"image {i}" for i in range(count)]
    if not len(resolutions) == len(wants_field) == len(levels) == len(names) == count:
        raise ValueError(f"{count} images, {len(resolutions)} resolutions, {len(levels)} thresholds, "
                         f"{len(wants_field)} flags, {len(names)} job ids")
    if not framed_images:
        return []
    health = health if health is not None else DeviceHealth(model.device)
    reset_peak_memory(model.device)
    started = time.perf_counter()
    scene_codes = forward_in_parts(model, list(framed_images), names, health)
    forward_s = time.perf_counter() - started
    results: list[Reconstruction | Shop3dError] = []
    for name, scene_code, resolution, threshold, with_field in zip(names, scene_codes, resolutions, levels,
                                                                   wants_field, strict=True):
        if isinstance(scene_code, Shop3dError):
            results.append(scene_code)
        elif not health.healthy:
            results.append(gpu_fault("an earlier image's extraction"))
        else:
            results.append(extract_retrying(model, scene_code, resolution, threshold, method=method,
                                            chunk_size=chunk_size, with_field=with_field, forward_s=forward_s,
                                            health=health, policy=policy, name=name))
    peak = peak_memory_bytes(model.device)
    if peak is not None:
        logger.info("batch of %d (%s): forward %.3fs, peak GPU memory %.2f GiB", count, ", ".join(names),
                    forward_s, peak / 2**30)
    return results


def forward_in_parts(model: TripoSR, images: list[np.ndarray], names: list[str],
                     health: DeviceHealth) -> list[Tensor | Shop3dError]:
    """Each image's scene code from one forward or, when that runs out of GPU memory, from forwards of each
    half in turn, down to single images; an image's scene code does not depend on the batch it is in."""
    if not health.healthy:
        return [gpu_fault("an earlier forward of the batch") for _ in images]
    try:
        scene_codes = model(model_batch(model, images))
        synchronize(model.device)   # CUDA errors surface at a sync: this one makes them this forward's
        return list(scene_codes)
    except (RuntimeError, ValueError) as exc:
        fault = classify_fault(exc)
        if fault is None:
            logger.exception("TripoSR forward failed on a batch of %d (%s)", len(images), ", ".join(names))
            return [JobRejected("model_failed", f"TripoSR forward failed ({type(exc).__name__})") for _ in images]
        if fault == "cuda_fault":
            health.mark_faulty(f"{type(exc).__name__} in a forward of {len(images)} ({', '.join(names)}): {exc}")
            return [gpu_fault("the forward") for _ in images]
        if len(images) == 1:
            logger.error("%s: out of GPU memory in a forward of this image alone", names[0])
            return [gpu_out_of_memory("the forward")]
    # Out of memory: retried here, outside the `except`, so the failed attempt's tensors are already freed.
    empty_cache(model.device)
    half = len(images) // 2
    logger.warning("out of GPU memory in a forward of %d (%s); retrying as %d + %d", len(images),
                   ", ".join(names), half, len(images) - half)
    return (forward_in_parts(model, images[:half], names[:half], health)
            + forward_in_parts(model, images[half:], names[half:], health))


def extract_retrying(model: TripoSR, scene_code: Tensor, resolution: int, threshold: float, *,
                     method: ExtractionMethod, chunk_size: int, with_field: bool, forward_s: float,
                     health: DeviceHealth, policy: OomPolicy, name: str) -> Reconstruction | Shop3dError:
    """One image's mesh (and colour field); out of GPU memory, tried again with each smaller query chunk of
    `policy` (the mesh does not depend on the chunk size), then TransientError("gpu_out_of_memory")."""
    failed_s = 0.0
    for attempt_chunk in policy.chunk_sizes(chunk_size):
        started = time.perf_counter()
        try:
            mesh, stats = extract_mesh_with_stats(model, scene_code, resolution, threshold, method=method,
                                                  chunk_size=attempt_chunk)
            field = ColorField.from_model(model, scene_code) if with_field else None
            return Reconstruction(mesh, forward_s, failed_s + stats.seconds, stats.points_queried, field)
        except Shop3dError as exc:
            return exc
        except RuntimeError as exc:
            fault = classify_fault(exc)
            if fault is None:
                raise
            if fault == "cuda_fault":
                health.mark_faulty(f"{type(exc).__name__} extracting {name}: {exc}")
                return gpu_fault("mesh extraction")
        empty_cache(model.device)
        failed_s += time.perf_counter() - started
        logger.warning("%s: out of GPU memory extracting at chunk_size %d; retrying with smaller chunks", name,
                       attempt_chunk)
    logger.error("%s: out of GPU memory extracting at every chunk size down to %d", name, policy.min_chunk_size)
    return gpu_out_of_memory("mesh extraction")
