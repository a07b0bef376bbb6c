"""The poster: a PNG of the model from a three-quarter front view on a transparent background.

Drawn by OpenGL on a headless EGL context (`pipeline.assets.poster.gl`: Mesa's llvmpipe on a CPU node, no
display or GPU). A node without EGL falls back, with a warning, to the numpy rasteriser
(`pipeline.assets.poster.software`), which draws the same view; the PNG's `Software` text says which drew it.
"""

from __future__ import annotations

import functools
import io
import logging
from typing import Literal

import numpy as np
from PIL import Image, PngImagePlugin

from pipeline.assets.poster.gl import create_context, render_image_gl
from pipeline.assets.poster.software import render_image_software
from pipeline.assets.poster.view import PosterView
from pipeline.assets.texture import TexturedMesh
from pipeline.mesh_arrays import MeshArrays

__all__ = ["SOFTWARE_RENDERER_NAME", "PosterView", "Renderer", "gl_unavailable_reason", "render_image_with",
           "render_poster"]

logger = logging.getLogger(__name__)

# auto: GL where EGL works, else numpy; gl: GL or an error; software: numpy only.
Renderer = Literal["auto", "gl", "software"]
SOFTWARE_RENDERER_NAME = "shop3d numpy rasteriser"


@functools.cache
def gl_unavailable_reason() -> str | None:
    """None when a headless GL context can be made in this process, else why not (probed once)."""
    try:
        create_context().release()
    except Exception as exc:  # ImportError, or moderngl's own Exception when EGL or a driver is missing
        logger.warning("poster: no headless GL (%s: %s); drawing posters with the numpy rasteriser",
                       type(exc).__name__, exc)
        return f"{type(exc).__name__}: {exc}"
    return None


def render_image_with(model: MeshArrays | TexturedMesh, size: int = 512, view: PosterView = PosterView(),
                      renderer: Renderer = "auto") -> tuple[np.ndarray, str]:
    """(RGBA uint8 (size, size, 4) straight alpha, name of what drew it); ValueError on no faces.

    RuntimeError when `renderer="gl"` and this process has no headless GL.
    """
    if renderer == "software" or (renderer == "auto" and gl_unavailable_reason() is not None):
        return render_image_software(model, size, view), SOFTWARE_RENDERER_NAME
    if renderer == "gl" and (reason := gl_unavailable_reason()) is not None:
        raise RuntimeError(f"no headless GL for the poster: {reason}")
    return render_image_gl(model, size, view)


def render_poster(model: MeshArrays | TexturedMesh, size: int = 512, view: PosterView = PosterView(),
                  renderer: Renderer = "auto") -> bytes:
    """PNG bytes of the poster <model-viewer> shows while the model loads; `Software` names the renderer."""
    image, drawn_by = render_image_with(model, size, view, renderer)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", drawn_by)
    buffer = io.BytesIO()
    Image.fromarray(image, "RGBA").save(buffer, format="PNG", optimize=True, pnginfo=info)
    return buffer.getvalue()
