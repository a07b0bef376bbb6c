"""Texture bake: xatlas atlas, UV rasterisation, colour lookup in the native frame, filled borders, and
the textured GLB (baseColorTexture + TEXCOORD_0) under the Khronos validator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from pipeline.assets.bundle import ExportFrame, prepare_with_frame
from pipeline.assets.geometry import NATIVE_TO_GLTF
from pipeline.assets.glb import to_textured_glb
from pipeline.assets.texture import TexturedMesh, bake_texture, chart_padding, fill_empty_texels, sample_texture
from pipeline.mesh_arrays import MeshArrays
from tests.test_export import assert_valid, gltf_json, load_glb
from tests.test_geometry import ellipsoid_mesh


def native_color(points: np.ndarray) -> np.ndarray:
    """A smooth analytic colour field over the native frame (TripoSR's box is [-0.87, 0.87]³)."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return np.stack([0.5 + 0.5 * np.tanh(2 * z), 0.5 + 0.4 * np.sin(3 * x), 0.5 + 0.4 * np.cos(2 * y)], axis=1)


def surface_samples(textured: TexturedMesh, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random points inside random faces: (positions (N, 3), uvs (N, 2))."""
    rng = np.random.default_rng(seed)
    faces = textured.mesh.faces[rng.integers(0, textured.mesh.n_faces, count)]
    weights = rng.dirichlet([1.0, 1.0, 1.0], count)
    positions = np.einsum("nc,ncx->nx", weights, textured.mesh.vertices[faces].astype(np.float64))
    uvs = np.einsum("nc,ncu->nu", weights, textured.uvs[faces].astype(np.float64))
    return positions, uvs


@pytest.fixture(scope="module")
def placed() -> tuple[MeshArrays, ExportFrame]:
    mesh, _, frame = prepare_with_frame(ellipsoid_mesh(40), 4000, None)
    return mesh, frame


@pytest.fixture(scope="module")
def baked(placed: tuple[MeshArrays, ExportFrame]) -> TexturedMesh:
    mesh, frame = placed
    return bake_texture(mesh, 512, native_color, frame.to_native)


def test_export_frame_inverts_the_placement() -> None:
    native = ellipsoid_mesh(32)
    mesh, scale, frame = prepare_with_frame(native, 100_000, None)
    assert frame.factor == scale.factor
    # Without decimation every exported vertex is a cleaned native vertex: the map must land on it.
    back = frame.to_native(mesh.vertices)
    forward = frame.factor * back @ NATIVE_TO_GLTF.T - np.array(frame.offset)
    np.testing.assert_allclose(forward, mesh.vertices, atol=1e-6)
    native_points = native.vertices.astype(np.float64)
    distance = np.min(np.linalg.norm(back[:200, None, :] - native_points[None], axis=2), axis=1)
    assert distance.max() < 1e-5


def test_baked_texture_matches_the_colour_function_at_surface_points(
        placed: tuple[MeshArrays, ExportFrame], baked: TexturedMesh) -> None:
    _, frame = placed
    positions, uvs = surface_samples(baked, 4000)
    expected = native_color(frame.to_native(positions)) * 255
    got = sample_texture(baked.texture, uvs)
    error = np.abs(got - expected)
    assert error.mean() < 2.0, error.mean()
    assert np.percentile(error, 99) < 8.0


def test_bake_uses_the_native_frame_not_the_export_frame(placed: tuple[MeshArrays, ExportFrame],
                                                         baked: TexturedMesh) -> None:
    # Red follows native z, which is glTF y (up): the texture must be red at the top, not the front.
    positions, uvs = surface_samples(baked, 2000, seed=1)
    red = sample_texture(baked.texture, uvs)[:, 0]
    assert np.corrcoef(positions[:, 1], red)[0, 1] > 0.9


def test_layout_seams_uvs_and_normals(placed: tuple[MeshArrays, ExportFrame], baked: TexturedMesh) -> None:
    mesh, _ = placed
    assert baked.texture.shape == (512, 512, 3) and baked.texture.dtype == np.uint8
    assert baked.mesh.n_faces == mesh.n_faces and baked.mesh.n_vertices >= mesh.n_vertices  # split at seams
    assert baked.uvs.shape == (baked.mesh.n_vertices, 2)
    assert baked.uvs.min() >= 0.0 and baked.uvs.max() <= 1.0
    np.testing.assert_allclose(np.linalg.norm(baked.normals, axis=1), 1.0, atol=1e-5)
    # A seam vertex keeps its unsplit normal: copies at one position share one normal.
    _, first, inverse = np.unique(baked.mesh.vertices, axis=0, return_index=True, return_inverse=True)
    np.testing.assert_allclose(baked.normals, baked.normals[first][inverse.ravel()], atol=1e-6)


def test_no_gray_or_black_texels_bleed_in(baked: TexturedMesh) -> None:
    # Every texel (padding included) holds a surface colour; the analytic field never goes near black.
    assert baked.texture.min(axis=2).min() > 0.05 * 255
    assert chart_padding(2048) == 8 and chart_padding(256) == 2


def test_fill_empty_texels_copies_the_nearest_covered_value() -> None:
    image = np.zeros((5, 5, 3), dtype=np.uint8)
    covered = np.zeros((5, 5), dtype=bool)
    image[0, 0], covered[0, 0] = (200, 10, 10), True
    image[4, 4], covered[4, 4] = (10, 10, 200), True
    filled = fill_empty_texels(image, covered)
    assert tuple(filled[1, 0]) == (200, 10, 10) and tuple(filled[3, 4]) == (10, 10, 200)
    assert tuple(filled[0, 0]) == (200, 10, 10)
    with pytest.raises(ValueError):
        fill_empty_texels(image, np.zeros((5, 5), dtype=bool))


def test_vertex_colour_bake_reproduces_the_vertex_colours(placed: tuple[MeshArrays, ExportFrame]) -> None:
    mesh, _ = placed
    textured = bake_texture(mesh, 512)
    at_vertices = sample_texture(textured.texture, textured.uvs)
    error = np.abs(at_vertices - textured.mesh.colors.astype(np.float64))
    assert np.median(error) < 3.0 and np.percentile(error, 95) < 12.0


def test_textured_glb_is_valid_and_round_trips(baked: TexturedMesh) -> None:
    glb = to_textured_glb(baked)
    document = gltf_json(glb)
    (primitive,) = document["meshes"][0]["primitives"]
    assert set(primitive["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}  # no COLOR_0 to tint it
    material = document["materials"][primitive["material"]]
    assert material["pbrMetallicRoughness"]["baseColorTexture"] == {"index": 0}
    assert document["images"][0]["mimeType"] == "image/png"
    assert "target" not in document["bufferViews"][document["images"][0]["bufferView"]]
    assert_valid(glb)
    reloaded = load_glb(glb)
    np.testing.assert_allclose(reloaded.vertices, baked.mesh.vertices, atol=1e-7)
    visual = reloaded.visual
    assert isinstance(visual, trimesh.visual.TextureVisuals)
    assert isinstance(visual.material, trimesh.visual.material.PBRMaterial)
    # trimesh converts glTF's top-left UV origin to OpenGL's bottom-left one on load.
    flipped = np.stack([baked.uvs[:, 0], 1.0 - baked.uvs[:, 1]], axis=1)
    np.testing.assert_allclose(visual.uv, flipped, atol=1e-6)
    assert visual.material.baseColorTexture is not None
    image = np.asarray(visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(image, baked.texture)


def test_a_gltf_loader_reads_the_baked_colours(placed: tuple[MeshArrays, ExportFrame], baked: TexturedMesh) -> None:
    """trimesh samples the texture by its own reading of glTF's UV convention: orientation check."""
    _, frame = placed
    reloaded = load_glb(to_textured_glb(baked))
    assert isinstance(reloaded.visual, trimesh.visual.TextureVisuals)
    colour_visuals = reloaded.visual.to_color()  # type: ignore[no-untyped-call]
    seen = np.asarray(colour_visuals.vertex_colors)[:, :3].astype(np.float64)
    expected = native_color(frame.to_native(reloaded.vertices)) * 255
    assert np.median(np.abs(seen - expected)) < 4.0


def test_bake_rejects_bad_input(placed: tuple[MeshArrays, ExportFrame]) -> None:
    mesh, _ = placed
    with pytest.raises(ValueError, match="at least 16"):
        bake_texture(mesh, 8)
    with pytest.raises(ValueError, match="color_fn returned"):
        bake_texture(mesh, 64, lambda points: np.zeros((3, 3)))


def test_bake_from_the_tiny_triposr_colour_field(tiny_fixture_dir: Path) -> None:
    """The product's colour field (ColorField, the model's decoder detached): texels equal model.query
    colours at their native surface points."""
    from pipeline.isosurface.extraction import extract_mesh
    from pipeline.model import load_pretrained
    from pipeline.model.color_field import ColorField

    model = load_pretrained(str(tiny_fixture_dir))
    scene_code = torch.from_numpy(np.load(tiny_fixture_dir / "reference.npz")["scene_codes"][0])
    with torch.no_grad():
        native = extract_mesh(model, scene_code, 48)
    mesh, _, frame = prepare_with_frame(native, 3000, None)
    textured = bake_texture(mesh, 256, ColorField.from_model(model, scene_code), frame.to_native)
    positions, uvs = surface_samples(textured, 1000, seed=2)
    with torch.no_grad():
        _, color = model.query(scene_code, torch.from_numpy(frame.to_native(positions)).float())
    error = np.abs(sample_texture(textured.texture, uvs) - color.numpy() * 255)
    assert np.median(error) < 3.0, np.median(error)
    assert_valid(to_textured_glb(textured))
