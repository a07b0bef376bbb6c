"""USDZ for iPhone AR Quick Look: `to_usdz(mesh) -> bytes` and `check_usdz(bytes)`, the checks of `usdchecker --arkit`.

`usd-core` is a soft dependency: imported on first use, with `UsdUnavailable` naming the package when
it is missing. The stage is Y up in metres (the export frame), one Mesh under a default prim, and a
UsdPreviewSurface. AR Quick Look ignores `displayColor`, so colour reaches it through a baked texture
(a `TexturedMesh`); a plain mesh still carries displayColor, and its material its mean colour.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.assets.colors import srgb_to_linear
from pipeline.assets.geometry import compute_vertex_normals
from pipeline.assets.texture import TexturedMesh
from pipeline.mesh_arrays import MeshArrays

ROOT_PRIM, MESH_PRIM, MATERIAL_PRIM = "/product", "/product/geometry", "/product/materials/surface"
TEXTURE_FILE = "texture.png"
MATERIAL_ROUGHNESS = 0.8  # the GLB material's value, so both viewers show the same finish
# usdchecker drops this one unless --rootPackageOnly; it replaces UsdzPackageValidator's nested walk.
ROOT_PACKAGE_ONLY_VALIDATOR = "usdUtilsValidators:RootPackageValidator"


class UsdUnavailable(RuntimeError):
    """usd-core (the `pxr` package) is not installed; `pip install usd-core` provides it."""


def _require_usd() -> None:
    """Fail on use, not on import, when usd-core is missing; the pxr imports below then succeed."""
    try:
        import pxr  # noqa: F401
    except ImportError as exc:
        raise UsdUnavailable("USDZ needs usd-core: pip install usd-core") from exc


def _define_mesh(stage: Any, mesh: MeshArrays, normals: np.ndarray, uvs: np.ndarray | None) -> Any:
    from pxr import Sdf, UsdGeom, Vt

    geometry = UsdGeom.Mesh.Define(stage, MESH_PRIM)
    points = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    geometry.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
    geometry.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([points.min(axis=0), points.max(axis=0)])))
    geometry.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(mesh.n_faces, 3, dtype=np.int32)))
    geometry.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.ascontiguousarray(mesh.faces.ravel(),
                                                                                     dtype=np.int32)))
    geometry.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)  # triangles as written, never smoothed
    geometry.CreateDoubleSidedAttr(False)
    geometry.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(normals, dtype=np.float32)))
    geometry.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    # displayColor is linear like every USD colour; TripoSR's colours are display (sRGB) values.
    geometry.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(
        Vt.Vec3fArray.FromNumpy(srgb_to_linear(mesh.colors)))
    if uvs is not None:
        st = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1).astype(np.float32)  # USD's t runs upwards
        primvar = UsdGeom.PrimvarsAPI(geometry).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                              UsdGeom.Tokens.vertex)
        primvar.Set(Vt.Vec2fArray.FromNumpy(st))
    return geometry


def _define_material(stage: Any, mean_color: np.ndarray, textured: bool) -> Any:
    """A UsdPreviewSurface: the baked texture through an st reader, or the mean colour when untextured."""
    from pxr import Gf, Sdf, UsdShade

    material = UsdShade.Material.Define(stage, MATERIAL_PRIM)
    surface = UsdShade.Shader.Define(stage, f"{MATERIAL_PRIM}/preview")
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(MATERIAL_ROUGHNESS)
    surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    diffuse = surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    if textured:
        reader = UsdShade.Shader.Define(stage, f"{MATERIAL_PRIM}/st_reader")
        reader.CreateIdAttr("UsdPrimvarReader_float2")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
        image = UsdShade.Shader.Define(stage, f"{MATERIAL_PRIM}/base_color")
        image.CreateIdAttr("UsdUVTexture")
        image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(TEXTURE_FILE)
        image.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
        image.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("clamp")
        image.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("clamp")
        image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
        diffuse.ConnectToSource(image.ConnectableAPI(), "rgb")
    else:
        diffuse.Set(Gf.Vec3f(*(float(c) for c in mean_color)))
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    return material


def _write_stage(path: Path, model: MeshArrays | TexturedMesh) -> None:
    """The root layer: Y up, metres, default prim /product holding the mesh and its bound material."""
    from pxr import Usd, UsdGeom, UsdShade

    if isinstance(model, TexturedMesh):
        mesh, normals, uvs = model.mesh, model.normals, model.uvs
    else:
        mesh, normals, uvs = model, compute_vertex_normals(model.vertices, model.faces), None
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, UsdGeom.LinearUnits.meters)
    root = UsdGeom.Xform.Define(stage, ROOT_PRIM)
    stage.SetDefaultPrim(root.GetPrim())
    Usd.ModelAPI(root.GetPrim()).SetKind("component")
    geometry = _define_mesh(stage, mesh, normals, uvs)
    material = _define_material(stage, srgb_to_linear(mesh.colors).mean(axis=0), uvs is not None)
    UsdShade.MaterialBindingAPI.Apply(geometry.GetPrim()).Bind(material)
    stage.GetRootLayer().Save()


def to_usdz(model: MeshArrays | TexturedMesh) -> bytes:
    """An ARKit-ready USDZ of `model` as given (Y up, metres: the GLB's frame), uncompressed and aligned.

    Raises UsdUnavailable without usd-core, ValueError on an empty mesh.
    """
    mesh = model.mesh if isinstance(model, TexturedMesh) else model
    if mesh.n_faces == 0:
        raise ValueError("cannot write a USDZ without triangles")
    _require_usd()
    from pxr import Sdf, UsdUtils

    # USD writes layers and packages through files; a private folder keeps concurrent jobs apart.
    with tempfile.TemporaryDirectory(prefix="shop3d-usdz-") as folder:
        layer = Path(folder) / "model.usdc"
        if isinstance(model, TexturedMesh):
            Image.fromarray(model.texture, "RGB").save(Path(folder) / TEXTURE_FILE, optimize=True)
        _write_stage(layer, model)
        package = Path(folder) / "model.usdz"
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer)), str(package)):
            raise RuntimeError("usd-core could not package the USDZ")
        return package.read_bytes()


@dataclass(frozen=True)
class UsdzReport:
    """The verdict of the usdchecker --arkit validators: counts and messages by severity."""

    errors: int
    warnings: int
    messages: tuple[str, ...]


def _arkit_validators(pxr_validation: Any) -> list[Any]:
    registry = pxr_validation.ValidationRegistry()
    names = [meta.name for meta in registry.GetAllValidatorMetadata() if meta.name != ROOT_PACKAGE_ONLY_VALIDATOR]
    return list(registry.GetOrLoadValidatorsByName(sorted(names)))


def check_usdz(data: bytes) -> UsdzReport:
    """Run the validators `usdchecker --arkit` runs (usd-core ≥ 25.05: every registered one, the
    UsdzValidators included) on USDZ bytes. A package that does not open is one error."""
    _require_usd()
    from pxr import Tf, Usd, UsdValidation

    context = UsdValidation.ValidationContext(_arkit_validators(UsdValidation))
    with tempfile.TemporaryDirectory(prefix="shop3d-usdchecker-") as folder:
        path = Path(folder) / "model.usdz"
        path.write_bytes(data)
        try:
            stage = Usd.Stage.Open(str(path))
        except Tf.ErrorException as exc:
            return UsdzReport(errors=1, warnings=0, messages=(f"cannot open the package: {exc}".strip(),))
        found = context.Validate(stage)
    errors = [e for e in found if e.GetType() == UsdValidation.ValidationErrorType.Error]
    warnings = [e for e in found if e.GetType() == UsdValidation.ValidationErrorType.Warn]
    return UsdzReport(errors=len(errors), warnings=len(warnings),
                      messages=tuple(e.GetErrorAsString() for e in errors + warnings))
