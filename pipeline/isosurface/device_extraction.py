"""The "gpu" isosurface extraction: the dense reference (SPEC §11) kept on the scene code's device.

    result = extract_on_device(model, scene_code, 256, 25.0, chunk_size=65536)   # DeviceExtraction

density_act at all R^3 grid points is written chunk by chunk into one device tensor, NVIDIA Warp's
`wp.geometry.IsoSurfaceMarchingCubes` triangulates it in place (zero-copy `wp.from_torch`), the vertex merge
and the colour query run in torch on the same device, and only the final arrays are copied to the host.
Warp runs on the CPU as well (its kernels compiled at first use), which is how CI checks this path.

Same surface as `triangulation.triangulate` (PyMCubes on V = density_act - threshold): fed V, Warp's cube
cases are the complements of PyMCubes' (it splits corners at value >= iso, PyMCubes puts V = 0 with V < 0),
and the classic case table is not symmetric under complement (ambiguous cases; 38,685 faces on the fixture
grid, not the official 38,693). Fed -V at iso 0 it splits as PyMCubes does: the same cells, triangles and
winding, exact zeros included. Vertices come from float32 interpolation, within 2.8e-7 of the reference's,
so the 8-decimal merge may treat a few vertices next to a grid node differently (+1 to +3 per mesh measured).

Library: Warp 1.19 (warp-lang: a 149 MB wheel, 392 MB installed, `import warp` 0.7 s, so the optional extra
`gpu`). isoext 1.0 ships only an sdist built with nvcc, without a CPU path; cupy has no marching cubes (we
would own a CUDA kernel and its tables): neither could run in CPU-only CI. Measured on the CPU (2 loaded
cores, full-size random model; bench/extraction_gpu.py): at 256^3 dense 152 s, gpu 152 s, fast 14 s, the
point queries 89-99% of each; marching cubes + merge alone 1.0 s with PyMCubes, 6.1 s with Warp's serial CPU
kernels and torch's CPU sort. So on the CPU "auto" stays "fast"; GPU numbers are pending a GPU machine.
Kernel cache: Warp's default (~/.cache/warp, or $WARP_CACHE_PATH) when writable, else a per-user folder in
the temp dir (read-only homes); compiling takes ~3-5 s on the CPU once per cache. Warp 1.19 has no
`config.quiet`: `log_level = LOG_WARNING` silences its banner (without a CUDA driver its native library
still prints one line to stderr at init).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.isosurface.grid import DensityField, grid_axis
from pipeline.mesh_arrays import MeshArrays

logger = logging.getLogger(__name__)

# trimesh's process=True merge (pipeline.isosurface.triangulation.MERGE_DECIMALS): 8 decimals.
MERGE_SCALE = 1e8
# Warp's scratch per node of the marching-cubes box (per-edge count, scan and vertex id, 3 edges each, int32)
# and per cell (face count and scan): the estimate behind DeviceExtraction.volume_bytes.
_WARP_BYTES_PER_NODE = 3 * 3 * 4
_WARP_BYTES_PER_CELL = 2 * 4


@dataclass(frozen=True)
class DeviceExtraction:
    """What `extract_on_device` made: the mesh (None when the field has no surface at the threshold), the
    density points queried, the seconds spent in density and colour queries, and the device bytes held at
    once (the R^3 float32 grid plus Warp's scratch on the surface's box, estimated)."""

    mesh: MeshArrays | None
    points_queried: int
    query_seconds: float
    volume_bytes: int


@functools.cache
def warp_available() -> bool:
    """Whether warp-lang imports; initializes it once per process (quiet, a writable kernel cache).

    A missing Warp is logged once: the "gpu" method then runs the CPU "fast" path instead.
    """
    try:
        import warp as wp
        import warp.geometry  # IsoSurfaceMarchingCubes; an explicit import in Warp 1.19
    except ImportError as exc:
        logger.warning("warp-lang is not importable (%s): isosurface extraction 'gpu' runs the CPU 'fast' path",
                       exc)
        return False
    wp.config.log_level = wp.LOG_WARNING  # no init banner, no per-module "load took" lines (1.19 has no `quiet`)
    cache_dir = kernel_cache_dir(os.environ)
    if cache_dir is not None:
        wp.config.kernel_cache_dir = str(cache_dir)
    wp.init()  # type: ignore[no-untyped-call]
    return True


def kernel_cache_dir(environ: Mapping[str, str]) -> Path | None:
    """Where Warp should cache compiled kernels: None keeps Warp's own choice ($WARP_CACHE_PATH, else the
    user cache dir) when it is writable; otherwise a per-user folder in the temp dir (a read-only home)."""
    home_cache = Path(environ.get("XDG_CACHE_HOME") or Path(environ.get("HOME", "~")).expanduser() / ".cache")
    default = Path(environ["WARP_CACHE_PATH"]) if environ.get("WARP_CACHE_PATH") else home_cache / "warp"
    if _writable(default):
        return None
    fallback = Path(tempfile.gettempdir()) / f"warp-kernel-cache-{os.getuid()}"
    logger.info("Warp kernel cache %s is not writable: using %s", default, fallback)
    return fallback


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def extract_on_device(field: DensityField, scene_code: Tensor, resolution: int, threshold: float,
                      chunk_size: int) -> DeviceExtraction:
    """The dense reference's surface density_act = threshold of scene_code (3, C, h, w), computed on
    scene_code's device (needs Warp: `warp_available()`). chunk_size points per query (0 = one query)."""
    if scene_code.ndim != 4 or scene_code.shape[0] != 3:
        raise ValueError(f"scene_code must be (3, C, h, w), got {tuple(scene_code.shape)}")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 = unchunked), got {chunk_size}")
    radius = float(field.renderer_radius)
    with torch.inference_mode():
        started = time.perf_counter()
        values = dense_level_values(field, scene_code, resolution, threshold, chunk_size)
        query_seconds = time.perf_counter() - started
        volume_bytes = values.numel() * values.element_size()
        box = surface_box(values)
        if box is None:
            return DeviceExtraction(None, resolution**3, query_seconds, volume_bytes)
        nodes = values[box].numel()
        volume_bytes += nodes * _WARP_BYTES_PER_NODE + nodes * _WARP_BYTES_PER_CELL
        vertices, faces = marching_cubes_on_device(values, box, grid_axis(resolution, radius))
        del values
        vertices, faces = merge_rounded_vertices_on_device(vertices, faces)
        started = time.perf_counter()
        colors = colors_on_device(field, scene_code, vertices, chunk_size)
        query_seconds += time.perf_counter() - started
        mesh = MeshArrays(vertices=vertices.cpu().numpy(), faces=faces.to(torch.int32).cpu().numpy(),
                          colors=colors.cpu().numpy())
    return DeviceExtraction(mesh, resolution**3, query_seconds, volume_bytes)


def dense_level_values(field: DensityField, scene_code: Tensor, resolution: int, threshold: float,
                       chunk_size: int) -> Tensor:
    """threshold - density_act on the whole grid, (R, R, R) float32 on scene_code's device, indexed
    [ix, iy, iz]; queried in the dense reference's chunks (flat order), so on the CPU it is bitwise -V."""
    device = scene_code.device
    axis = torch.from_numpy(grid_axis(resolution, float(field.renderer_radius))).to(device)
    count = resolution**3
    values = torch.empty(count, dtype=torch.float32, device=device)
    step = chunk_size or count
    for start in range(0, count, step):
        flat = torch.arange(start, min(start + step, count), device=device)
        ix, rest = flat.div(resolution * resolution, rounding_mode="floor"), flat % (resolution * resolution)
        iy, iz = rest.div(resolution, rounding_mode="floor"), rest % resolution
        density, _ = field.query(scene_code, torch.stack([axis[ix], axis[iy], axis[iz]], dim=1))
        values[start:start + flat.numel()] = density.reshape(-1).to(device=device, dtype=torch.float32)
    # threshold - d is exactly -(d - threshold) in float arithmetic: the reference's values, negated
    values.neg_().add_(threshold)
    _synchronize(device)  # so query_seconds is the queries' time, not their launch time
    return values.reshape(resolution, resolution, resolution)


def surface_box(values: Tensor) -> tuple[slice, slice, slice] | None:
    """The box of points with values <= 0 (density >= threshold; V is negated here) grown by one, or None:
    every cell that makes triangles has such a corner, so marching cubes on the box gives the whole grid's
    triangles. Reads 3 R-long masks back to the host (the box bounds)."""
    inside = values <= 0
    masks = torch.stack([inside.any(2).any(1), inside.any(2).any(0), inside.any(1).any(0)]).cpu()
    box = []
    for axis in range(3):
        present = torch.nonzero(masks[axis]).reshape(-1)
        if present.numel() == 0:
            return None
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, values.shape[axis])))
    return box[0], box[1], box[2]


def marching_cubes_on_device(values: Tensor, box: tuple[slice, slice, slice],
                             axis: np.ndarray) -> tuple[Tensor, Tensor]:
    """Warp marching cubes of -V `values` at iso 0 on `box` (a strided view, no copy), `axis` the grid's
    world coordinates: vertices float32 (V, 3), one per crossed edge (unmerged), faces int64 (F, 3)."""
    if not warp_available():
        raise RuntimeError("warp-lang is not installed: pip install 'shop3d[gpu]'")
    import warp as wp
    import warp.geometry

    lower = (float(axis[box[0].start]), float(axis[box[1].start]), float(axis[box[2].start]))
    upper = (float(axis[box[0].stop - 1]), float(axis[box[1].stop - 1]), float(axis[box[2].stop - 1]))
    with _warp_stream(values.device):
        field: Any = wp.from_torch(values[box])  # a float32 array3d; the annotation also admits a ctype
        try:
            vertices, indices = wp.geometry.IsoSurfaceMarchingCubes.extract(field, 0.0, lower=lower, upper=upper)
        except RuntimeError as exc:
            if "Failed to allocate" in str(exc):  # Warp's allocator: sorted with torch's OOMs by the callers
                raise torch.OutOfMemoryError(f"Warp marching cubes: {exc}") from exc
            raise
        # to_torch aliases Warp's arrays (the tensors keep them alive); the merge copies what it keeps
        return wp.to_torch(vertices), wp.to_torch(indices).reshape(-1, 3).to(torch.int64)


def merge_rounded_vertices_on_device(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """`triangulation.merge_rounded_vertices` in torch, on the tensors' device: merge vertices equal after
    rounding to 8 decimals (first occurrence wins, its order kept), drop unreferenced ones, keep every face."""
    if vertices.shape[0] == 0:
        return vertices, faces
    keys = torch.round(vertices.to(torch.float64) * MERGE_SCALE).to(torch.int64)
    # numpy's lexsort as stable sorts: equal keys keep their order, so each group starts at its first occurrence
    order = torch.arange(vertices.shape[0], device=vertices.device)
    for column in (2, 1, 0):
        order = order[torch.sort(keys[order, column], stable=True).indices]
    sorted_keys = keys[order]
    starts = torch.ones(order.shape[0], dtype=torch.bool, device=vertices.device)
    starts[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(dim=1)
    first = order[starts]  # the first occurrence of each distinct key
    group = torch.empty_like(order)
    group[order] = torch.cumsum(starts, 0) - 1
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(first.shape[0], device=vertices.device)
    faces = rank[group][faces]
    vertices = vertices[torch.sort(first).values]
    used = torch.zeros(vertices.shape[0], dtype=torch.bool, device=vertices.device)
    used[faces.reshape(-1)] = True
    if not bool(used.all()):
        faces = (torch.cumsum(used, 0) - 1)[faces]
        vertices = vertices[used]
    return vertices.contiguous(), faces


def colors_on_device(field: DensityField, scene_code: Tensor, vertices: Tensor, chunk_size: int) -> Tensor:
    """Vertex colours (V, 3) uint8 = round(color * 255) at world vertices (V, 3), on their device."""
    colors = torch.empty(vertices.shape, dtype=torch.uint8, device=vertices.device)
    step = chunk_size or max(vertices.shape[0], 1)
    for start in range(0, vertices.shape[0], step):
        _, color = field.query(scene_code, vertices[start:start + step])
        scaled = color.to(device=vertices.device, dtype=torch.float32).clamp(0.0, 1.0) * 255.0
        colors[start:start + color.shape[0]] = torch.round(scaled).to(torch.uint8)
    _synchronize(vertices.device)
    return colors


def _warp_stream(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """On CUDA, run Warp on torch's current stream (ordered after the density queries); on the CPU, nothing."""
    import warp as wp

    if device.type != "cuda":
        return contextlib.nullcontext()
    return wp.ScopedStream(wp.stream_from_torch(device))  # type: ignore[no-untyped-call]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
