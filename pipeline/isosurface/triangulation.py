"""Marching cubes on a grid volume, mapped to world coordinates and merged as the official trimesh does.

PyMCubes on V[ix, iy, iz] = density_act - threshold at level 0 returns vertices in (ix, iy, iz) order
and the official winding (normals towards lower density, i.e. outward), so no column swap or face flip
is needed (SPEC §11.4, §15 item 9).

PyMCubes spends ~33 ns on every cell it visits, surface or not (0.8 s on an empty 256^3 volume), while
a surface crosses a few percent of the cells. So the volume is cut into blocks of BLOCK_CELLS^3 cells and
only blocks that hold both signs are triangulated (on a convoluted 1.1M-face surface at 256^3, 3,930 of the
10,648 blocks of 12^3 cells). A cell's triangles depend only on its 8 corners, so the triangles are the whole
volume's, in block order. A vertex on a block's face is emitted by each block that holds it; the copies are
joined by grid edge (`first_on_same_edge`), then vertices are merged by rounding as trimesh does.
"""

from __future__ import annotations

import mcubes
import numpy as np

# trimesh's Trimesh(process=True) merges vertices equal after rounding to 8 decimals (tol.merge = 1e-8).
MERGE_DECIMALS = 8
# Cells per block edge. `triangulate` on a 1.1M-face surface at 256^3 (min of 5): 8 -> 0.44 s, 12 -> 0.41 s,
# 16 -> 0.44 s, against 0.75-0.88 s for PyMCubes on the whole volume. Smaller blocks visit fewer empty cells
# but make more calls and more copies of face vertices to merge.
BLOCK_CELLS = 12
# A vertex this close (grid units) to a grid node may round onto a vertex of another edge through that
# node; farther vertices can only equal their own copies. Float32 world coordinates put such pairs within
# ~2e-7 world units = 3e-5 grid units of the node at 256^3 (spacing 0.0068), so 1e-2 leaves a wide margin.
_NODE_TOLERANCE = 1e-2


def triangulate(values: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Surface V = 0 of an (R, R, R) grid volume -> world vertices float32 (V, 3), faces int32 (F, 3).

    Grid index i maps to -r + 2r*i/(R-1); the vertices are merged as `merge_rounded_vertices` merges them.
    """
    if values.ndim != 3 or len(set(values.shape)) != 1:
        raise ValueError(f"values must be a cubic (R, R, R) volume, got {values.shape}")
    raw_vertices, raw_faces = marching_cubes_in_blocks(values, surface_blocks(values, BLOCK_CELLS), BLOCK_CELLS)
    if raw_faces.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int32)
    scale = 2.0 * radius / (values.shape[0] - 1)
    vertices = (raw_vertices * scale - radius).astype(np.float32)
    on_block_face, near_node = shared_vertex_candidates(raw_vertices, BLOCK_CELLS)
    copy_of = first_on_same_edge(raw_vertices, np.flatnonzero(on_block_face), values.shape[0])
    representative = rounded_representatives(vertices, MERGE_DECIMALS, np.flatnonzero(near_node))[copy_of]
    # PyMCubes' faces use every vertex it returns, so the vertices used afterwards are the representatives
    return reindex(vertices, raw_faces, representative, used=representative)


def surface_blocks(values: np.ndarray, block: int) -> np.ndarray:
    """Lower grid corners (K, 3), in x, y, z order, of the blocks of `block`^3 cells (points [k*block,
    k*block + block] per axis, the last block clipped) that hold a point <= 0 and a point >= 0 (NaN counts
    as both): a superset of the blocks where PyMCubes makes triangles, since the points of a block are
    connected through its cells."""
    lowest = block_reduce(values, block, np.minimum)  # NaN propagates
    highest = block_reduce(values, block, np.maximum)
    with np.errstate(invalid="ignore"):
        both_signs = ~(lowest > 0) & ~(highest < 0)
    corners: np.ndarray = np.argwhere(both_signs) * block
    return corners


def block_reduce(values: np.ndarray, block: int, reduce: np.ufunc) -> np.ndarray:
    """`reduce` (np.minimum or np.maximum) over each block of `block` cells along each axis, both ends of
    the block included: (R, R, R) -> (B, B, B) with B = ceil((R - 1) / block)."""
    out = values
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)
        cells, rest = moved.shape[0] - 1, moved.shape[1:]
        full, blocks = cells // block, -(-cells // block)  # blocks of `block` cells; with the short last one
        reduced = np.empty((blocks, *rest), dtype=values.dtype)
        reduce.reduce(moved[:full * block].reshape((full, block, *rest)), axis=1, out=reduced[:full])
        if blocks > full:
            reduce.reduce(moved[full * block:cells], axis=0, out=reduced[full])
        reduce(reduced, moved[np.minimum(np.arange(1, blocks + 1) * block, cells)], out=reduced)  # upper ends
        out = np.moveaxis(reduced, 0, axis)
    return out


def marching_cubes_in_blocks(values: np.ndarray, corners: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """PyMCubes on each block at `corners` -> grid-index vertices float64 (V, 3) and faces int64 (F, 3), the
    blocks' outputs concatenated in order (vertices on shared block faces repeated). PyMCubes reads the
    strided views as they are; the offsets are added once at the end."""
    outputs = [mcubes.marching_cubes(values[x:x + block + 1, y:y + block + 1, z:z + block + 1], 0.0)
               for x, y, z in corners.tolist()]
    if not outputs:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    vertex_counts = np.array([part[0].shape[0] for part in outputs])
    face_counts = np.array([part[1].shape[0] for part in outputs])
    vertices = np.concatenate([part[0] for part in outputs])
    vertices += np.repeat(corners.astype(np.float64), vertex_counts, axis=0)
    faces = np.concatenate([part[1] for part in outputs]).astype(np.int64)
    faces += np.repeat(np.cumsum(vertex_counts) - vertex_counts, face_counts)[:, None]
    return vertices.reshape(-1, 3), faces.reshape(-1, 3)


def shared_vertex_candidates(grid_vertices: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Two masks over vertices in grid units (V, 3): on a block face (the blocks that share the face each emit
    the vertex), and within _NODE_TOLERANCE of a grid node (where vertices of two edges through the node can
    round to one) or not finite (copies included: the rounding merge joins them). Every other vertex lies inside
    one block, on one edge, emitted once."""
    offset = np.rint(grid_vertices)
    np.subtract(grid_vertices, offset, out=offset)
    np.abs(offset, out=offset)  # distance to the nearest integer, per coordinate
    near = offset <= _NODE_TOLERANCE
    on_face = grid_vertices == np.floor(grid_vertices / block) * block  # exact multiples of `block` only
    # column by column: numpy's all/any along a length-3 axis is several times slower here
    finite_coordinates = np.isfinite(grid_vertices)  # NaN field values give NaN coordinates
    finite = finite_coordinates[:, 0] & finite_coordinates[:, 1] & finite_coordinates[:, 2]
    near_node: np.ndarray = (near[:, 0] & near[:, 1] & near[:, 2]) | ~finite  # merged as trimesh merges NaN
    on_block_face: np.ndarray = (on_face[:, 0] | on_face[:, 1] | on_face[:, 2]) & finite
    return on_block_face, near_node


def first_on_same_edge(grid_vertices: np.ndarray, candidates: np.ndarray, size: int) -> np.ndarray:
    """For every vertex, the index of the first of `candidates` on the same grid edge as it (itself when it
    is not a candidate or is the first). Blocks that share a face compute its vertices from the edge's two
    ends in opposite directions, so copies may differ in the last bit: they are joined by edge, not by value.
    The first copy is the lower block's, computed as PyMCubes does on the whole volume."""
    points = grid_vertices[candidates]
    lower = np.floor(points)
    fractional = points != lower
    axis = np.where(fractional.any(axis=1), fractional.argmax(axis=1), 3)  # 3: exactly on a grid node
    corner = lower.astype(np.int64)
    keys = ((corner[:, 0] * size + corner[:, 1]) * size + corner[:, 2]) * 4 + axis
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    copy_of = np.arange(grid_vertices.shape[0])
    copy_of[candidates] = candidates[first_of_runs(order, sorted_keys[1:] != sorted_keys[:-1])]
    return copy_of


def merge_rounded_vertices(vertices: np.ndarray, faces: np.ndarray,
                           decimals: int = MERGE_DECIMALS) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's process=True in numpy: merge vertices equal after rounding, keep first-occurrence order,
    drop unreferenced vertices, keep every face (degenerate ones too). Returns (float32, int32)."""
    if vertices.shape[0] == 0:
        return vertices.astype(np.float32), np.zeros((0, 3), dtype=np.int32)
    representative = rounded_representatives(vertices, decimals, np.arange(vertices.shape[0]))
    return reindex(vertices, faces, representative, used=representative[faces.reshape(-1)])


def rounded_representatives(vertices: np.ndarray, decimals: int, candidates: np.ndarray) -> np.ndarray:
    """For every vertex, the first vertex (lowest index) equal to it after rounding, looked for among the
    `candidates` (indices; the other vertices are their own representatives). Passing only a superset of the
    vertices that can equal another gives the same result as all of them, at a fraction of the sort."""
    representative = np.arange(vertices.shape[0])
    representative[candidates] = candidates[first_of_equal_rows(rounded_keys(vertices[candidates], decimals))]
    return representative


def reindex(vertices: np.ndarray, faces: np.ndarray, representative: np.ndarray,
            used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces through `representative`, keeping the `used` vertices (indices, repeats allowed) in their order:
    (float32 vertices, int32 faces)."""
    kept = np.zeros(vertices.shape[0], dtype=bool)
    kept[used] = True
    if np.count_nonzero(kept) > np.iinfo(np.int32).max:
        raise ValueError(f"{np.count_nonzero(kept)} vertices do not fit int32 face indices")
    index = (np.cumsum(kept) - 1)[representative]
    return np.ascontiguousarray(vertices[kept], dtype=np.float32), index[faces].astype(np.int32)


def rounded_keys(vertices: np.ndarray, decimals: int) -> np.ndarray:
    """int64 (V, 3): the coordinates rounded to `decimals`, scaled to integers (trimesh's merge keys)."""
    with np.errstate(invalid="ignore"):  # a NaN coordinate (a NaN field value) casts to one shared key
        keys: np.ndarray = np.round(vertices.astype(np.float64) * 10.0**decimals).astype(np.int64)
    return keys


def first_of_equal_rows(keys: np.ndarray) -> np.ndarray:
    """For each row of keys (N, 3), the index of the first row equal to it."""
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))  # stable: equal keys keep their order
    sorted_keys = keys[order]
    return first_of_runs(order, (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1))


def first_of_runs(order: np.ndarray, changes: np.ndarray) -> np.ndarray:
    """Given a stable sorting `order` and where each sorted key differs from the previous one (N - 1 bools),
    the index of the first (lowest-index) item with each item's key."""
    starts = np.ones(order.size, dtype=bool)
    starts[1:] = changes
    first = np.empty(order.size, dtype=np.int64)
    first[order] = order[starts][np.cumsum(starts) - 1]
    return first
