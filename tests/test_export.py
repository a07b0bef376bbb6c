"""GLB export: round-trips through trimesh and passes the Khronos glTF-Validator with 0 errors."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
import pytest
import trimesh

from pipeline import export
from pipeline.errors import JobRejected
from pipeline.geometry import clean_mesh
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import PRESETS
from pipeline.validation import ValidatorUnavailable, validate_glb
from tests.support.paths import TINY_FIXTURE_DIR
from tests.test_geometry import RADIUS, ellipsoid_mesh, field_to_mesh, fragmented_mesh, grid, with_duplicates


def gltf_json(glb: bytes) -> dict[str, Any]:
    """The JSON chunk of a GLB."""
    magic, version, total = struct.unpack_from("<III", glb, 0)
    assert (magic, version, total) == (0x46546C67, 2, len(glb))
    length, chunk_type = struct.unpack_from("<II", glb, 12)
    assert chunk_type == 0x4E4F534A
    document: dict[str, Any] = json.loads(glb[20:20 + length])
    return document


def load_glb(glb: bytes) -> trimesh.Trimesh:
    scene = trimesh.load_scene(io.BytesIO(glb), file_type="glb", process=False)
    (mesh,) = scene.geometry.values()
    assert isinstance(mesh, trimesh.Trimesh)
    return mesh


def assert_valid(glb: bytes) -> None:
    report = validate_glb(glb)
    assert report.errors == 0, report.codes("error")
    assert report.warnings == 0, report.codes("warning")


def lumpy_mesh(n: int) -> MeshArrays:
    """A bumpy sphere with many faces (over 65,535 vertices at n=192), for the preset budgets."""
    x, y, z = grid(n)
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    return field_to_mesh(0.6 + 0.05 * np.sin(9 * x) * np.cos(7 * y) * np.sin(5 * z) - r)


@pytest.fixture(scope="module")
def big_mesh() -> MeshArrays:
    mesh = lumpy_mesh(192)
    assert mesh.n_faces > max(p.max_faces for p in PRESETS.values())
    return mesh


def test_srgb_to_linear_endpoints_and_midtone() -> None:
    linear = export.srgb_to_linear(np.array([[0, 128, 255]], dtype=np.uint8))
    np.testing.assert_allclose(linear, [[0.0, 0.2158605, 1.0]], atol=1e-6)


def test_to_glb_layout_and_reload() -> None:
    mesh = clean_mesh(ellipsoid_mesh(32))
    glb = export.to_glb(mesh)
    document = gltf_json(glb)
    assert document["asset"] == {"version": "2.0", "generator": "shop3d"}
    (primitive,) = document["meshes"][0]["primitives"]
    accessors = document["accessors"]
    assert set(primitive["attributes"]) == {"POSITION", "NORMAL", "COLOR_0"}
    assert accessors[primitive["attributes"]["POSITION"]]["componentType"] == 5126
    assert accessors[primitive["attributes"]["COLOR_0"]]["type"] == "VEC3"
    assert accessors[primitive["indices"]]["componentType"] == 5123  # uint16 for < 65535 vertices
    material = document["materials"][primitive["material"]]
    assert material["doubleSided"] is False
    assert material["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    reloaded = load_glb(glb)
    np.testing.assert_allclose(reloaded.vertices, mesh.vertices, atol=1e-7)
    np.testing.assert_array_equal(reloaded.faces, mesh.faces)
    assert_valid(glb)


def test_to_glb_uses_uint32_indices_past_65534_vertices(big_mesh: MeshArrays) -> None:
    assert big_mesh.n_vertices > 65535
    glb = export.to_glb(big_mesh)
    document = gltf_json(glb)
    assert document["accessors"][document["meshes"][0]["primitives"][0]["indices"]]["componentType"] == 5125
    assert_valid(glb)


def test_to_glb_rejects_an_empty_mesh() -> None:
    empty = MeshArrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8))
    with pytest.raises(JobRejected) as info:
        export.to_glb(empty)
    assert info.value.code == "export_failed"


def test_export_mesh_table() -> None:
    mesh = clean_mesh(ellipsoid_mesh(16))
    assert export.export_mesh(mesh, "glb")[:4] == b"glTF"
    with pytest.raises(ValueError, match="glb"):
        export.export_mesh(mesh, "fbx")


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_export_model_at_each_preset_budget(big_mesh: MeshArrays, preset_name: str) -> None:
    preset = PRESETS[preset_name]
    model = export.export_model(big_mesh, preset, {"dimensions": {"height": 20, "unit": "cm"}}, job_id="j-1")
    assert preset.max_faces * 0.9 <= model.stats.faces <= preset.max_faces
    assert model.stats.glb_bytes == len(model.glb) <= preset.max_glb_bytes
    reloaded = load_glb(model.glb)
    assert len(reloaded.faces) == model.stats.faces
    low, high = reloaded.bounds
    assert low[1] == pytest.approx(0.0, abs=1e-6)                      # rests on the floor
    assert high[1] == pytest.approx(0.20, rel=1e-4)                    # height from metadata, in metres
    assert abs(low[0] + high[0]) < 1e-6 and abs(low[2] + high[2]) < 1e-6  # centred in x and z
    assert model.stats.bbox_max_m[1] == pytest.approx(0.20, rel=1e-4)
    assert_valid(model.glb)


def test_export_model_colours_normals_and_up_axis_survive_the_round_trip() -> None:
    model = export.export_model(ellipsoid_mesh(48), PRESETS["fast"], None)
    reloaded = load_glb(model.glb)
    assert model.stats.scale_basis == "default"
    assert max(reloaded.extents) == pytest.approx(0.3, rel=1e-5)
    assert int(np.argmax(reloaded.extents)) == 1  # the ellipsoid's tall native Z is glTF Y
    assert isinstance(reloaded.visual, trimesh.visual.TextureVisuals)  # a material + COLOR_0
    colors = np.asarray(reloaded.visual.vertex_attributes["color"])
    assert colors.shape == (len(reloaded.vertices), 3) and colors.min() >= 0 and colors.max() <= 1
    # Red encodes native height, so in linear light it must rise with glTF Y.
    heights = reloaded.vertices[:, 1]
    assert np.corrcoef(heights, colors[:, 0])[0, 1] > 0.9
    # Blue was sRGB 128 everywhere: linear 0.2159, not the too-dark-looking 0.502 of an unconverted write.
    np.testing.assert_allclose(colors[:, 2], 0.2158605, atol=1e-5)
    normals = np.asarray(reloaded.vertex_normals)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    centre = (reloaded.bounds[0] + reloaded.bounds[1]) / 2
    assert np.mean(np.einsum("ij,ij->i", normals, reloaded.vertices - centre) > 0) > 0.99


def test_export_model_cleans_a_degenerate_fragmented_mesh() -> None:
    model = export.export_model(with_duplicates(fragmented_mesh()), PRESETS["fast"], None)
    reloaded = load_glb(model.glb)
    assert reloaded.body_count == 1  # floaters dropped, duplicates welded into one closed body
    assert reloaded.is_watertight
    assert_valid(model.glb)


def test_export_model_on_the_fixture_torchmcubes_mesh() -> None:
    reference = np.load(TINY_FIXTURE_DIR / "reference.npz")
    raw = MeshArrays(reference["mc_raw_vertices"], reference["mc_raw_faces"],
                     np.round(reference["mc_raw_colors"] * 255).astype(np.uint8))
    model = export.export_model(raw, PRESETS["fast"], None)
    assert model.stats.faces <= PRESETS["fast"].max_faces
    assert_valid(model.glb)


def test_export_model_tiny_mesh() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32) * RADIUS
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    tetrahedron = MeshArrays(vertices, faces, np.full((4, 3), 200, np.uint8))
    model = export.export_model(tetrahedron, PRESETS["fast"], {"dimensions": {"width": "4 in"}})
    assert (model.stats.faces, model.stats.vertices) == (4, 4)
    assert model.stats.scale_basis == "largest_horizontal"
    assert max(model.stats.size_m[0], model.stats.size_m[2]) == pytest.approx(0.1016, rel=1e-5)
    assert_valid(model.glb)


def test_export_model_falls_back_to_default_size_on_bad_dimensions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="pipeline.export")
    model = export.export_model(ellipsoid_mesh(24), PRESETS["fast"], {"dimensions": {"height": 30}},
                                job_id="job-42")
    assert model.stats.scale_basis == "default"
    assert any("job-42" in r.getMessage() and "no unit" in r.getMessage() for r in caplog.records)


def test_validator_reports_errors_on_broken_files() -> None:
    glb = export.to_glb(clean_mesh(ellipsoid_mesh(16)))
    truncated = validate_glb(glb[:-100])
    assert truncated.errors > 0 and "GLB_UNEXPECTED_END_OF_CHUNK_DATA" in truncated.codes("error")
    assert validate_glb(b"not a model").errors == 1


def test_validator_says_clearly_when_node_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ValidatorUnavailable, match="node"):
        validate_glb(b"glTF")
