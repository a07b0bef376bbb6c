"""The poster drawn by OpenGL through moderngl on a headless EGL context (no display, no GPU needed).

On a CPU node EGL gives Mesa's llvmpipe software rasteriser (Debian: libegl1, libgl1-mesa-dri);
where a GPU driver provides EGL it is used instead. The camera, light and framing come from
`pipeline.assets.poster.view`, so this draws the same picture as the numpy fallback, in milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.assets.colors import srgb_to_linear
from pipeline.assets.poster.view import (
    PosterView,
    camera_axes,
    check_renderable,
    downsample_premultiplied,
    light_direction,
    project,
    surface_normals,
)
from pipeline.assets.texture import TexturedMesh
from pipeline.mesh_arrays import MeshArrays

VERTEX_SHADER = """
#version 330
in vec4 in_clip;    // clip-space position; w is the depth along the view axis
in vec3 in_normal;
in vec3 in_albedo;  // linear base colour (vertex-coloured meshes)
in vec2 in_uv;      // glTF texture coordinates, (0, 0) at the texture's top-left (textured meshes)
out vec3 normal;
out vec3 albedo;
out vec2 uv;
void main() {
    gl_Position = in_clip;
    normal = in_normal;
    albedo = in_albedo;
    uv = in_uv;
}
"""

FRAGMENT_SHADER = """
#version 330
uniform vec3 backward;  // world direction from the object towards the camera
uniform vec3 light;     // world direction towards the key light
uniform float ambient;
uniform bool textured;
uniform sampler2D base_color;
in vec3 normal;
in vec3 albedo;
in vec2 uv;
out vec4 fragment;
vec3 srgb_to_linear(vec3 c) { return mix(c / 12.92, pow((c + 0.055) / 1.055, vec3(2.4)), step(0.04045, c)); }
vec3 linear_to_srgb(vec3 c) {
    c = clamp(c, 0.0, 1.0);
    return mix(c * 12.92, 1.055 * pow(c, vec3(1.0 / 2.4)) - 0.055, step(0.0031308, c));
}
void main() {
    vec3 n = normalize(normal);
    if (dot(n, backward) < 0.0) n = -n;  // two-sided: an open edge seen from behind is lit as if facing us
    float shade = ambient + (1.0 - ambient) * clamp(dot(n, light), 0.0, 1.0);
    vec3 base = textured ? srgb_to_linear(texture(base_color, uv).rgb) : albedo;
    fragment = vec4(linear_to_srgb(base * shade), 1.0);  // covered: opaque; the clear colour is (0, 0, 0, 0)
}
"""


def create_context() -> Any:
    """A headless moderngl context on EGL; raises (ImportError, or moderngl's Exception) where there is none."""
    import moderngl  # a soft dependency: the numpy renderer covers nodes without it

    # moderngl's stub types every **settings value as a dict; "backend" takes a string.
    return moderngl.create_standalone_context(backend="egl")  # type: ignore[arg-type]


def clip_coordinates(vertices: np.ndarray, view: PosterView, pixels: int) -> np.ndarray:
    """float32 (V, 4) clip-space positions whose perspective divide lands where `project` puts each vertex.

    w = depth keeps attribute interpolation perspective-correct; z maps [near, far] to [-1, 1] as a
    standard perspective matrix does, with near and far bracketing the object.
    """
    xy, depth = project(vertices, view, pixels)
    near, far = 0.5 * float(depth.min()), 1.5 * float(depth.max())
    ndc_x = 2 * xy[:, 0] / pixels - 1
    ndc_y = 1 - 2 * xy[:, 1] / pixels  # GL's y points up, image rows down
    clip_z = (far + near) / (far - near) * depth - 2 * far * near / (far - near)
    return np.stack([ndc_x * depth, ndc_y * depth, clip_z, depth], axis=1).astype(np.float32)


def _vertex_data(model: MeshArrays | TexturedMesh, mesh: MeshArrays, view: PosterView, pixels: int) -> np.ndarray:
    """Interleaved float32 (V, 12) rows: clip position, normal, linear albedo, uv."""
    uvs = model.uvs if isinstance(model, TexturedMesh) else np.zeros((mesh.n_vertices, 2))
    return np.concatenate([clip_coordinates(mesh.vertices, view, pixels), surface_normals(model),
                           srgb_to_linear(mesh.colors), uvs], axis=1).astype(np.float32)


def render_image_gl(model: MeshArrays | TexturedMesh, size: int, view: PosterView) -> tuple[np.ndarray, str]:
    """(RGBA uint8 (size, size, 4) straight alpha, the GL renderer's name); ValueError on no faces."""
    import moderngl

    mesh = check_renderable(model, size, view)
    pixels = size * view.supersample
    ctx = create_context()
    try:
        program = ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        program["backward"].value = tuple(camera_axes(view)[2])
        program["light"].value = tuple(light_direction(view))
        program["ambient"].value = view.ambient
        program["textured"].value = isinstance(model, TexturedMesh)
        if isinstance(model, TexturedMesh):
            texture = ctx.texture(model.texture.shape[1::-1], 3, np.ascontiguousarray(model.texture[..., :3]).tobytes(),
                                  alignment=1)
            texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
            texture.repeat_x = texture.repeat_y = False  # clamp to edge, as the bake's sampler does
            texture.use(location=0)
            program["base_color"].value = 0
        vertices = ctx.buffer(_vertex_data(model, mesh, view, pixels).tobytes())
        indices = ctx.buffer(mesh.faces.astype(np.int32).tobytes())
        array = ctx.vertex_array(program, [(vertices, "4f 3f 3f 2f", "in_clip", "in_normal", "in_albedo", "in_uv")],
                                 index_buffer=indices, index_element_size=4)
        framebuffer = ctx.framebuffer(color_attachments=[ctx.renderbuffer((pixels, pixels), 4)],
                                      depth_attachment=ctx.depth_renderbuffer((pixels, pixels)))
        framebuffer.use()
        ctx.enable(moderngl.DEPTH_TEST)  # no face culling: both sides are drawn
        framebuffer.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        array.render(moderngl.TRIANGLES)
        rows = np.frombuffer(framebuffer.read(components=4, alignment=1), np.uint8).reshape(pixels, pixels, 4)
        renderer = str(ctx.info["GL_RENDERER"])
    finally:
        ctx.release()
    # GL reads bottom row first; alpha is 0 or 1, so the colour is already premultiplied.
    premultiplied = rows[::-1].astype(np.float64) / 255.0
    return downsample_premultiplied(premultiplied, view.supersample), renderer
