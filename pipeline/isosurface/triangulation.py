"""Marching cubes on a grid volume, mapped to world coordinates and merged as the official trimesh does.

PyMCubes on V[ix, iy, iz] = density_act - threshold at level 0 returns vertices in (ix, iy, iz) order
and the official winding (normals towards lower density, i.e. outward), so no column swap or face flip
is needed (SPEC §11.4, §15 item 9).
"""

from __future__ import annotations

import mcubes
import numpy as np

# trimesh's Trimesh(process=True) merges vertices equal after rounding to 8 decimals (tol.merge = 1e-8).
MERGE_DECIMALS = 8


def triangulate(values: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Surface V = 0 of an (R, R, R) grid volume -> world vertices float32 (V, 3), faces int32 (F, 3).

    Grid index i maps to -r + 2r*i/(R-1); the vertices are merged by `merge_rounded_vertices`.
    """
    if values.ndim != 3 or len(set(values.shape)) != 1:
        raise ValueError(f"values must be a cubic (R, R, R) volume, got {values.shape}")
    raw_vertices, raw_faces = mcubes.marching_cubes(values, 0.0)
    scale = 2.0 * radius / (values.shape[0] - 1)
    vertices = (raw_vertices * scale - radius).astype(np.float32)
    return merge_rounded_vertices(vertices, raw_faces.astype(np.int64))


def merge_rounded_vertices(vertices: np.ndarray, faces: np.ndarray,
                           decimals: int = MERGE_DECIMALS) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's process=True in numpy: merge vertices equal after rounding, keep first-occurrence order,
    drop unreferenced vertices, keep every face (degenerate ones too). Returns (float32, int32)."""
    if vertices.shape[0] == 0:
        return vertices.astype(np.float32), np.zeros((0, 3), dtype=np.int32)
    keys = np.round(vertices.astype(np.float64) * 10.0**decimals).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # merged vertices in order of their first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    faces = rank[inverse.reshape(-1)][faces]
    vertices = vertices[first[order]]
    used = np.zeros(vertices.shape[0], dtype=bool)
    used[faces.reshape(-1)] = True
    if not used.all():
        faces = (np.cumsum(used) - 1)[faces]
        vertices = vertices[used]
    if vertices.shape[0] > np.iinfo(np.int32).max:
        raise ValueError(f"{vertices.shape[0]} vertices do not fit int32 face indices")
    return np.ascontiguousarray(vertices, dtype=np.float32), faces.astype(np.int32)
