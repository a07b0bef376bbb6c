"""Coarse-to-fine sampling of the density grid: query only where the surface can be, level by level.

Level 0 queries a stride-s lattice of the fine grid (s a power of two, >= `min_coarse_cells` cells per
axis). At each level a cell is *marked* when its corners straddle the threshold or come within a margin
of it; the next (half-stride) lattice points inside marked cells (dilated at level 0) are queried. At the
last level (stride 2 -> 1) straddling cells are not queried in full: the surface is known to pass there
and `closure` follows it cell by cell; cells marked by the margin alone are (none by default, see
RefinementSettings). Unqueried points get an estimate interpolated down the levels (its sign is all
that closure and marching cubes use).

Why the margin: in u = ln(density_act / threshold) (the network's raw density, shifted), a cell whose
corners all lie on one side can still hold surface only if u bends: trilinear interpolation of the
corners is off by at most sum_i h_i^2/8 * max|d2u/dx_i^2| inside the cell. So with K_i bounds on the
axis second derivatives, margin = safety * sum_i K_i h_i^2 / 8 makes "no corner within the margin" imply
"no surface in the cell". K_i is estimated from second differences of the lattice samples in the cell's
one-cell neighbourhood (never below the parent's estimate). A thin sheet between two samples is a bump
in u, so its second difference, hence the margin, grows with it: for a Gaussian profile (u a parabola)
safety 1 is exactly enough wherever the sheet sits. No sampling catches a feature whose influence never
reaches a sample; dilation adds a ring of coarse cells around every marked one for features that begin
just outside it, and `closure` completes every surface component that touches a queried cell.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

from pipeline.isosurface.lattice import (
    corner_max,
    corner_min,
    dilate_cells,
    gather_cells,
    interpolate_axis,
    interpolation_weights,
    lattice_indices,
    lattice_samples,
    level_strides,
    parent_cells,
    points_of_cells,
)

logger = logging.getLogger(__name__)

DensityAt = Callable[[np.ndarray], np.ndarray]
# |u| beyond this is far from the surface; clamping keeps density underflow (u = -inf) out of the curvature.
_U_CLAMP = 20.0
_TINY_DENSITY = 1e-30


@dataclass(frozen=True)
class RefinementSettings:
    """Knobs of the coarse-to-fine search (module docstring); bench/mesh.py measured the defaults.

    dilation: rings of coarse cells added around the marked ones at level 0 only, where samples are
    sparsest and a ring costs least (finer levels re-assess those cells with their own margins).
    final_curvature_safety: the last level's margin. A cell there that does not straddle can only hide a
    feature thinner than two fine spacings in some axis, which the dense grid itself samples on at most
    one plane; 0 (default) leaves such cells to closure (a thin feature touching one stride-2 sample is
    traced in full). 1.0 searches them too, for about 50% more queries (R=256, random full model).
    """

    min_coarse_cells: int = 24
    curvature_safety: float = 2.0
    final_curvature_safety: float = 0.0
    dilation: int = 1

    def __post_init__(self) -> None:
        if self.min_coarse_cells < 1 or self.dilation < 0:
            raise ValueError(f"need min_coarse_cells >= 1 and dilation >= 0, got {self}")
        if self.curvature_safety < 0 or self.final_curvature_safety < 0:
            raise ValueError(f"curvature safeties must be >= 0, got {self}")


@dataclass(frozen=True)
class CoarseToFineSample:
    """values (R, R, R) float32: density_act - threshold where queried (queried, bool R^3), else an estimate
    of ln(density_act / threshold), which has the same sign."""

    values: np.ndarray
    queried: np.ndarray
    strides: tuple[int, ...]


def log_ratio(density: np.ndarray, threshold: float) -> np.ndarray:
    """u = ln(density_act / threshold), clamped to +-20; NaN stays NaN. Same sign as density - threshold."""
    with np.errstate(divide="ignore", invalid="ignore"):
        u: np.ndarray = np.log(np.maximum(density, _TINY_DENSITY)) - np.float32(np.log(threshold))
    return u.clip(-_U_CLAMP, _U_CLAMP)


def axis_curvature(u: np.ndarray, widths: np.ndarray, axis: int) -> np.ndarray:
    """|d2u/dx^2| along `axis` per cell: second differences (uneven spacing, fine-index units; 0 at ends and
    NaNs), maximised over the one-cell neighbourhood and the cell's corners. (n+1)^3 -> n^3."""
    moved = np.moveaxis(u, axis, 0)
    second = np.zeros_like(moved)
    if moved.shape[0] >= 3:
        slopes = np.diff(moved, axis=0) / widths.reshape(-1, 1, 1)
        spans = (widths[:-1] + widths[1:]).reshape(-1, 1, 1)
        second[1:-1] = np.abs(2.0 * (slopes[1:] - slopes[:-1]) / spans)
    second = np.moveaxis(np.nan_to_num(second, nan=0.0), 0, axis)
    return corner_max(maximum_filter(second, size=3, mode="nearest"))


def assess_cells(density: np.ndarray, lattice: np.ndarray, threshold: float, safety: float,
                 parent_curvature: np.ndarray | None, *, need_curvature: bool = True,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Lattice samples (n+1)^3 (NaN = unknown) -> marked bool n^3, straddling bool n^3, curvature (3, n, n, n).

    Only cells with all 8 corners known can be marked; straddling cells are always marked. With safety 0
    and need_curvature False the curvature (finite, so its margin is exactly 0) is skipped and None returned.
    """
    u = log_ratio(density, threshold)
    widths = np.diff(lattice).astype(np.float32)
    curvature: np.ndarray | None = None
    margin: np.ndarray | float = 0.0
    if safety > 0 or need_curvature:
        curvature = np.stack([axis_curvature(u, widths, axis) for axis in range(3)])
        if parent_curvature is not None:
            curvature = np.maximum(curvature, parent_curvature)
        squared = widths**2 / 8.0
        margin = safety * (curvature[0] * squared[:, None, None] + curvature[1] * squared[None, :, None]
                           + curvature[2] * squared[None, None, :])
    with np.errstate(invalid="ignore"):
        low, high = corner_min(density), corner_max(density)
        straddling = (low < threshold) & (high >= threshold)
        near = (corner_max(u) + margin >= 0.0) & (corner_min(u) - margin <= 0.0)
    return near | straddling, straddling, curvature


def query_missing(density: np.ndarray, density_at: DensityAt, lattice: np.ndarray, wanted: np.ndarray) -> int:
    """Query the wanted points of a lattice that are still NaN in `density` (R^3, edited); returns the count."""
    full = lattice.size == density.shape[0]
    known = density if full else lattice_samples(density, lattice)
    ix, iy, iz = np.nonzero(wanted & np.isnan(known))
    del known
    if ix.size:
        indices = np.stack([lattice[ix], lattice[iy], lattice[iz]], axis=1)
        density[indices[:, 0], indices[:, 1], indices[:, 2]] = density_at(indices)
    return int(ix.size)


def refine_estimate(estimate: np.ndarray, lattice: np.ndarray, finer: np.ndarray, known: np.ndarray) -> np.ndarray:
    """u on the finer lattice: the known samples (u, NaN = unknown), else `estimate` interpolated down."""
    for axis in range(3):
        estimate = interpolate_axis(estimate, lattice, finer, axis)
    return np.where(np.isnan(known), estimate, known)


def cells_to_refine(samples: np.ndarray, lattice: np.ndarray, threshold: float, settings: RefinementSettings,
                    inherited: np.ndarray | None, *, first: bool, last: bool,
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """One level's decision: (cells whose next-lattice points to query, bool n^3; curvature (3, n, n, n), None at
    the last level, where no finer level inherits it)."""
    safety = settings.final_curvature_safety if last else settings.curvature_safety
    marked, straddling, curvature = assess_cells(samples, lattice, threshold, safety, inherited,
                                                 need_curvature=not last)
    if last:  # straddling cells are followed lazily by closure; the others are queried in full
        refine = marked & ~straddling
    else:
        refine = dilate_cells(marked, settings.dilation if first else 0)
    logger.debug("stride %d: %d of %d cells marked (%d straddling), %d refined", int(lattice[1] - lattice[0]),
                 int(marked.sum()), marked.size, int(straddling.sum()), int(refine.sum()))
    return refine, curvature


def sample_coarse_to_fine(density_at: DensityAt, resolution: int, threshold: float,
                          settings: RefinementSettings) -> CoarseToFineSample:
    """Query density_act level by level (see the module docstring); unqueried points get the estimate."""
    strides = level_strides(resolution, settings.min_coarse_cells)
    density = np.full((resolution,) * 3, np.nan, dtype=np.float32)
    lattice = lattice_indices(resolution, strides[0])
    query_missing(density, density_at, lattice, np.ones((lattice.size,) * 3, dtype=bool))
    estimate = log_ratio(lattice_samples(density, lattice), threshold)
    curvature: np.ndarray | None = None
    for level, (stride, next_stride) in enumerate(itertools.pairwise(strides)):
        inherited = None
        if curvature is not None:
            parents = parent_cells(lattice, lattice_indices(resolution, 2 * stride))
            inherited = np.stack([gather_cells(part, parents, parents, parents) for part in curvature])
        refine, curvature = cells_to_refine(lattice_samples(density, lattice), lattice, threshold,
                                            settings, inherited, first=level == 0, last=next_stride == 1)
        next_lattice = lattice_indices(resolution, next_stride)
        if refine.any():
            children = parent_cells(next_lattice, lattice)
            query_missing(density, density_at, next_lattice,
                          points_of_cells(gather_cells(refine, children, children, children)))
        if next_stride > 1:
            known = log_ratio(lattice_samples(density, next_lattice), threshold)
            estimate = refine_estimate(estimate, lattice, next_lattice, known)
            lattice = next_lattice
    queried = ~np.isnan(density)
    fill_estimate(density, queried, estimate, lattice, threshold)
    return CoarseToFineSample(density, queried, tuple(strides))


def fill_estimate(density: np.ndarray, queried: np.ndarray, estimate: np.ndarray, lattice: np.ndarray,
                  threshold: float) -> None:
    """In place: density -> density - threshold where queried, else the interpolated lattice estimate u
    (same sign as density - threshold; only the sign of an unqueried point is ever used).

    One fine x-plane at a time, from the two lattice x-planes around it interpolated in (y, z) on demand
    (each once, the last two kept): a few small buffers instead of an R^3 or lattice x R^2 temporary,
    whose first touch of fresh memory costs more than the arithmetic. A plane on a lattice point is a copy."""
    fine = np.arange(density.shape[0])
    cells, weights = interpolation_weights(lattice, fine)
    kept: dict[int, np.ndarray] = {}

    def lattice_plane(index: int) -> np.ndarray:
        if index not in kept:
            plane = interpolate_axis(estimate[index:index + 1], lattice, fine, 2)
            kept[index] = interpolate_axis(plane, lattice, fine, 1)[0]
            kept.pop(index - 2, None)
        return kept[index]

    between = np.empty(density.shape[1:], dtype=np.float32)
    for x, (cell, weight) in enumerate(zip(cells, weights, strict=True)):
        plane = density[x]
        plane -= np.float32(threshold)
        source = lattice_plane(int(cell))
        if weight:
            np.subtract(lattice_plane(int(cell) + 1), source, out=between)
            between *= weight
            between += source
            source = between
        np.copyto(plane, source, where=~queried[x])
