"""The poster: a PNG of the model from a three-quarter front view on a transparent background.

Rendered by our numpy rasteriser (`pipeline.raster`): z-buffered triangles, Lambert shading of the
vertex colours or the baked texture, alpha from coverage, supersampled for smooth edges. It needs no
GPU, display, EGL or OSMesa, so every CPU replica renders the same picture; pyrender + OSMesa would
add a system library and a GL stack to every image for a model this simple to light.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.export import srgb_to_linear
from pipeline.geometry import compute_vertex_normals
from pipeline.mesh_arrays import MeshArrays
from pipeline.raster import rasterize
from pipeline.texture import TexturedMesh, sample_texture


@dataclass(frozen=True)
class PosterView:
    """Camera and light for the poster; angles in degrees, the object framed with `margin` each side.

    Azimuth 0 looks from +Z (glTF's front, where <model-viewer> puts its camera) and turns towards +X.
    """

    azimuth_deg: float = 30.0
    elevation_deg: float = 20.0
    field_of_view_deg: float = 30.0
    margin: float = 0.08       # fraction of the image side left empty around the object
    supersample: int = 3       # rendered at size * supersample, then box-filtered: antialiasing
    ambient: float = 0.35      # light that reaches every surface; the rest comes from the key light
    key_light: tuple[float, float, float] = (-0.4, 0.7, 0.6)  # camera frame: upper left, in front


def _camera_axes(view: PosterView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit (right, up, backward) vectors of the camera; backward points from the object to the camera."""
    azimuth, elevation = np.radians(view.azimuth_deg), np.radians(view.elevation_deg)
    backward = np.array([np.sin(azimuth) * np.cos(elevation), np.sin(elevation), np.cos(azimuth) * np.cos(elevation)])
    right = np.cross([0.0, 1.0, 0.0], backward)
    right /= np.linalg.norm(right)
    return right, np.cross(backward, right), backward


def project(vertices: np.ndarray, view: PosterView, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Perspective projection framed to fill pixels² minus the margin -> (xy (V, 2) pixels, depth (V,))."""
    right, up, backward = _camera_axes(view)
    v = vertices.astype(np.float64)
    centre = (v.min(axis=0) + v.max(axis=0)) / 2
    radius = max(float(np.linalg.norm(v - centre, axis=1).max()), 1e-9)
    distance = radius / np.sin(np.radians(view.field_of_view_deg) / 2)
    relative = v - centre
    depth = distance - relative @ backward
    screen = np.stack([relative @ right, relative @ up], axis=1) / depth[:, None]
    low, high = screen.min(axis=0), screen.max(axis=0)
    scale = pixels * (1 - 2 * view.margin) / max(float((high - low).max()), 1e-12)
    middle = (low + high) / 2
    xy = np.empty_like(screen)
    xy[:, 0] = pixels / 2 + (screen[:, 0] - middle[0]) * scale
    xy[:, 1] = pixels / 2 - (screen[:, 1] - middle[1]) * scale  # image rows run downwards
    return xy, depth


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """float linear [0, 1] -> float sRGB-encoded [0, 1] (IEC 61966-2-1), the inverse of srgb_to_linear."""
    c = np.clip(linear, 0.0, 1.0)
    encoded: np.ndarray = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return encoded


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


def render_image(model: MeshArrays | TexturedMesh, size: int = 512, view: PosterView = PosterView()) -> np.ndarray:
    """RGBA uint8 (size, size, 4) poster image, straight (not premultiplied) alpha; ValueError on no faces."""
    mesh = model.mesh if isinstance(model, TexturedMesh) else model
    if mesh.n_faces == 0:
        raise ValueError("cannot render a mesh without triangles")
    if size < 8 or view.supersample < 1:
        raise ValueError(f"size must be >= 8 and supersample >= 1, got {size}, {view.supersample}")
    pixels = size * view.supersample
    xy, depth = project(mesh.vertices, view, pixels)
    fragments = rasterize(xy, mesh.faces, pixels, pixels, depth)
    normals = model.normals if isinstance(model, TexturedMesh) else compute_vertex_normals(mesh.vertices,
                                                                                         mesh.faces)
    normal = np.einsum("nc,ncx->nx", fragments.bary, normals[mesh.faces[fragments.faces]].astype(np.float64))
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    right, up, backward = _camera_axes(view)
    light = np.array(view.key_light) @ np.stack([right, up, backward])
    light /= np.linalg.norm(light)
    # Two-sided: a normal facing away (an open edge seen from behind) is lit as if it faced us.
    facing = np.where((normal @ backward)[:, None] < 0, -normal, normal)
    shade = view.ambient + (1 - view.ambient) * np.clip(facing @ light, 0.0, 1.0)
    color = _albedo(model, fragments.faces, fragments.bary) * shade[:, None]
    premultiplied = np.zeros((pixels, pixels, 4))
    premultiplied[fragments.rows, fragments.cols, :3] = linear_to_srgb(color)
    premultiplied[fragments.rows, fragments.cols, 3] = 1.0
    # Box-filter each supersample block; averaging premultiplied colour keeps edges free of dark fringes.
    s = view.supersample
    pooled = premultiplied.reshape(size, s, size, s, 4).mean(axis=(1, 3))
    alpha = pooled[..., 3:]
    rgb = np.where(alpha > 0, pooled[..., :3] / np.maximum(alpha, 1e-12), 0.0)
    return np.round(np.concatenate([rgb, alpha], axis=2) * 255).astype(np.uint8)


def render_poster(model: MeshArrays | TexturedMesh, size: int = 512, view: PosterView = PosterView()) -> bytes:
    """PNG bytes of `render_image`: the poster <model-viewer> shows while the model loads."""
    buffer = io.BytesIO()
    Image.fromarray(render_image(model, size, view), "RGBA").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
