"""Baked colour textures: an xatlas UV atlas, texels rasterised in UV space, colours looked up, borders filled.

Upstream's --bake-texture (SPEC §12) needs an OpenGL context and writes OBJ text into a `.glb`; here
the atlas is rasterised in numpy (headless anywhere) and the result is a `TexturedMesh` that the GLB
and USDZ writers both take. Texture rows follow glTF: uv (0, 0) is the first pixel of the first row,
so no flip is needed for glTF (USD's st flips v at its own writer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.assets.geometry import compute_vertex_normals
from pipeline.assets.raster import rasterize
from pipeline.errors import JobRejected
from pipeline.mesh_arrays import MeshArrays

logger = logging.getLogger(__name__)

ColorFunction = Callable[[np.ndarray], np.ndarray]
"""(N, 3) points in the model's native frame -> (N, 3) RGB floats in [0, 1], display-encoded like TripoSR's."""

PointMap = Callable[[np.ndarray], np.ndarray]
"""(N, 3) points in the mesh's frame -> (N, 3) points in the frame the ColorFunction expects."""


@dataclass(frozen=True)
class TexturedMesh:
    """A mesh split at UV seams, with per-vertex normals from before the split and its baked texture.

    mesh: the split mesh (colors = source vertex colours); normals float32 (V, 3) unit; uvs float32
    (V, 2) in [0, 1] with (0, 0) the texture's top-left texel corner; texture uint8 (S, S, 3) sRGB.
    """

    mesh: MeshArrays
    normals: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray

    @property
    def texture_size(self) -> int:
        return int(self.texture.shape[0])


@dataclass(frozen=True)
class UVLayout:
    """xatlas' answer: output vertex i copies input vertex vertex_map[i]; faces index output vertices."""

    vertex_map: np.ndarray  # int64 (V',)
    faces: np.ndarray       # int32 (F, 3)
    uvs: np.ndarray         # float32 (V', 2) in [0, 1]


def chart_padding(texture_size: int) -> int:
    """Texels between charts: upstream's round(max(2, size / 256)), enough for the mip levels viewers use."""
    return round(max(2.0, texture_size / 256))


def unwrap_uv(mesh: MeshArrays, texture_size: int) -> UVLayout:
    """One UV atlas for `mesh` sized for a texture_size² texture; raises `export_failed` on xatlas failure."""
    import xatlas  # a compiled wheel; imported here so the module loads where only vertex colours are used

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(mesh.vertices, dtype=np.float32),
                   np.ascontiguousarray(mesh.faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = chart_padding(texture_size)
    pack.bilinear = True
    pack.blockAlign = True  # packs faster and a little tighter on TripoSR meshes (measured)
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise JobRejected("export_failed", f"UV unwrap produced {atlas.atlas_count} atlases, expected one")
    vertex_map, faces, uvs = atlas[0]
    return UVLayout(vertex_map=vertex_map.astype(np.int64), faces=faces.astype(np.int32),
                    uvs=np.clip(uvs, 0.0, 1.0).astype(np.float32))


def fill_empty_texels(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Copy into every uncovered texel the value of its nearest covered one.

    Bilinear filtering and mip-mapping read texels outside a chart's triangles; left black (or
    upstream's RGBA 0) they bleed dark seams into the model. Raises ValueError if nothing is covered.
    """
    if not covered.any():
        raise ValueError("no texel is covered; nothing to fill from")
    nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    filled: np.ndarray = image[nearest[0], nearest[1]]
    return filled


def _interpolated_vertex_colors(mesh: MeshArrays, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    corner_colors = mesh.colors[mesh.faces[faces]].astype(np.float64) / 255.0  # (N, 3 corners, RGB)
    colors: np.ndarray = np.einsum("nc,ncr->nr", bary, corner_colors)
    return colors


def bake_texture(mesh: MeshArrays, texture_size: int, color_fn: ColorFunction | None = None,
                 to_native: PointMap | None = None, *, job_id: str = "-") -> TexturedMesh:
    """Unwrap `mesh` and bake a texture_size² colour texture for it.

    With `color_fn`, each texel's colour is looked up at its surface point mapped by `to_native`
    (identity when None); without, the mesh's vertex colours are interpolated (for USDZ viewers
    that ignore vertex colours). Raises ValueError on a size below 16, `export_failed` from xatlas.
    """
    if texture_size < 16:
        raise ValueError(f"texture_size must be at least 16, got {texture_size}")
    layout = unwrap_uv(mesh, texture_size)
    split = MeshArrays(vertices=mesh.vertices[layout.vertex_map], faces=layout.faces,
                       colors=mesh.colors[layout.vertex_map])
    fragments = rasterize(layout.uvs * texture_size, layout.faces, texture_size, texture_size)
    if color_fn is None:
        texel_colors = _interpolated_vertex_colors(split, fragments.faces, fragments.bary)
    else:
        corners = split.vertices[split.faces[fragments.faces]].astype(np.float64)  # (N, 3, 3)
        surface = np.einsum("nc,ncx->nx", fragments.bary, corners)
        native = surface if to_native is None else to_native(surface)
        texel_colors = np.asarray(color_fn(native), dtype=np.float64)
        if texel_colors.shape != (fragments.count, 3):
            raise ValueError(f"color_fn returned {texel_colors.shape}, expected {(fragments.count, 3)}")
    image = np.zeros((texture_size, texture_size, 3), dtype=np.uint8)
    image[fragments.rows, fragments.cols] = np.round(np.clip(texel_colors, 0.0, 1.0) * 255).astype(np.uint8)
    covered = np.zeros((texture_size, texture_size), dtype=bool)
    covered[fragments.rows, fragments.cols] = True
    logger.info("job %s: baked a %d² texture, %d charts' texels covered (%.0f%%)", job_id, texture_size,
                fragments.count, 100.0 * fragments.count / texture_size**2)
    # Normals come from the unsplit mesh: recomputed after the split they would crease at every seam.
    normals = compute_vertex_normals(mesh.vertices, mesh.faces)[layout.vertex_map]
    return TexturedMesh(mesh=split, normals=normals, uvs=layout.uvs, texture=fill_empty_texels(image, covered))


def sample_texture(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinear lookup (clamp to edge) of an (S, S, C) texture at uvs (N, 2) -> float64 (N, C) in texel units."""
    size_y, size_x = texture.shape[:2]
    x = np.clip(uvs[:, 0] * size_x - 0.5, 0.0, size_x - 1.0)
    y = np.clip(uvs[:, 1] * size_y - 0.5, 0.0, size_y - 1.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, size_x - 1), np.minimum(y0 + 1, size_y - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float64)
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bottom = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    result: np.ndarray = top * (1 - fy) + bottom * fy
    return result
