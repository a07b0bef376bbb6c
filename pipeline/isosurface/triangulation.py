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
    box = inside_box(values)
    if box is None:
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int32)
    raw_vertices, raw_faces = mcubes.marching_cubes(np.ascontiguousarray(values[box]), 0.0)
    raw_vertices += np.array([part.start for part in box], dtype=np.float64)
    scale = 2.0 * radius / (values.shape[0] - 1)
    vertices = (raw_vertices * scale - radius).astype(np.float32)
    return merge_rounded_vertices(vertices, raw_faces.astype(np.int64))


def inside_box(values: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The bounding box of the points >= 0, grown by one: every cell that makes triangles has such a
    corner, so marching cubes on the box gives the same triangles in the same order. None: no point."""
    inside = values >= 0
    box = []
    for axis in range(3):
        present = np.flatnonzero(inside.any(axis=tuple(other for other in range(3) if other != axis)))
        if present.size == 0:
            return None
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, values.shape[axis])))
    return box[0], box[1], box[2]


def merge_rounded_vertices(vertices: np.ndarray, faces: np.ndarray,
                           decimals: int = MERGE_DECIMALS) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's process=True in numpy: merge vertices equal after rounding, keep first-occurrence order,
    drop unreferenced vertices, keep every face (degenerate ones too). Returns (float32, int32)."""
    if vertices.shape[0] == 0:
        return vertices.astype(np.float32), np.zeros((0, 3), dtype=np.int32)
    keys = np.round(vertices.astype(np.float64) * 10.0**decimals).astype(np.int64)
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))  # stable: equal keys keep their order
    sorted_keys = keys[order]
    starts = np.ones(order.size, dtype=bool)
    starts[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    first = order[starts]  # the first occurrence of each distinct key
    group = np.empty(order.size, dtype=np.int64)
    group[order] = np.cumsum(starts) - 1
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)  # merged vertices in first-occurrence order
    faces = rank[group][faces]
    vertices = vertices[np.sort(first)]
    used = np.zeros(vertices.shape[0], dtype=bool)
    used[faces.reshape(-1)] = True
    if not used.all():
        faces = (np.cumsum(used) - 1)[faces]
        vertices = vertices[used]
    if vertices.shape[0] > np.iinfo(np.int32).max:
        raise ValueError(f"{vertices.shape[0]} vertices do not fit int32 face indices")
    return np.ascontiguousarray(vertices, dtype=np.float32), faces.astype(np.int32)
