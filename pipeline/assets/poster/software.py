"""The poster drawn by our numpy rasteriser: the fallback where no EGL or OpenGL driver is installed.

Z-buffered triangles from `pipeline.assets.raster`, Lambert shading of the vertex colours or the baked
texture, alpha from coverage, supersampled. Slower than GL (seconds, not milliseconds, per poster)
but needs nothing beyond numpy, so a node without Mesa still publishes a poster.
"""

from __future__ import annotations

import numpy as np

from pipeline.assets.colors import linear_to_srgb, srgb_to_linear
from pipeline.assets.poster.view import (
    PosterView,
    camera_axes,
    check_renderable,
    downsample_premultiplied,
    light_direction,
    project,
    surface_normals,
)
from pipeline.assets.raster import rasterize
from pipeline.assets.texture import TexturedMesh, sample_texture
from pipeline.mesh_arrays import MeshArrays


def _albedo(model: MeshArrays | TexturedMesh, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Linear base colour (N, 3) at each fragment, from the texture or the vertex colours."""
    mesh = model.mesh if isinstance(model, TexturedMesh) else model
    corners = mesh.faces[faces]
    if isinstance(model, TexturedMesh):
        uvs = np.einsum("nc,ncu->nu", bary, model.uvs[corners].astype(np.float64))
        return srgb_to_linear(np.round(sample_texture(model.texture, uvs)).astype(np.uint8)).astype(np.float64)
    linear = srgb_to_linear(mesh.colors).astype(np.float64)  # interpolate in light, as a GPU does
    albedo: np.ndarray = np.einsum("nc,ncr->nr", bary, linear[corners])
    return albedo


def render_image_software(model: MeshArrays | TexturedMesh, size: int, view: PosterView) -> np.ndarray:
    """RGBA uint8 (size, size, 4) poster image, straight alpha; ValueError on no faces."""
    mesh = check_renderable(model, size, view)
    pixels = size * view.supersample
    xy, depth = project(mesh.vertices, view, pixels)
    fragments = rasterize(xy, mesh.faces, pixels, pixels, depth)
    normals = surface_normals(model)
    normal = np.einsum("nc,ncx->nx", fragments.bary, normals[mesh.faces[fragments.faces]].astype(np.float64))
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    backward = camera_axes(view)[2]
    # Two-sided: a normal facing away (an open edge seen from behind) is lit as if it faced us.
    facing = np.where((normal @ backward)[:, None] < 0, -normal, normal)
    shade = view.ambient + (1 - view.ambient) * np.clip(facing @ light_direction(view), 0.0, 1.0)
    color = _albedo(model, fragments.faces, fragments.bary) * shade[:, None]
    premultiplied = np.zeros((pixels, pixels, 4))
    premultiplied[fragments.rows, fragments.cols, :3] = linear_to_srgb(color)
    premultiplied[fragments.rows, fragments.cols, 3] = 1.0
    return downsample_premultiplied(premultiplied, view.supersample)
