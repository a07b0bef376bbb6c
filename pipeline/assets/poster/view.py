"""The poster's camera, light and framing, shared by its two renderers (GL and numpy).

Pure math: where each vertex lands in a square image, where the light comes from, the surface
attributes to shade, and the box filter that turns a supersampled image into the poster. Neither
renderer decides any of this itself, so both draw the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.assets.geometry import compute_vertex_normals
from pipeline.assets.texture import TexturedMesh
from pipeline.mesh_arrays import MeshArrays


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


def camera_axes(view: PosterView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit (right, up, backward) vectors of the camera; backward points from the object to the camera."""
    azimuth, elevation = np.radians(view.azimuth_deg), np.radians(view.elevation_deg)
    backward = np.array([np.sin(azimuth) * np.cos(elevation), np.sin(elevation), np.cos(azimuth) * np.cos(elevation)])
    right = np.cross([0.0, 1.0, 0.0], backward)
    right /= np.linalg.norm(right)
    return right, np.cross(backward, right), backward


def light_direction(view: PosterView) -> np.ndarray:
    """Unit world-space vector towards the key light (given in the camera frame)."""
    right, up, backward = camera_axes(view)
    light: np.ndarray = np.array(view.key_light) @ np.stack([right, up, backward])
    unit: np.ndarray = light / np.linalg.norm(light)
    return unit


def project(vertices: np.ndarray, view: PosterView, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Perspective projection framed to fill pixels² minus the margin -> (xy (V, 2) pixels, depth (V,)).

    xy is already divided by depth (rows run downwards); depth is the distance along the view axis.
    """
    right, up, backward = camera_axes(view)
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


def surface_normals(model: MeshArrays | TexturedMesh) -> np.ndarray:
    """Unit per-vertex normals (V, 3): the texture's own (from before its seam split) or computed."""
    if isinstance(model, TexturedMesh):
        return model.normals
    return compute_vertex_normals(model.vertices, model.faces)


def check_renderable(model: MeshArrays | TexturedMesh, size: int, view: PosterView) -> MeshArrays:
    """The mesh to draw; ValueError when there is nothing to draw or the image is too small."""
    mesh = model.mesh if isinstance(model, TexturedMesh) else model
    if mesh.n_faces == 0:
        raise ValueError("cannot render a mesh without triangles")
    if size < 8 or view.supersample < 1:
        raise ValueError(f"size must be >= 8 and supersample >= 1, got {size}, {view.supersample}")
    return mesh


def downsample_premultiplied(premultiplied: np.ndarray, supersample: int) -> np.ndarray:
    """float (S·s, S·s, 4) premultiplied RGBA in [0, 1] -> uint8 (S, S, 4) straight alpha.

    Averaging premultiplied colour over each s×s block keeps silhouettes free of dark fringes.
    """
    size = premultiplied.shape[0] // supersample
    pooled = premultiplied.reshape(size, supersample, size, supersample, 4).mean(axis=(1, 3))
    alpha = pooled[..., 3:]
    rgb = np.where(alpha > 0, pooled[..., :3] / np.maximum(alpha, 1e-12), 0.0)
    image: np.ndarray = np.round(np.clip(np.concatenate([rgb, alpha], axis=2), 0.0, 1.0) * 255).astype(np.uint8)
    return image
