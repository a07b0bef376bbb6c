"""Sub-lattices of the R-point fine grid and the array operations between their cells and points.

A lattice of stride s along one axis holds the fine indices 0, s, 2s, ... plus R-1, so coarse samples
ARE fine samples and the box corners are always sampled; the last cell may be narrower than s. A 3D
lattice is the same 1D lattice on each axis. Cells are indexed by their lower corner; an (n+1)^3 point
array has n^3 cells. Everything here is pure numpy.
"""

from __future__ import annotations

import itertools

import numpy as np


def lattice_indices(resolution: int, stride: int) -> np.ndarray:
    """Fine indices (int64, increasing) of the stride-`stride` lattice of an R-point axis, R-1 included."""
    if resolution < 2 or stride < 1:
        raise ValueError(f"need resolution >= 2 and stride >= 1, got {resolution}, {stride}")
    return np.unique(np.append(np.arange(0, resolution, stride), resolution - 1)).astype(np.int64)


def level_strides(resolution: int, min_coarse_cells: int) -> list[int]:
    """Strides from the coarsest (a power of two keeping >= min_coarse_cells cells per axis) halving to 1."""
    if min_coarse_cells < 1:
        raise ValueError(f"min_coarse_cells must be >= 1, got {min_coarse_cells}")
    stride = 1
    while (resolution - 1) // (2 * stride) >= min_coarse_cells:
        stride *= 2
    strides = [stride]
    while strides[-1] > 1:
        strides.append(strides[-1] // 2)
    return strides


def lattice_samples(volume: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """volume[np.ix_(lattice, lattice, lattice)] as a copy made of strided slices (several times faster than the
    index gather at stride 2 on 256^3): the lattice is 0, s, 2s, ... plus, when it is not on that progression,
    the last grid index."""
    step = int(lattice[1] - lattice[0]) if lattice.size > 1 else 1
    regular = lattice.size - 1 if lattice.size > 1 and lattice[-1] - lattice[-2] != step else lattice.size
    if not np.array_equal(lattice[:regular], np.arange(regular) * step):
        gathered: np.ndarray = volume[np.ix_(lattice, lattice, lattice)]
        return gathered
    last = int(lattice[-1])
    parts = [(slice(0, regular), slice(0, (regular - 1) * step + 1, step))]
    if regular < lattice.size:
        parts.append((slice(regular, regular + 1), slice(last, last + 1)))
    out = np.empty((lattice.size,) * 3, dtype=volume.dtype)
    for (out_x, in_x), (out_y, in_y), (out_z, in_z) in itertools.product(parts, repeat=3):
        out[out_x, out_y, out_z] = volume[in_x, in_y, in_z]
    return out


def parent_cells(child_lattice: np.ndarray, parent_lattice: np.ndarray) -> np.ndarray:
    """For each cell of the finer 1D lattice, the index of the coarser-lattice cell that contains it."""
    return np.searchsorted(parent_lattice, child_lattice[:-1], side="right") - 1


def gather_cells(values: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """values[x][:, y][:, :, z] as one separable gather (three 1D takes instead of an (N, 3) index)."""
    return np.take(np.take(np.take(values, x, axis=0), y, axis=1), z, axis=2)


def corner_min(points: np.ndarray) -> np.ndarray:
    """Per cell, the minimum over its 8 corners: (n+1)^3 -> n^3. NaN corners give NaN (unknown cell)."""
    out: np.ndarray = np.minimum(points[:-1], points[1:])
    out = np.minimum(out[:, :-1], out[:, 1:])
    out = np.minimum(out[:, :, :-1], out[:, :, 1:])
    return out


def corner_max(points: np.ndarray) -> np.ndarray:
    """Per cell, the maximum over its 8 corners: (n+1)^3 -> n^3. NaN corners give NaN (unknown cell)."""
    out: np.ndarray = np.maximum(points[:-1], points[1:])
    out = np.maximum(out[:, :-1], out[:, 1:])
    out = np.maximum(out[:, :, :-1], out[:, :, 1:])
    return out


def corner_any(points: np.ndarray) -> np.ndarray:
    """Per cell, whether any of its 8 corners is set: bool (n+1)^3 -> n^3."""
    out: np.ndarray = points[:-1] | points[1:]
    out = out[:, :-1] | out[:, 1:]
    out = out[:, :, :-1] | out[:, :, 1:]
    return out


def points_of_cells(cells: np.ndarray) -> np.ndarray:
    """Bool n^3 cell mask -> bool (n+1)^3 mask of every corner of a set cell (closed cells)."""
    out = cells
    for axis in range(3):
        shape = list(out.shape)
        shape[axis] += 1
        grown = np.zeros(shape, dtype=bool)
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(0, -1)
        upper[axis] = slice(1, None)
        grown[tuple(lower)] |= out
        grown[tuple(upper)] |= out
        out = grown
    return out


def dilate_cells(cells: np.ndarray, steps: int) -> np.ndarray:
    """Grow a bool cell mask by `steps` cells in all 26 directions (a cube, so separable per axis)."""
    out = cells.copy()
    for _ in range(steps):
        for axis in range(3):
            moved = np.moveaxis(out, axis, 0)
            grown = moved.copy()
            grown[1:] |= moved[:-1]
            grown[:-1] |= moved[1:]
            out = np.moveaxis(grown, 0, axis)
    return np.ascontiguousarray(out)


def interpolation_weights(lattice: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per fine index in `targets`: the lattice cell holding it and its float32 weight towards the cell's
    upper end (0 on lattice points; the last lattice point is the upper end of the last cell)."""
    cell = np.clip(np.searchsorted(lattice, targets, side="right") - 1, 0, lattice.size - 2)
    offset = (targets - lattice[cell]).astype(np.float32)
    weight: np.ndarray = offset / (lattice[cell + 1] - lattice[cell]).astype(np.float32)
    return cell, weight


def interpolate_axis(values: np.ndarray, lattice: np.ndarray, targets: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation along `axis` of lattice samples (no NaN) to the fine indices `targets`."""
    cell, weights = interpolation_weights(lattice, targets)
    shape = [1, 1, 1]
    shape[axis] = targets.size
    weight = weights.reshape(shape)
    low = np.take(values, cell, axis=axis)
    out = np.take(values, cell + 1, axis=axis)
    out -= low
    out *= weight
    out += low  # low + 0 * (high - low) is exactly low on lattice points
    return out
