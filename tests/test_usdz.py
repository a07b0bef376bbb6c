"""USDZ export: passes the validators of `usdchecker --arkit` (usd-core's UsdValidation framework), is
Y up in metres, carries colours (displayColor and, when baked, an sRGB texture), and is a valid package."""

from __future__ import annotations

import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pxr import Sdf, Usd, UsdGeom, UsdShade, UsdUtils

from pipeline.assets.bundle import prepare_with_frame
from pipeline.assets.colors import srgb_to_linear
from pipeline.assets.texture import TexturedMesh, bake_texture
from pipeline.assets.usdz import MESH_PRIM, ROOT_PRIM, UsdUnavailable, check_usdz, to_usdz
from pipeline.mesh_arrays import MeshArrays
from tests.test_geometry import ellipsoid_mesh

# The shader ids RealityKit / AR Quick Look implement (the former ComplianceChecker's ARKit rule).
ARKIT_SHADER_IDS = {"UsdPreviewSurface", "UsdUVTexture", "UsdPrimvarReader_float2", "UsdTransform2d"}


@pytest.fixture(scope="module")
def mesh() -> MeshArrays:
    placed, _, _ = prepare_with_frame(ellipsoid_mesh(32), 5000, None)
    return placed


@pytest.fixture(scope="module")
def textured(mesh: MeshArrays) -> TexturedMesh:
    return bake_texture(mesh, 256)


def open_stage(data: bytes, folder: Path) -> Usd.Stage:
    path = folder / "model.usdz"
    path.write_bytes(data)
    return Usd.Stage.Open(str(path))


def assert_arkit_clean(data: bytes) -> None:
    report = check_usdz(data)
    assert report.errors == 0, report.messages
    assert report.warnings == 0, report.messages


def test_vertex_colour_usdz_passes_arkit_checks(mesh: MeshArrays, tmp_path: Path) -> None:
    data = to_usdz(mesh)
    assert_arkit_clean(data)
    stage = open_stage(data, tmp_path)
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetDefaultPrim().GetPath() == Sdf.Path(ROOT_PRIM)
    geometry = UsdGeom.Mesh(stage.GetPrimAtPath(MESH_PRIM))
    np.testing.assert_allclose(np.array(geometry.GetPointsAttr().Get()), mesh.vertices, atol=1e-7)
    np.testing.assert_array_equal(np.array(geometry.GetFaceVertexIndicesAttr().Get()), mesh.faces.ravel())
    assert set(geometry.GetFaceVertexCountsAttr().Get()) == {3}
    assert geometry.GetSubdivisionSchemeAttr().Get() == UsdGeom.Tokens.none
    colours = geometry.GetDisplayColorPrimvar()
    assert colours.GetInterpolation() == UsdGeom.Tokens.vertex
    np.testing.assert_allclose(np.array(colours.Get()), srgb_to_linear(mesh.colors), atol=1e-6)
    material, _ = UsdShade.MaterialBindingAPI(geometry.GetPrim()).ComputeBoundMaterial()
    surface = material.ComputeSurfaceSource()[0]
    diffuse = np.array(surface.GetInput("diffuseColor").Get())
    np.testing.assert_allclose(diffuse, srgb_to_linear(mesh.colors).mean(axis=0), atol=1e-5)


def test_usdz_is_y_up_and_in_metres(mesh: MeshArrays, tmp_path: Path) -> None:
    stage = open_stage(to_usdz(mesh), tmp_path)
    bounds = UsdGeom.BBoxCache(Usd.TimeCode.Default(), [UsdGeom.Tokens.default_]).ComputeWorldBound(
        stage.GetDefaultPrim()).ComputeAlignedRange()
    low, high = np.array(bounds.GetMin()), np.array(bounds.GetMax())
    assert low[1] == pytest.approx(0.0, abs=1e-6)          # standing on the floor
    assert high[1] - low[1] == pytest.approx(0.3, rel=1e-5)  # the ellipsoid's long native Z is up: 30 cm
    assert int(np.argmax(high - low)) == 1


def test_textured_usdz_passes_arkit_checks_and_carries_the_texture(textured: TexturedMesh, tmp_path: Path) -> None:
    data = to_usdz(textured)
    assert_arkit_clean(data)
    with zipfile.ZipFile(BytesIO(data)) as package:
        entries = package.infolist()
        assert entries[0].filename.endswith(".usdc")  # ARKit: the first file is the binary root layer
        assert all(e.compress_type == zipfile.ZIP_STORED for e in entries)
        (texture_entry,) = [e for e in entries if e.filename.endswith(".png")]
        texture = np.asarray(Image.open(BytesIO(package.read(texture_entry))).convert("RGB"))
    np.testing.assert_array_equal(texture, textured.texture)
    stage = open_stage(data, tmp_path)
    geometry = UsdGeom.Mesh(stage.GetPrimAtPath(MESH_PRIM))
    st = UsdGeom.PrimvarsAPI(geometry).GetPrimvar("st")
    assert st.GetTypeName() == Sdf.ValueTypeNames.TexCoord2fArray
    expected = np.stack([textured.uvs[:, 0], 1.0 - textured.uvs[:, 1]], axis=1)  # USD's t runs upwards
    np.testing.assert_allclose(np.array(st.Get()), expected, atol=1e-7)
    shader_ids = {UsdShade.Shader(p).GetIdAttr().Get() for p in stage.Traverse() if p.IsA(UsdShade.Shader)}
    assert shader_ids == {"UsdPreviewSurface", "UsdUVTexture", "UsdPrimvarReader_float2"}
    assert shader_ids <= ARKIT_SHADER_IDS
    texture_shader = UsdShade.Shader(stage.GetPrimAtPath("/product/materials/surface/base_color"))
    assert texture_shader.GetInput("sourceColorSpace").Get() == "sRGB"
    np.testing.assert_allclose(np.array(geometry.GetNormalsAttr().Get()), textured.normals, atol=1e-6)


def test_checker_fails_a_compressed_package() -> None:
    """The checker is real: a deflated (ARKit-invalid) package with no stage metadata fails."""
    layer = Sdf.Layer.CreateAnonymous(".usda")
    layer.ImportFromString('#usda 1.0\ndef Xform "product" {}\n')
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("model.usda", layer.ExportToString())
    assert check_usdz(buffer.getvalue()).errors >= 1


def test_checker_fails_a_stage_without_up_axis_or_units(tmp_path: Path) -> None:
    stage = Usd.Stage.CreateNew(str(tmp_path / "bare.usdc"))
    stage.SetDefaultPrim(UsdGeom.Xform.Define(stage, "/product").GetPrim())
    stage.GetRootLayer().Save()
    assert UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(tmp_path / "bare.usdc")), str(tmp_path / "b.usdz"))
    report = check_usdz((tmp_path / "b.usdz").read_bytes())
    assert report.errors == 2, report.messages
    assert any("upAxis" in m for m in report.messages) and any("metersPerUnit" in m or "linear" in m
                                                                for m in report.messages)


def test_empty_mesh_is_refused() -> None:
    empty = MeshArrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8))
    with pytest.raises(ValueError):
        to_usdz(empty)


def test_missing_usd_core_fails_on_use_with_a_clear_error(mesh: MeshArrays, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pxr", None)  # `from pxr import ...` now raises ImportError
    with pytest.raises(UsdUnavailable, match="pip install usd-core"):
        to_usdz(mesh)
