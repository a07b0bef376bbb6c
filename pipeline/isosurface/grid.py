"""The official marching-cubes grid (SPEC §11.1) and chunked queries of a TripoSR field on it.

Grid index i on each axis maps to world -r + 2r*i/(R-1) (endpoints included, spacing 2r/(R-1));
a 3D sample is addressed by its integer (ix, iy, iz), flat index ix*R^2 + iy*R + iz. Points are built
per chunk from indices, so no (R^3, 3) coordinate array ever exists.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch
from torch import Tensor


class DensityField(Protocol):
    """What extraction needs of a model: `pipeline.model.TripoSR` or any stand-in with the same query."""

    renderer_radius: float

    def query(self, scene_code: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """scene_code (3, C, h, w), points (N, 3) float32 -> (density_act (N,), color (N, 3) in [0, 1])."""
        ...


def grid_axis(resolution: int, radius: float) -> np.ndarray:
    """World coordinate (float32, R values) of each grid index: -r + 2r*i/(R-1)."""
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    index = np.arange(resolution, dtype=np.float64)
    return (-radius + 2.0 * radius * index / (resolution - 1)).astype(np.float32)


class GridQuery:
    """Queries density_act at grid indices of one scene code, counting points and seconds spent."""

    def __init__(self, field: DensityField, scene_code: Tensor, resolution: int, chunk_size: int) -> None:
        if scene_code.ndim != 4 or scene_code.shape[0] != 3:
            raise ValueError(f"scene_code must be (3, C, h, w), got {tuple(scene_code.shape)}")
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0 = unchunked), got {chunk_size}")
        self.field = field
        self.scene_code = scene_code
        self.resolution = resolution
        self.chunk_size = chunk_size
        self.axis = grid_axis(resolution, float(field.renderer_radius))
        self.points_queried = 0
        self.seconds = 0.0

    def density_at(self, indices: np.ndarray) -> np.ndarray:
        """density_act (float32, N) at integer grid indices (N, 3), queried chunk_size points at a time."""
        out = np.empty(indices.shape[0], dtype=np.float32)
        step = self._step(indices.shape[0])
        for start in range(0, indices.shape[0], step):
            chunk = indices[start:start + step]
            out[start:start + chunk.shape[0]] = self._density(self.axis[chunk])
        return out

    def dense_density(self) -> np.ndarray:
        """density_act on the whole grid, (R, R, R) float32 indexed [ix, iy, iz] (the reference path)."""
        size = self.resolution
        volume = np.empty(size**3, dtype=np.float32)
        step = self._step(volume.size)
        for start in range(0, volume.size, step):
            flat = np.arange(start, min(start + step, volume.size))
            ix, rest = np.divmod(flat, size * size)
            iy, iz = np.divmod(rest, size)
            points = np.stack([self.axis[ix], self.axis[iy], self.axis[iz]], axis=1)
            volume[start:start + flat.size] = self._density(points)
        return volume.reshape(size, size, size)

    def colors_at(self, vertices: np.ndarray) -> np.ndarray:
        """Vertex colours (V, 3) uint8 = round(color * 255) at world positions (V, 3) float32."""
        out = np.empty(vertices.shape, dtype=np.uint8)
        step = self._step(vertices.shape[0])
        for start in range(0, vertices.shape[0], step):
            chunk = np.ascontiguousarray(vertices[start:start + step], dtype=np.float32)
            _, color = self._query(chunk)
            out[start:start + chunk.shape[0]] = np.round(np.clip(color, 0.0, 1.0) * 255.0).astype(np.uint8)
        return out

    def _step(self, count: int) -> int:
        """Points per query: chunk_size, or all `count` at once when chunk_size is 0 (the knob's "unchunked")."""
        return self.chunk_size or max(count, 1)

    def _density(self, points: np.ndarray) -> np.ndarray:
        density, _ = self._query(points)
        self.points_queried += points.shape[0]
        return density.reshape(-1)

    def _query(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        tensor = torch.from_numpy(points).to(self.scene_code.device)
        with torch.inference_mode():
            density, color = self.field.query(self.scene_code, tensor)
        result = (density.detach().to("cpu", torch.float32).numpy(),
                  color.detach().to("cpu", torch.float32).numpy())
        self.seconds += time.perf_counter() - started
        return result
