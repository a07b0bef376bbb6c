"""The fast path's fine-level guarantee: every cell that yields triangles has all 8 corners queried.

Points never queried hold an estimate (`refinement`). Marching cubes makes triangles only in cells whose
corners are not all on one side. While such a cell has an estimated corner, its corners are queried,
which may expose the next such cell (the surface followed cell by cell), until none is left. Then each
triangle comes from a cell of real samples, the same cell with the same values as in the dense volume,
so a surface component that touches any such cell is traced in full; only a component whose cells all
keep a one-sided estimate can be lost (what the refinement margin is for).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from pipeline.isosurface.lattice import corner_any, points_of_cells
from pipeline.isosurface.refinement import CoarseToFineSample, DensityAt

logger = logging.getLogger(__name__)

_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=np.int64)  # (8, 3) cell corner offsets
_ALL_EIGHT = np.uint64(0x0101010101010101)  # 8 True bytes read as one uint64 (`eight_flags`)


def corner_offsets(size: int) -> np.ndarray:
    """Flat-index offsets (8,) from a cell's lower corner to its 8 corners in an (R, R, R) grid."""
    return _CORNERS @ np.array([size * size, size, 1], dtype=np.int64)


@dataclass(frozen=True)
class ClosedVolume:
    """values (R, R, R) float32 = density_act - threshold where queried, an estimate elsewhere."""

    values: np.ndarray
    points_added: int
    rounds: int


def corners_to_complete(values: np.ndarray, queried: np.ndarray) -> np.ndarray:
    """Unqueried corners (flat grid indices, sorted) of the cells whose corners lie on both sides of 0 and
    include an unqueried point: the whole grid, as masks (cheaper than listing cells and deduplicating)."""
    below = values < 0
    mixed = corner_any(below) & corner_any(~below)
    del below
    mixed &= corner_any(~queried)
    return np.flatnonzero(points_of_cells(mixed) & ~queried)


def distinct(indices: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an int array. Sorting and dropping repeats is ~50x faster here than
    np.unique, whose hash table (numpy >= 2.3) misses the cache on millions of scattered grid indices."""
    ordered = np.sort(indices)
    keep = np.ones(ordered.size, dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


def cells_to_complete_near(values: np.ndarray, queried: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Among the cells with a corner in `points` (flat grid indices), those whose corners lie on both
    sides of 0 and include an unqueried point, as the flat grid index of their lower corner."""
    size = values.shape[0]
    offsets = corner_offsets(size)
    coords = np.stack(np.unravel_index(points, values.shape), axis=1)
    # a point is corner c of the cell at coords - c when that cell exists: per axis, offset 0 needs
    # coord <= size - 2 and offset 1 needs coord >= 1
    fits = np.stack([coords <= size - 2, coords >= 1], axis=2)  # (N, 3, 2)
    inside = fits[:, 0, _CORNERS[:, 0]] & fits[:, 1, _CORNERS[:, 1]] & fits[:, 2, _CORNERS[:, 2]]  # (N, 8)
    cells = distinct((points[:, None] - offsets[None])[inside])
    corners = cells[:, None] + offsets[None]
    below = eight_flags(values.reshape(-1)[corners] < 0)
    complete = eight_flags(queried.reshape(-1)[corners]) == _ALL_EIGHT
    straddling: np.ndarray = cells[(below != 0) & (below != _ALL_EIGHT) & ~complete]
    return straddling


def eight_flags(flags: np.ndarray) -> np.ndarray:
    """(N, 8) bool -> (N,) uint64 holding the 8 bytes: any = != 0, all = == _ALL_EIGHT, without numpy's slow
    reductions along a length-8 axis."""
    packed: np.ndarray = np.ascontiguousarray(flags).view(np.uint64).reshape(-1)
    return packed


def close_surface(sample: CoarseToFineSample, density_at: DensityAt, threshold: float) -> ClosedVolume:
    """Query corners until no triangle-making cell has an estimated corner (module docstring).

    After a round, only cells at a corner whose sign changed (estimate -> sample) can newly need it: the
    others kept their signs, and the cells that needed it had all their corners queried in the round.
    """
    values, queried = sample.values, sample.queried
    flat_values, flat_queried = values.reshape(-1), queried.reshape(-1)
    offsets = corner_offsets(values.shape[0])
    corners = corners_to_complete(values, queried)
    added = rounds = 0
    while corners.size:
        estimated_below = flat_values[corners] < 0
        points = np.stack(np.unravel_index(corners, values.shape), axis=1)
        flat_values[corners] = density_at(points) - np.float32(threshold)
        flat_queried[corners] = True
        added += corners.size
        rounds += 1
        cells = cells_to_complete_near(values, queried, corners[estimated_below != (flat_values[corners] < 0)])
        corners = distinct((cells[:, None] + offsets[None]).reshape(-1))
        corners = corners[~flat_queried[corners]]
    if added:
        logger.debug("closure queried %d more points in %d rounds", added, rounds)
    return ClosedVolume(values, added, rounds)
