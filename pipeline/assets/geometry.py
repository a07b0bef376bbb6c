"""Pure mesh geometry between isosurface extraction and export: weld, clean, decimate, orient, size, place.

Every function takes a `MeshArrays` (or arrays) and returns new ones; nothing touches disk or logs.
`pipeline.assets.bundle.prepare_with_frame` runs them in the order that decides what reaches the GLB.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fast_simplification
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from pipeline.errors import JobRejected
from pipeline.mesh_arrays import MeshArrays

# Native TripoSR frame (Z up) -> glTF (Y up): (x, y, z) -> (-y, z, -x), the gradio transform (SPEC §12).
# det = +1, so it is a proper rotation and the counter-clockwise winding stays outward.
NATIVE_TO_GLTF = np.array([[0.0, -1.0, 0.0],
                           [0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0]])

DEFAULT_LARGEST_EXTENT_M = 0.3      # size of a product whose job gives no real-world dimensions
WELD_TOLERANCE = 1e-6               # fraction of the bounding-box diagonal treated as "same point"
MIN_FRAGMENT_AREA_FRACTION = 0.02   # components smaller than this share of the largest are floaters

# fast_simplification keeps the mesh in module-level C++ state, so two threads must not interleave.
_SIMPLIFY_LOCK = threading.Lock()


# Real-world size in job metadata, e.g. {"dimensions": {"width": 12, "height": 30, "depth": 12, "unit": "cm"}}.
# Values may also be strings with their own unit ("30 cm"), which wins over the shared "unit".
DIMENSION_CONTAINER_KEYS = ("dimensions", "realWorldDimensions", "real_world_dimensions")
DIMENSION_AXIS_KEYS = {"width": ("width", "w"), "height": ("height", "h"), "depth": ("depth", "d", "length")}
UNIT_TO_METRES = {
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), 1.0),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), 0.01),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), 0.001),
    **dict.fromkeys(("in", "inch", "inches", '"'), 0.0254),
    **dict.fromkeys(("ft", "foot", "feet"), 0.3048),
}
MAX_DIMENSION_M = 100.0  # larger than any product we could sell in AR: a unit mix-up, not a size
_VALUE_WITH_UNIT = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z"]*)\s*$')


@dataclass(frozen=True)
class Dimensions:
    """A product's real-world size in metres; any axis may be unknown (None), at least one is set."""

    width_m: float | None
    height_m: float | None
    depth_m: float | None


def _to_metres(value: Any, default_unit: str | None, axis: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"dimension {axis!r} must be a number or a string like '30 cm'")
    if isinstance(value, str):
        match = _VALUE_WITH_UNIT.match(value)
        if match is None:
            raise ValueError(f"dimension {axis!r} is not a number with an optional unit: {value[:40]!r}")
        number, unit = float(match.group(1)), (match.group(2) or default_unit)
    else:
        number, unit = float(value), default_unit
    if unit is None:
        raise ValueError(f"dimension {axis!r} has no unit; give 'unit' (m, cm, mm, in, ft)")
    factor = UNIT_TO_METRES.get(unit.strip().lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit[:20]!r}; use one of m, cm, mm, in, ft")
    metres = number * factor
    if not (0.0 < metres <= MAX_DIMENSION_M):
        raise ValueError(f"dimension {axis!r} = {metres:g} m is outside (0, {MAX_DIMENSION_M:g}] m")
    return metres


def parse_dimensions(metadata: Mapping[str, Any] | None) -> Dimensions | None:
    """Real-world dimensions from job metadata, or None when the job gives none.

    Raises ValueError (with a short reason) when dimensions are present but unusable; callers
    decide whether that fails the job or falls back to the default size.
    """
    container = next((metadata[k] for k in DIMENSION_CONTAINER_KEYS if metadata and k in metadata), None)
    if container is None:
        return None
    if not isinstance(container, Mapping):
        raise ValueError("metadata dimensions must be an object with width/height/depth")
    unit = container.get("unit", container.get("units"))
    if unit is not None and not isinstance(unit, str):
        raise ValueError("dimension unit must be a string")
    found: dict[str, float | None] = {}
    for axis, spellings in DIMENSION_AXIS_KEYS.items():
        raw = next((container[k] for k in spellings if container.get(k) is not None), None)
        found[axis] = None if raw is None else _to_metres(raw, unit, axis)
    if all(v is None for v in found.values()):
        raise ValueError("metadata dimensions give none of width, height, depth")
    return Dimensions(width_m=found["width"], height_m=found["height"], depth_m=found["depth"])


@dataclass(frozen=True)
class ScaleChoice:
    """The uniform factor applied to reach metres, and which evidence chose it."""

    factor: float
    basis: str  # "height" | "largest_horizontal" | "default"


def _bbox_diagonal(vertices: np.ndarray) -> float:
    if len(vertices) == 0:
        return 0.0
    return float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))


def _face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangle areas (F,) in squared vertex units."""
    v = vertices.astype(np.float64)
    edges_a = v[faces[:, 1]] - v[faces[:, 0]]
    edges_b = v[faces[:, 2]] - v[faces[:, 0]]
    areas: np.ndarray = 0.5 * np.linalg.norm(np.cross(edges_a, edges_b), axis=1)
    return areas


def _rebuild(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> MeshArrays:
    """Drop unreferenced vertices, renumber faces and cast to the MeshArrays dtypes."""
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    new_index = np.cumsum(used) - 1
    return MeshArrays(vertices=np.ascontiguousarray(vertices[used], dtype=np.float32),
                      faces=np.ascontiguousarray(new_index[faces], dtype=np.int32),
                      colors=np.ascontiguousarray(colors[used], dtype=np.uint8))


def clean_mesh(mesh: MeshArrays, tolerance: float = WELD_TOLERANCE) -> MeshArrays:
    """Weld vertices closer than `tolerance` x bbox diagonal, drop degenerate and repeated faces.

    Marching cubes leaves duplicated vertices (computed from opposite edge directions) and
    zero-area triangles where it snaps to grid corners; both upset decimation and validators.
    """
    if mesh.n_faces == 0:
        return _rebuild(mesh.vertices, mesh.faces, mesh.colors)
    vertices = mesh.vertices.astype(np.float64)
    radius = tolerance * max(_bbox_diagonal(vertices), 1e-12)
    pairs = cKDTree(vertices).query_pairs(radius, output_type="ndarray")
    n = len(vertices)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # The first vertex of each welded group represents it (and gives it its colour).
    first_of_label = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first_of_label, labels, np.arange(n))
    faces = first_of_label[labels][mesh.faces]
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[distinct]
    faces = faces[_face_areas(vertices, faces) > (radius * radius)]
    # The same triangle listed twice (in any rotation) renders as z-fighting; keep one copy.
    _, keep = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(keep)]
    return _rebuild(vertices, faces, mesh.colors)


def drop_small_fragments(mesh: MeshArrays, min_area_fraction: float = MIN_FRAGMENT_AREA_FRACTION) -> MeshArrays:
    """Keep connected components whose surface area is at least `min_area_fraction` of the largest.

    Floaters from the density field are tiny disconnected shells; real multi-part products
    (a pair of earrings) keep every part above the threshold. The largest part always stays.
    """
    if mesh.n_faces == 0:
        return mesh
    n = mesh.n_vertices
    edges = np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    n_components, labels = connected_components(graph, directed=False)
    if n_components == 1:
        return mesh
    face_labels = labels[mesh.faces[:, 0]]
    areas = np.bincount(face_labels, weights=_face_areas(mesh.vertices, mesh.faces), minlength=n_components)
    keep_label = areas >= min_area_fraction * areas.max()
    return _rebuild(mesh.vertices, mesh.faces[keep_label[face_labels]], mesh.colors)


def decimate(mesh: MeshArrays, max_faces: int) -> MeshArrays:
    """Quadric-decimate to at most `max_faces` faces; colours follow the nearest original vertex.

    The simplifier moves and merges vertices and knows nothing of colours, so each surviving
    vertex takes the colour of the input vertex closest to it. Raises `export_failed` when the
    budget cannot be reached (only on meshes too small to collapse further).
    """
    if max_faces < 1:
        raise ValueError(f"max_faces must be positive, got {max_faces}")
    if mesh.n_faces <= max_faces:
        return mesh
    source = mesh.vertices.astype(np.float64)
    target = max_faces
    for aggressiveness in (7.0, 9.0, 12.0):
        with _SIMPLIFY_LOCK:
            points, faces = fast_simplification.simplify(source, mesh.faces.astype(np.int32),
                                                          target_count=target, agg=aggressiveness)
        if len(faces) <= max_faces:
            break
        target = max(1, target // 2)
    else:
        raise JobRejected("export_failed", f"could not decimate {mesh.n_faces} faces to {max_faces}")
    _, nearest = cKDTree(source).query(points)
    colors = mesh.colors[nearest]
    # Collapses can leave zero-area slivers; a last weld keeps the output clean.
    return clean_mesh(MeshArrays(points.astype(np.float32), faces.astype(np.int32), colors))


def orient_for_gltf(mesh: MeshArrays) -> MeshArrays:
    """Rotate from TripoSR's native frame (Z up) to glTF's (Y up); a proper rotation, winding kept."""
    vertices = mesh.vertices.astype(np.float64) @ NATIVE_TO_GLTF.T
    return MeshArrays(vertices.astype(np.float32), mesh.faces, mesh.colors)


def choose_scale(extents: np.ndarray, dimensions: Dimensions | None,
                 default_largest_m: float = DEFAULT_LARGEST_EXTENT_M) -> ScaleChoice:
    """Uniform metres-per-unit for a Y-up mesh of bbox `extents` (x, y, z).

    Height wins when given (it is what shoppers measure and it is unambiguous); else the largest
    given of width/depth matches the mesh's largest horizontal extent (we cannot tell which
    horizontal axis is the product's front); else the largest extent becomes `default_largest_m`.
    """
    if not np.all(np.isfinite(extents)) or extents.max() <= 0:
        raise JobRejected("empty_mesh", "the mesh has no extent to scale")
    if dimensions is not None:
        if dimensions.height_m is not None and extents[1] > 0:
            return ScaleChoice(dimensions.height_m / float(extents[1]), "height")
        horizontal = [d for d in (dimensions.width_m, dimensions.depth_m) if d is not None]
        mesh_horizontal = float(max(extents[0], extents[2]))
        if horizontal and mesh_horizontal > 0:
            return ScaleChoice(max(horizontal) / mesh_horizontal, "largest_horizontal")
    return ScaleChoice(default_largest_m / float(extents.max()), "default")


def scale_and_place(mesh: MeshArrays, factor: float) -> MeshArrays:
    """Scale uniformly by `factor`, then centre x and z on 0 and rest the lowest point on y = 0."""
    vertices = mesh.vertices.astype(np.float64) * factor
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    offset = np.array([(low[0] + high[0]) / 2, low[1], (low[2] + high[2]) / 2])
    return MeshArrays((vertices - offset).astype(np.float32), mesh.faces, mesh.colors)


def compute_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals, float32 (V, 3); isolated or cancelled vertices get +Y."""
    v = vertices.astype(np.float64)
    face_normals = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    normals = np.zeros_like(v)
    for corner in range(3):  # the cross product's length is 2x area: area weighting for free
        np.add.at(normals, faces[:, corner], face_normals)
    lengths = np.linalg.norm(normals, axis=1)
    unset = lengths < 1e-20
    normals[unset] = (0.0, 1.0, 0.0)
    lengths[unset] = 1.0
    unit: np.ndarray = (normals / lengths[:, None]).astype(np.float32)
    return unit
