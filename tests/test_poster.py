"""The poster PNG: RGBA, transparent background, the object centred inside a margin, a three-quarter
front view (front, side and top faces all visible), shaded and antialiased, vertex colours or texture.

Every picture test runs on both renderers: headless GL (EGL + Mesa llvmpipe, installed by
scripts/setup) and the numpy fallback; a test also holds the two to the same picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import pipeline.assets.poster.render
from pipeline.assets.bundle import prepare_with_frame
from pipeline.assets.colors import linear_to_srgb, srgb_to_linear
from pipeline.assets.poster.render import (
    SOFTWARE_RENDERER_NAME,
    PosterView,
    Renderer,
    gl_unavailable_reason,
    render_image_with,
    render_poster,
)
from pipeline.assets.texture import TexturedMesh, bake_texture
from pipeline.mesh_arrays import MeshArrays
from tests.test_geometry import ellipsoid_mesh

FACE_COLOURS = {"+z": (220, 30, 30), "+x": (30, 200, 30), "+y": (30, 30, 220),
                "-z": (200, 200, 30), "-x": (200, 30, 200), "-y": (30, 200, 200)}


def coloured_box(size: tuple[float, float, float] = (0.2, 0.3, 0.25)) -> MeshArrays:
    """A box standing on y = 0 (glTF frame), each face its own colour (vertices not shared between faces)."""
    half = np.array(size) / 2
    vertices: list[np.ndarray] = []
    faces: list[list[int]] = []
    colours: list[tuple[int, int, int]] = []
    for name, colour in FACE_COLOURS.items():
        axis = "xyz".index(name[1])
        sign = 1.0 if name[0] == "+" else -1.0
        u, v = [a for a in range(3) if a != axis]
        corners = []
        for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            p = np.zeros(3)
            p[axis], p[u], p[v] = sign * half[axis], du * half[u], dv * half[v]
            corners.append(p)
        base = len(vertices)
        vertices += corners
        colours += [colour] * 4
        quad = [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        # Wind outward: flip when the corner order's normal points inward.
        normal = np.cross(corners[1] - corners[0], corners[2] - corners[0])
        faces += quad if normal[axis] * sign > 0 else [t[::-1] for t in quad]
    array = np.array(vertices, np.float32) + np.array([0, half[1], 0], np.float32)
    return MeshArrays(array, np.array(faces, np.int32), np.array(colours, np.uint8))


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGBA"
    return np.asarray(image)


DEFAULT_VIEW = PosterView()


def draw(model: MeshArrays | TexturedMesh, size: int = 512, view: PosterView = DEFAULT_VIEW,
         renderer: Renderer = "auto") -> np.ndarray:
    """The poster's RGBA image before PNG encoding (straight alpha)."""
    return render_image_with(model, size, view, renderer)[0]


def occupied_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(alpha > 0)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@pytest.fixture(params=["gl", "software"])
def renderer(request: pytest.FixtureRequest) -> Renderer:
    value: Renderer = request.param
    return value


@pytest.fixture(scope="module")
def ellipsoid() -> MeshArrays:
    mesh, _, _ = prepare_with_frame(ellipsoid_mesh(40), 6000, None)
    return mesh


def test_poster_is_rgba_with_a_transparent_background(ellipsoid: MeshArrays, renderer: Renderer) -> None:
    image = decode(render_poster(ellipsoid, size=256, renderer=renderer))
    assert image.shape == (256, 256, 4)
    alpha = image[..., 3]
    for corner in (alpha[:16, :16], alpha[:16, -16:], alpha[-16:, :16], alpha[-16:, -16:]):
        assert corner.max() == 0
    assert 0.1 < np.mean(alpha > 0) < 0.9  # not empty, not a filled square


def test_object_is_framed_inside_the_margin_and_centred(ellipsoid: MeshArrays, renderer: Renderer) -> None:
    size, view = 256, PosterView()
    alpha = draw(ellipsoid, size, view, renderer)[..., 3]
    top, bottom, left, right = occupied_box(alpha)
    margin = int(view.margin * size)
    assert top >= margin - 2 and left >= margin - 2
    assert bottom <= size - margin + 1 and right <= size - margin + 1
    assert max(bottom - top, right - left) >= size * (1 - 2 * view.margin) - 4  # fills the frame
    assert abs((top + bottom) / 2 - size / 2) < size * 0.03
    assert abs((left + right) / 2 - size / 2) < size * 0.03


def test_edges_are_antialiased(ellipsoid: MeshArrays, renderer: Renderer) -> None:
    alpha = draw(ellipsoid, 128, renderer=renderer)[..., 3]
    partial = (alpha > 0) & (alpha < 255)
    assert partial.sum() > 50  # soft silhouette pixels exist ...
    assert partial.sum() < 0.2 * (alpha > 0).sum()  # ... only on the silhouette


def test_three_quarter_front_view_shows_front_side_and_top(renderer: Renderer) -> None:
    image = draw(coloured_box(), 256, renderer=renderer).astype(np.int64)
    visible = image[..., 3] == 255

    def pixels_of(name: str) -> int:
        # Lambert shading scales a colour: compare hue (the colour normalised by its brightest channel).
        colour = np.array(FACE_COLOURS[name], np.float64)
        rgb = image[visible][:, :3].astype(np.float64)
        hue = rgb / np.maximum(rgb.max(axis=1, keepdims=True), 1)
        return int(np.sum(np.abs(hue - colour / colour.max()).max(axis=1) < 0.2))

    front, side, top = pixels_of("+z"), pixels_of("+x"), pixels_of("+y")
    assert front > side > 0 and top > 0  # azimuth 30° from +Z: the front is the larger side face
    for hidden in ("-z", "-x", "-y"):  # a few antialiased red/green edge pixels may read as yellow
        assert pixels_of(hidden) < front / 100


def test_shading_varies_and_colours_are_kept(ellipsoid: MeshArrays, renderer: Renderer) -> None:
    image = draw(ellipsoid, 128, renderer=renderer)
    solid = image[..., 3] == 255
    brightness = image[solid][:, :3].astype(np.float64).mean(axis=1)
    assert brightness.std() > 10  # lit, not flat
    red = MeshArrays(ellipsoid.vertices, ellipsoid.faces,
                     np.tile(np.array([200, 20, 20], np.uint8), (ellipsoid.n_vertices, 1)))
    red_image = draw(red, 64, renderer=renderer)
    pixels = red_image[..., :3][red_image[..., 3] == 255].astype(np.int64)
    assert np.all(pixels[:, 0] > pixels[:, 1] + 40)


def test_textured_and_vertex_coloured_posters_agree(ellipsoid: MeshArrays, renderer: Renderer) -> None:
    plain = draw(ellipsoid, 128, renderer=renderer).astype(np.float64)
    textured = draw(bake_texture(ellipsoid, 512), 128, renderer=renderer).astype(np.float64)
    np.testing.assert_array_equal(plain[..., 3], textured[..., 3])
    solid = plain[..., 3] == 255
    assert np.abs(plain[solid][:, :3] - textured[solid][:, :3]).mean() < 4.0


def test_linear_to_srgb_inverts_srgb_to_linear() -> None:
    values = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(values)) * 255, values, atol=1e-3)


def test_rejects_empty_meshes_and_tiny_sizes(ellipsoid: MeshArrays, renderer: Renderer) -> None:
    empty = MeshArrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8))
    with pytest.raises(ValueError):
        draw(empty, renderer=renderer)
    with pytest.raises(ValueError):
        draw(ellipsoid, 4, renderer=renderer)


def test_headless_gl_is_available_here() -> None:
    """CI must exercise the GL renderer, not silently fall back: scripts/setup installs EGL and Mesa."""
    assert gl_unavailable_reason() is None
    _, drawn_by = render_image_with(coloured_box(), 32, renderer="auto")
    assert drawn_by != SOFTWARE_RENDERER_NAME


@pytest.mark.parametrize("model", ["box", "ellipsoid", "textured"])
def test_gl_and_numpy_renderers_draw_the_same_picture(model: str, ellipsoid: MeshArrays) -> None:
    models: dict[str, MeshArrays | TexturedMesh] = {"box": coloured_box(), "ellipsoid": ellipsoid,
                                                    "textured": bake_texture(ellipsoid, 512)}
    chosen = models[model]
    gl = draw(chosen, 128, renderer="gl").astype(np.int64)
    numpy = draw(chosen, 128, renderer="software").astype(np.int64)
    assert np.mean(gl[..., 3] != numpy[..., 3]) < 0.002  # a few silhouette pixels may round differently
    solid = (gl[..., 3] == 255) & (numpy[..., 3] == 255)
    assert np.abs(gl[solid][:, :3] - numpy[solid][:, :3]).mean() < 1.0


def test_png_names_the_renderer_that_drew_it(ellipsoid: MeshArrays, renderer: Renderer) -> None:
    drawn_by = Image.open(io.BytesIO(render_poster(ellipsoid, 64, renderer=renderer))).info["Software"]
    assert (drawn_by == SOFTWARE_RENDERER_NAME) == (renderer == "software")


def test_without_gl_auto_falls_back_to_numpy_and_gl_is_an_error(ellipsoid: MeshArrays,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A node without EGL (simulated at our own seam, `create_context`) still gets a poster."""
    def no_egl() -> None:
        raise ImportError("libEGL.so.1: cannot open shared object file")

    monkeypatch.setattr(pipeline.assets.poster.render, "create_context", no_egl)
    gl_unavailable_reason.cache_clear()
    try:
        assert "libEGL" in (gl_unavailable_reason() or "")
        image, drawn_by = render_image_with(ellipsoid, 64, renderer="auto")
        assert drawn_by == SOFTWARE_RENDERER_NAME and image[..., 3].max() == 255
        with pytest.raises(RuntimeError, match="no headless GL"):
            draw(ellipsoid, 64, renderer="gl")
    finally:
        gl_unavailable_reason.cache_clear()


def test_gl_posters_drawn_on_several_threads_at_once_are_identical(ellipsoid: MeshArrays) -> None:
    """Publish runs exports in worker threads: each call owns its EGL context, so calls can overlap."""
    from concurrent.futures import ThreadPoolExecutor

    models = [ellipsoid, coloured_box()] * 4
    expected = [draw(model, 96, renderer="gl") for model in models[:2]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        drawn = list(pool.map(lambda model: draw(model, 96, renderer="gl"), models))
    for index, image in enumerate(drawn):
        np.testing.assert_array_equal(image, expected[index % 2])
