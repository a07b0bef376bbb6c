"""Triangle rasterisation in numpy: which triangle covers each pixel centre, and where (barycentrics).

One routine serves the texture bake (UV space, no depth) and the poster's fallback renderer (screen
space, nearest triangle wins by depth). Pure numpy, so it runs on any machine, with or without GL.
Pixel (row, col) has its centre at x = col + 0.5, y = row + 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pixel centres examined per batch: bounds the temporary arrays to a few hundred MB at most.
DEFAULT_BATCH_PIXELS = 2_000_000
# A pixel centre on a shared edge belongs to both triangles; the tolerance keeps it from falling
# through the crack between them because of rounding.
EDGE_TOLERANCE = 1e-7


@dataclass(frozen=True)
class Fragments:
    """One entry per covered pixel: its row and column, the covering face and the barycentrics there.

    rows, cols, faces int64 (N,); bary float64 (N, 3), weights of the face's corners 0, 1, 2.
    """

    rows: np.ndarray
    cols: np.ndarray
    faces: np.ndarray
    bary: np.ndarray

    @property
    def count(self) -> int:
        return int(self.rows.shape[0])


def _pixel_bounds(corners: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """Inclusive column/row ranges of pixel centres inside each triangle's bounding box."""
    low, high = corners.min(axis=1), corners.max(axis=1)
    col0 = np.clip(np.ceil(low[:, 0] - 0.5), 0, width).astype(np.int64)
    col1 = np.clip(np.floor(high[:, 0] - 0.5), -1, width - 1).astype(np.int64)
    row0 = np.clip(np.ceil(low[:, 1] - 0.5), 0, height).astype(np.int64)
    row1 = np.clip(np.floor(high[:, 1] - 0.5), -1, height - 1).astype(np.int64)
    return col0, col1, row0, row1


def _batches(counts: np.ndarray, batch_pixels: int) -> list[tuple[int, int]]:
    """Split face indices into consecutive ranges whose candidate pixels add up to about batch_pixels."""
    ends = np.cumsum(counts)
    bounds, start = [], 0
    while start < len(counts):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + batch_pixels, side="right"))
        stop = max(stop, start + 1)  # a single huge triangle still forms its own batch
        bounds.append((start, stop))
        start = stop
    return bounds


def _cover_batch(corners: np.ndarray, face_ids: np.ndarray, col0: np.ndarray, row0: np.ndarray,
                 widths: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Candidate pixels of a batch of triangles -> (rows, cols, faces, bary) of those inside."""
    owner = np.repeat(np.arange(len(face_ids)), counts)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = col0[owner] + offset % widths[owner]
    rows = row0[owner] + offset // widths[owner]
    px, py = cols + 0.5, rows + 0.5
    a, b, c = corners[owner, 0], corners[owner, 1], corners[owner, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    # Edge functions divided by the signed area: both windings give positive weights inside.
    w0 = ((c[:, 0] - b[:, 0]) * (py - b[:, 1]) - (c[:, 1] - b[:, 1]) * (px - b[:, 0])) / area2
    w1 = ((a[:, 0] - c[:, 0]) * (py - c[:, 1]) - (a[:, 1] - c[:, 1]) * (px - c[:, 0])) / area2
    w2 = 1.0 - w0 - w1
    inside = (w0 >= -EDGE_TOLERANCE) & (w1 >= -EDGE_TOLERANCE) & (w2 >= -EDGE_TOLERANCE)
    bary = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)
    return rows[inside], cols[inside], face_ids[owner[inside]], np.clip(bary, 0.0, 1.0)


def rasterize(points: np.ndarray, faces: np.ndarray, width: int, height: int, depth: np.ndarray | None = None,
              *, batch_pixels: int = DEFAULT_BATCH_PIXELS) -> Fragments:
    """Cover a width x height grid with triangles given in pixel coordinates (V, 2).

    With `depth` (V,), each pixel keeps the triangle with the smallest interpolated depth (a
    z-buffer); without it, overlapping triangles (none in a UV atlas) keep an arbitrary one.
    Degenerate triangles and triangles between pixel centres cover nothing.
    """
    if width < 1 or height < 1:
        raise ValueError(f"raster size must be positive, got {width}x{height}")
    corners = np.asarray(points, dtype=np.float64)[faces]
    col0, col1, row0, row1 = _pixel_bounds(corners, width, height)
    widths, heights = col1 - col0 + 1, row1 - row0 + 1
    edge_a, edge_b = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area2 = np.abs(edge_a[:, 0] * edge_b[:, 1] - edge_a[:, 1] * edge_b[:, 0])
    live = np.flatnonzero((widths > 0) & (heights > 0) & (area2 > 1e-12))
    counts = widths[live] * heights[live]
    pieces = []
    for start, stop in _batches(counts, batch_pixels):
        chosen = live[start:stop]
        pieces.append(_cover_batch(corners[chosen], chosen, col0[chosen], row0[chosen], widths[chosen],
                                   counts[start:stop]))
    if not pieces:
        empty = np.zeros(0, dtype=np.int64)
        return Fragments(empty, empty, empty, np.zeros((0, 3)))
    rows, cols, face_ids, bary = (np.concatenate(parts) for parts in zip(*pieces, strict=False))
    pixel = rows * width + cols
    if depth is None:
        order = np.argsort(pixel, kind="stable")
    else:
        z = np.einsum("ij,ij->i", bary, np.asarray(depth, dtype=np.float64)[faces[face_ids]])
        order = np.lexsort((z, pixel))  # by pixel, then nearest first
    first = order[np.concatenate([[True], np.diff(pixel[order]) != 0])] if order.size else order
    return Fragments(rows[first], cols[first], face_ids[first], bary[first])
