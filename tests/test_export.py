"""GLB export: `glb.to_glb` and the job's GLB from `bundle.export_assets` round-trip through trimesh and
pass the Khronos glTF-Validator with 0 errors; the model is cleaned, Y up, sized in metres and on the floor."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from typing import Any

import numpy as np
import pytest
import trimesh

from pipeline.assets import glb as export
from pipeline.assets.bundle import EXPORTERS, ExportedAssets, export_assets
from pipeline.assets.colors import srgb_to_linear
from pipeline.assets.formats import ASSET_FORMATS
from pipeline.assets.geometry import clean_mesh
from pipeline.assets.validation import ValidatorUnavailable, validate_glb
from pipeline.errors import JobRejected
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import PRESETS
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


def export_glb(mesh: MeshArrays, metadata: dict[str, Any] | None = None, job_id: str = "-") -> ExportedAssets:
    """The product's export at the fast preset (vertex colours), GLB only; the tests run the validator themselves."""
    return export_assets(mesh, PRESETS["fast"], metadata, ["glb"], job_id=job_id, validate=False)


def test_srgb_to_linear_endpoints_and_midtone() -> None:
    linear = srgb_to_linear(np.array([[0, 128, 255]], dtype=np.uint8))
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


def test_exporters_write_every_model_format_and_unknown_formats_are_refused() -> None:
    mesh = clean_mesh(ellipsoid_mesh(16))
    assert set(EXPORTERS) | {"poster", "report"} == set(ASSET_FORMATS)  # the poster is a render, the report JSON
    assert EXPORTERS["glb"](mesh)[:4] == b"glTF"
    assert EXPORTERS["usdz"](mesh)[:2] == b"PK"  # a zip package
    with pytest.raises(ValueError, match="glb"):
        export_assets(mesh, PRESETS["fast"], None, ["glb", "fbx"])


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_job_glb_meets_each_preset_face_budget_and_stands_at_its_height(big_mesh: MeshArrays,
                                                                        preset_name: str) -> None:
    """Vertex colours (texture 0) keep this fast; the baked quality GLB's bytes are tests/test_budgets.py's."""
    preset = dataclasses.replace(PRESETS[preset_name], texture_size=0)
    assets = export_assets(big_mesh, preset, {"dimensions": {"height": 20, "unit": "cm"}}, ["glb"], job_id="j-1",
                           validate=False)
    glb = assets.files["glb"].data
    assert preset.max_faces * 0.9 <= assets.stats.faces <= preset.max_faces
    assert assets.stats.glb_bytes == len(glb) <= preset.max_glb_bytes
    reloaded = load_glb(glb)
    assert len(reloaded.faces) == assets.stats.faces
    low, high = reloaded.bounds
    assert low[1] == pytest.approx(0.0, abs=1e-6)                      # rests on the floor
    assert high[1] == pytest.approx(0.20, rel=1e-4)                    # height from metadata, in metres
    assert abs(low[0] + high[0]) < 1e-6 and abs(low[2] + high[2]) < 1e-6  # centred in x and z
    assert assets.stats.bbox_max_m[1] == pytest.approx(0.20, rel=1e-4)
    assert_valid(glb)


def test_job_glb_colours_normals_and_up_axis_survive_the_round_trip() -> None:
    assets = export_glb(ellipsoid_mesh(48))
    reloaded = load_glb(assets.files["glb"].data)
    assert assets.stats.scale_basis == "default"
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


def test_job_glb_of_a_degenerate_fragmented_mesh_is_one_clean_body() -> None:
    assets = export_glb(with_duplicates(fragmented_mesh()))
    reloaded = load_glb(assets.files["glb"].data)
    assert reloaded.body_count == 1  # floaters dropped, duplicates welded into one closed body
    assert reloaded.is_watertight
    assert assets.report["surface"]["watertight"] is True
    assert_valid(assets.files["glb"].data)


def test_job_glb_of_the_fixture_torchmcubes_mesh() -> None:
    reference = np.load(TINY_FIXTURE_DIR / "reference.npz")
    raw = MeshArrays(reference["mc_raw_vertices"], reference["mc_raw_faces"],
                     np.round(reference["mc_raw_colors"] * 255).astype(np.uint8))
    assets = export_glb(raw)
    assert assets.stats.faces <= PRESETS["fast"].max_faces
    assert_valid(assets.files["glb"].data)


def test_job_glb_of_a_tiny_mesh_sized_by_its_width() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32) * RADIUS
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    tetrahedron = MeshArrays(vertices, faces, np.full((4, 3), 200, np.uint8))
    assets = export_glb(tetrahedron, {"dimensions": {"width": "4 in"}})
    assert (assets.stats.faces, assets.stats.vertices) == (4, 4)
    assert assets.stats.scale_basis == "largest_horizontal"
    assert max(assets.stats.size_m[0], assets.stats.size_m[2]) == pytest.approx(0.1016, rel=1e-5)
    assert_valid(assets.files["glb"].data)


def test_bad_dimensions_fall_back_to_the_default_size_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="pipeline.assets.bundle")
    assets = export_glb(ellipsoid_mesh(24), {"dimensions": {"height": 30}}, job_id="job-42")
    assert assets.stats.scale_basis == "default"
    assert max(assets.stats.size_m) == pytest.approx(0.3, rel=1e-5)
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
