"""pipeline.assets.geometry on analytic marching-cubes meshes (PyMCubes) and the tiny fixture's torchmcubes output,
and `bundle.prepare_with_frame`, which runs its steps in order for every job."""

from __future__ import annotations

from typing import Any

import mcubes
import numpy as np
import pytest

from pipeline.assets import geometry
from pipeline.assets.bundle import prepare_with_frame
from pipeline.assets.geometry import Dimensions
from pipeline.errors import JobRejected
from pipeline.mesh_arrays import MeshArrays
from tests.support.paths import TINY_FIXTURE_DIR

RADIUS = 0.87  # TripoSR's grid spans [-0.87, 0.87]^3


def field_to_mesh(field: np.ndarray) -> MeshArrays:
    """Marching cubes at 0 on a field positive inside, mapped to the native box; colour = f(position).

    Red rises with native Z (up), green with X, blue is constant, so tests can check where colours went.
    """
    vertices, faces = mcubes.marching_cubes(field, 0.0)
    vertices = (-RADIUS + 2 * RADIUS * vertices / (field.shape[0] - 1)).astype(np.float32)
    unit = (vertices + RADIUS) / (2 * RADIUS)
    colors = np.stack([unit[:, 2], unit[:, 0], np.full(len(unit), 0.5)], axis=1)
    return MeshArrays(vertices, faces.astype(np.int32), np.round(colors * 255).astype(np.uint8))


def grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = np.linspace(-RADIUS, RADIUS, n)
    return np.meshgrid(axis, axis, axis, indexing="ij")


def ellipsoid_mesh(n: int = 48, semi_axes: tuple[float, float, float] = (0.3, 0.2, 0.5),
                   centre: tuple[float, float, float] = (0.1, -0.05, 0.0)) -> MeshArrays:
    """An ellipsoid in the native frame: tallest along Z (native up), offset from the origin."""
    x, y, z = grid(n)
    field = 1.0 - (((x - centre[0]) / semi_axes[0]) ** 2 + ((y - centre[1]) / semi_axes[1]) ** 2
                   + ((z - centre[2]) / semi_axes[2]) ** 2)
    return field_to_mesh(field)


def fragmented_mesh(n: int = 64) -> MeshArrays:
    """A big sphere plus two tiny floaters, as a density field with noise would give."""
    x, y, z = grid(n)
    big = 0.5 - np.sqrt(x ** 2 + y ** 2 + z ** 2)
    speck_a = 0.06 - np.sqrt((x - 0.7) ** 2 + (y - 0.7) ** 2 + (z - 0.7) ** 2)
    speck_b = 0.06 - np.sqrt((x + 0.7) ** 2 + (y + 0.7) ** 2 + (z - 0.7) ** 2)
    return field_to_mesh(np.maximum(big, np.maximum(speck_a, speck_b)))


def signed_volume(mesh: MeshArrays) -> float:
    v = mesh.vertices.astype(np.float64)
    a, b, c = v[mesh.faces[:, 0]], v[mesh.faces[:, 1]], v[mesh.faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def with_duplicates(mesh: MeshArrays) -> MeshArrays:
    """Re-emit every face's vertices separately, off by float rounding, plus degenerate faces: torchmcubes-like."""
    jitter = np.random.default_rng(0).uniform(-2e-7, 2e-7, size=(mesh.n_faces * 3, 3))
    vertices = mesh.vertices[mesh.faces.ravel()] + jitter
    faces = np.arange(len(vertices), dtype=np.int32).reshape(-1, 3)
    degenerate = np.array([[0, 0, 1], [2, 2, 2]], dtype=np.int32)
    return MeshArrays(vertices.astype(np.float32), np.concatenate([faces, degenerate, faces[:3]]),
                      mesh.colors[mesh.faces.ravel()])


def test_orient_is_the_gradio_transform_on_the_fixture_vertices() -> None:
    reference = np.load(TINY_FIXTURE_DIR / "reference.npz")
    native = MeshArrays(reference["mesh_vertices"], reference["mesh_faces"],
                        reference["mesh_vertex_colors"][:, :3])
    oriented = geometry.orient_for_gltf(native)
    np.testing.assert_allclose(oriented.vertices, reference["mesh_vertices_gradio_orientation"], atol=1e-6)


def test_orient_keeps_winding_outward_and_native_z_becomes_y() -> None:
    mesh = ellipsoid_mesh()
    oriented = geometry.orient_for_gltf(mesh)
    assert signed_volume(mesh) > 0 and signed_volume(oriented) == pytest.approx(signed_volume(mesh), rel=1e-5)
    native_extent = np.ptp(mesh.vertices, axis=0)
    gltf_extent = np.ptp(oriented.vertices, axis=0)
    assert gltf_extent[1] == pytest.approx(native_extent[2], rel=1e-6)  # tall axis is now Y
    assert np.linalg.det(geometry.NATIVE_TO_GLTF) == pytest.approx(1.0)


def test_clean_mesh_welds_duplicates_and_drops_degenerate_faces() -> None:
    mesh = ellipsoid_mesh(32)
    messy = with_duplicates(mesh)
    cleaned = geometry.clean_mesh(messy)
    assert cleaned.n_vertices == mesh.n_vertices
    assert cleaned.n_faces == mesh.n_faces  # 2 degenerate + 3 repeated faces removed
    faces = cleaned.faces
    assert np.all((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2]))
    assert signed_volume(cleaned) == pytest.approx(signed_volume(mesh), rel=1e-5)


def test_clean_mesh_on_torchmcubes_output_of_the_fixture() -> None:
    reference = np.load(TINY_FIXTURE_DIR / "reference.npz")
    raw = MeshArrays(reference["mc_raw_vertices"], reference["mc_raw_faces"],
                     np.round(reference["mc_raw_colors"] * 255).astype(np.uint8))
    cleaned = geometry.clean_mesh(raw)
    # trimesh's exact-ish merge gives 19,913 vertices; welding at 1e-6 x diagonal merges at least as much.
    assert cleaned.n_vertices <= reference["mesh_vertices"].shape[0]
    assert raw.n_faces - 60 < cleaned.n_faces < raw.n_faces  # the 44 degenerate faces (and a few more) go
    assert cleaned.faces.max() < cleaned.n_vertices


def test_drop_small_fragments_removes_floaters_only() -> None:
    mesh = geometry.clean_mesh(fragmented_mesh())
    kept = geometry.drop_small_fragments(mesh)
    assert kept.n_faces < mesh.n_faces
    assert np.abs(kept.vertices).max() < 0.55  # only the central sphere is left
    assert kept.n_faces > 0.95 * mesh.n_faces


def test_drop_small_fragments_keeps_parts_of_similar_size() -> None:
    x, y, z = grid(48)
    pair = np.maximum(0.25 - np.sqrt((x - 0.4) ** 2 + y ** 2 + z ** 2),
                      0.2 - np.sqrt((x + 0.4) ** 2 + y ** 2 + z ** 2))
    mesh = geometry.clean_mesh(field_to_mesh(pair))
    assert geometry.drop_small_fragments(mesh).n_faces == mesh.n_faces


def test_drop_small_fragments_never_drops_everything() -> None:
    mesh = geometry.clean_mesh(ellipsoid_mesh(24))
    assert geometry.drop_small_fragments(mesh, min_area_fraction=1.0).n_faces == mesh.n_faces


def test_decimate_meets_the_budget_and_carries_colours() -> None:
    mesh = geometry.clean_mesh(ellipsoid_mesh(64))
    budget = mesh.n_faces // 5
    small = geometry.decimate(mesh, budget)
    assert 0 < small.n_faces <= budget
    assert signed_volume(small) == pytest.approx(signed_volume(mesh), rel=0.05)
    # Red encodes native Z: after decimation it still tracks each vertex's height.
    expected_red = np.round((small.vertices[:, 2] + RADIUS) / (2 * RADIUS) * 255)
    assert np.abs(small.colors[:, 0].astype(float) - expected_red).max() <= 8
    assert np.all(small.colors[:, 2] == 128)


def test_decimate_leaves_small_meshes_alone() -> None:
    mesh = ellipsoid_mesh(16)
    assert geometry.decimate(mesh, mesh.n_faces) is mesh


def test_vertex_normals_are_unit_and_point_outward() -> None:
    mesh = geometry.clean_mesh(ellipsoid_mesh(40, centre=(0.0, 0.0, 0.0)))
    normals = geometry.compute_vertex_normals(mesh.vertices, mesh.faces)
    assert normals.dtype == np.float32 and normals.shape == mesh.vertices.shape
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.all(np.einsum("ij,ij->i", normals, mesh.vertices) > 0)


@pytest.mark.parametrize("metadata, expected", [
    ({"dimensions": {"width": 12, "height": 30, "depth": 10, "unit": "cm"}}, (0.12, 0.30, 0.10)),
    ({"dimensions": {"h": "300 mm"}}, (None, 0.3, None)),
    ({"realWorldDimensions": {"width": 2, "length": 3, "units": "in"}}, (0.0508, None, 0.0762)),
    ({"dimensions": {"height": "1.5", "unit": "Metres"}}, (None, 1.5, None)),
])
def test_parse_dimensions_spellings(metadata: dict[str, Any], expected: tuple[float | None, ...]) -> None:
    dims = geometry.parse_dimensions(metadata)
    assert dims is not None
    for got, want in zip((dims.width_m, dims.height_m, dims.depth_m), expected, strict=False):
        assert got == (None if want is None else pytest.approx(want))


@pytest.mark.parametrize("metadata", [
    {"dimensions": {"height": 30}},                      # no unit
    {"dimensions": {"height": -1, "unit": "cm"}},
    {"dimensions": {"height": 30, "unit": "furlong"}},
    {"dimensions": {"colour": "red"}},
    {"dimensions": "30x20x10"},
    {"dimensions": {"height": 3000, "unit": "m"}},
])
def test_parse_dimensions_rejects_unusable_values(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        geometry.parse_dimensions(metadata)


def test_parse_dimensions_absent() -> None:
    assert geometry.parse_dimensions({"productTitle": "Mug"}) is None
    assert geometry.parse_dimensions(None) is None


def test_choose_scale_prefers_height_then_largest_horizontal_then_default() -> None:
    extents = np.array([0.4, 0.8, 0.2])
    assert geometry.choose_scale(extents, Dimensions(0.5, 0.3, None)).factor == pytest.approx(0.3 / 0.8)
    choice = geometry.choose_scale(extents, Dimensions(0.1, None, 0.2))
    assert choice.basis == "largest_horizontal" and choice.factor == pytest.approx(0.2 / 0.4)
    choice = geometry.choose_scale(extents, None)
    assert choice.basis == "default" and choice.factor == pytest.approx(0.3 / 0.8)
    with pytest.raises(JobRejected) as info:
        geometry.choose_scale(np.zeros(3), None)
    assert info.value.code == "empty_mesh"


def test_prepare_stands_a_centred_metre_sized_model_on_the_floor() -> None:
    mesh, scale, _ = prepare_with_frame(ellipsoid_mesh(), 2_000, Dimensions(None, 0.25, None))
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    assert scale.basis == "height"
    assert low[1] == pytest.approx(0.0, abs=1e-6)
    assert high[1] == pytest.approx(0.25, rel=1e-5)
    assert (low[0] + high[0]) / 2 == pytest.approx(0.0, abs=1e-6)
    assert (low[2] + high[2]) / 2 == pytest.approx(0.0, abs=1e-6)
    assert mesh.n_faces <= 2_000 and signed_volume(mesh) > 0


def test_prepare_runs_clean_fragments_decimate_orient_scale_in_that_order() -> None:
    native = with_duplicates(fragmented_mesh())
    mesh, scale, _ = prepare_with_frame(native, 3_000, None)
    oriented = geometry.orient_for_gltf(geometry.decimate(geometry.drop_small_fragments(geometry.clean_mesh(native)),
                                                          3_000))
    expected = geometry.scale_and_place(oriented, scale.factor)
    np.testing.assert_array_equal(mesh.vertices, expected.vertices)
    np.testing.assert_array_equal(mesh.faces, expected.faces)
    np.testing.assert_array_equal(mesh.colors, expected.colors)
    assert scale == geometry.choose_scale(np.ptp(oriented.vertices.astype(np.float64), axis=0), None)


def test_prepare_rejects_a_mesh_with_no_usable_faces() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=np.float32)  # collinear: zero area
    flat = MeshArrays(vertices, np.array([[0, 1, 2]], dtype=np.int32), np.zeros((3, 3), np.uint8))
    with pytest.raises(JobRejected) as info:
        prepare_with_frame(flat, 100, None)
    assert info.value.code == "empty_mesh"
