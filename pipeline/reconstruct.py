"""Framed photos -> native-frame meshes: one batched TripoSR forward, then one extraction per scene code.

This is the GPU stage's work (pipeline.run.stages.reconstruct_batch; deployments/reconstruct.py batches
requests into one call); on a
machine without CUDA it runs the same code on the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import JobRejected, Shop3dError
from pipeline.intake.images import to_model_input
from pipeline.isosurface.extraction import DEFAULT_THRESHOLD, ExtractionMethod, extract_mesh_with_stats
from pipeline.mesh_arrays import MeshArrays
from pipeline.model import TripoSR
from pipeline.model.color_field import ColorField
from pipeline.presets import DEFAULT_CHUNK_SIZE

__all__ = ["DEFAULT_THRESHOLD", "ExtractionMethod", "Reconstruction", "model_batch", "reconstruct_meshes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconstruction:
    """One image's mesh (native frame) and what it cost; `forward_s` is the batch's forward time.
    `color_field` is set when asked for: texture bakes query it on a replica without the model."""

    mesh: MeshArrays
    forward_s: float
    extract_s: float
    points_queried: int
    color_field: ColorField | None = None


def model_batch(model: TripoSR, framed_images: Sequence[np.ndarray]) -> torch.Tensor:
    """Framed (S_i, S_i, 3) uint8 images of any sizes -> (B, S, S, 3) float at the model's input size.

    Each image is resized on its own (antialiased bilinear, as upstream), so a batch of different
    framings gives each image exactly the pixels it would get alone.
    """
    resized = [model.resize_images(torch.from_numpy(to_model_input(image))[None]) for image in framed_images]
    return torch.cat(resized).permute(0, 2, 3, 1)


def reconstruct_meshes(model: TripoSR, framed_images: Sequence[np.ndarray], resolutions: Sequence[int], *,
                       method: ExtractionMethod = "fast", chunk_size: int = DEFAULT_CHUNK_SIZE,
                       thresholds: Sequence[float] | None = None,
                       color_fields: Sequence[bool] | None = None) -> list[Reconstruction | Shop3dError]:
    """A mesh per framed image at its own marching-cubes resolution (and density threshold), in order; an
    image whose field has no surface gets its error, not a mesh.

    Per-image failures are returned rather than raised so one bad image does not fail a whole batch.
    A failure of the batched forward itself raises JobRejected("model_failed").
    """
    count = len(framed_images)
    wants_field = list(color_fields) if color_fields is not None else [False] * count
    levels = list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * count
    if not len(resolutions) == len(wants_field) == len(levels) == count:
        raise ValueError(f"{count} images, {len(resolutions)} resolutions, {len(levels)} thresholds, "
                         f"{len(wants_field)} flags")
    if not framed_images:
        return []
    started = time.perf_counter()
    try:
        scene_codes = model(model_batch(model, framed_images))
    except (RuntimeError, ValueError) as exc:
        logger.exception("TripoSR forward failed on a batch of %d", count)
        raise JobRejected("model_failed", f"TripoSR forward failed ({type(exc).__name__})") from exc
    forward_s = time.perf_counter() - started
    results: list[Reconstruction | Shop3dError] = []
    for scene_code, resolution, threshold, with_field in zip(scene_codes, resolutions, levels, wants_field,
                                                             strict=True):
        try:
            mesh, stats = extract_mesh_with_stats(model, scene_code, resolution, threshold,
                                                  method=method, chunk_size=chunk_size)
        except Shop3dError as exc:
            results.append(exc)
            continue
        field = ColorField.from_model(model, scene_code) if with_field else None
        results.append(Reconstruction(mesh, forward_s, stats.seconds, stats.points_queried, field))
    return results
