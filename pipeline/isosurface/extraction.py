"""Isosurface extraction: TripoSR scene code -> coloured `MeshArrays` (SPEC §11), dense or coarse-to-fine.

    mesh = extract_mesh(model, scene_codes[0], resolution=256)                  # auto (default)
    mesh, stats = extract_mesh_with_stats(model, scene_code, 256, method="dense")  # the reference path

"dense" is the official algorithm: density_act at all R^3 grid points, marching cubes at the threshold,
colours queried at the final vertices. "fast" gives the same surface while querying only the cells the
surface can reach (`pipeline.isosurface.refinement`, `closure`); its triangles come from the same cells
with the same values as dense, so it differs only where a surface component never reaches a refined cell.
"gpu" is dense kept on the scene code's device with Warp's marching cubes (`device_extraction`); "auto" picks
"gpu" on CUDA when Warp imports, else "fast" (`resolve_method`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import JobRejected
from pipeline.isosurface.closure import close_surface
from pipeline.isosurface.device_extraction import extract_on_device, warp_available
from pipeline.isosurface.grid import DensityField, GridQuery
from pipeline.isosurface.refinement import RefinementSettings, sample_coarse_to_fine
from pipeline.isosurface.triangulation import triangulate
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import DEFAULT_CHUNK_SIZE

ExtractionMethod = Literal["auto", "fast", "dense", "gpu"]
ResolvedMethod = Literal["fast", "dense", "gpu"]
DEFAULT_THRESHOLD = 25.0


@dataclass(frozen=True)
class ExtractionStats:
    """What one extraction cost. points_queried counts density queries (colour queries excluded);
    volume_bytes is the size of the full-resolution arrays held at once (R^3 float32 + masks)."""

    method: str
    resolution: int
    points_queried: int
    grid_points: int
    closure_points: int
    strides: tuple[int, ...]
    query_seconds: float
    seconds: float
    volume_bytes: int

    @property
    def queried_fraction(self) -> float:
        return self.points_queried / self.grid_points


def resolve_method(method: ExtractionMethod, device: torch.device, gpu_available: bool) -> ResolvedMethod:
    """The method that runs: "auto" is "gpu" on a CUDA device when Warp imports, else "fast"; "gpu" without
    Warp falls back to "fast" (the CPU path); "gpu" with Warp runs on any device (CI runs it on the CPU)."""
    if method == "auto":
        return "gpu" if device.type == "cuda" and gpu_available else "fast"
    if method == "gpu" and not gpu_available:
        return "fast"
    return method


def extract_mesh(model: DensityField, scene_code: Tensor, resolution: int, threshold: float = DEFAULT_THRESHOLD,
                 *, method: ExtractionMethod = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
                 refinement: RefinementSettings = RefinementSettings()) -> MeshArrays:
    """The surface density_act = threshold of one scene code (3, C, h, w) on an R^3 grid, as MeshArrays.

    Raises JobRejected("empty_mesh") when the field has no surface at the threshold.
    """
    mesh, _ = extract_mesh_with_stats(model, scene_code, resolution, threshold, method=method,
                                      chunk_size=chunk_size, refinement=refinement)
    return mesh


def extract_mesh_with_stats(model: DensityField, scene_code: Tensor, resolution: int,
                            threshold: float = DEFAULT_THRESHOLD, *, method: ExtractionMethod = "auto",
                            chunk_size: int = DEFAULT_CHUNK_SIZE,
                            refinement: RefinementSettings = RefinementSettings(),
                            ) -> tuple[MeshArrays, ExtractionStats]:
    """`extract_mesh` plus its ExtractionStats (for logs, webhooks' mesh stats and bench/mesh.py)."""
    if method not in ("auto", "fast", "dense", "gpu"):
        raise ValueError(f"method must be 'auto', 'fast', 'dense' or 'gpu', got {method!r}")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (density_act is positive), got {threshold}")
    wants_warp = method == "gpu" or (method == "auto" and scene_code.device.type == "cuda")
    resolved = resolve_method(method, scene_code.device, wants_warp and warp_available())
    started = time.perf_counter()
    if resolved == "gpu":
        done = extract_on_device(model, scene_code, resolution, threshold, chunk_size)
        if done.mesh is None:
            raise _empty_mesh(threshold, resolution)
        return done.mesh, ExtractionStats(
            method="gpu", resolution=resolution, points_queried=done.points_queried, grid_points=resolution**3,
            closure_points=0, strides=(1,), query_seconds=done.query_seconds,
            seconds=time.perf_counter() - started, volume_bytes=done.volume_bytes)
    query = GridQuery(model, scene_code, resolution, chunk_size)
    strides: tuple[int, ...]
    if resolved == "dense":
        values = query.dense_density()
        values -= np.float32(threshold)
        volume_bytes, closure_points, strides = values.nbytes, 0, (1,)
    else:
        sample = sample_coarse_to_fine(query.density_at, resolution, threshold, refinement)
        closed = close_surface(sample, query.density_at, threshold)
        values = closed.values
        volume_bytes = values.nbytes + sample.queried.nbytes  # density edited in place into values
        closure_points, strides = closed.points_added, sample.strides
        del sample, closed
    points_queried = query.points_queried
    vertices, faces = triangulate(values, float(model.renderer_radius))
    del values
    if faces.shape[0] == 0:
        raise _empty_mesh(threshold, resolution)
    mesh = MeshArrays(vertices=vertices, faces=faces, colors=query.colors_at(vertices))
    stats = ExtractionStats(method=resolved, resolution=resolution, points_queried=points_queried,
                            grid_points=resolution**3, closure_points=closure_points, strides=strides,
                            query_seconds=query.seconds, seconds=time.perf_counter() - started,
                            volume_bytes=volume_bytes)
    return mesh, stats


def _empty_mesh(threshold: float, resolution: int) -> JobRejected:
    return JobRejected("empty_mesh", f"no surface at density threshold {threshold:g} (resolution {resolution})")
