"""Per-preset budgets on a product-sized mesh (more faces than any preset keeps): faces, texture size and
file bytes hold for GLB and USDZ; the GLB has 0 Khronos validator errors and the USDZ passes the
usdchecker --arkit validators. One full export per preset (the quality bake takes tens of seconds)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.assets.bundle import ExportedAssets, export_assets
from pipeline.assets.formats import ASSET_FORMATS
from pipeline.assets.usdz import check_usdz
from pipeline.assets.validation import validate_glb
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import PRESETS, Preset
from tests.test_export import gltf_json
from tests.test_geometry import field_to_mesh, grid
from tests.test_texture import native_color


def vase_mesh(n: int = 200) -> MeshArrays:
    """A smooth closed body of revolution with a wavy profile and flat ends: about 120k faces at n=200."""
    x, y, z = grid(n)
    radius = np.sqrt(x**2 + y**2)
    return field_to_mesh(np.minimum(0.35 + 0.08 * np.sin(4 * z) - radius, 0.6 - np.abs(z)))


@pytest.fixture(scope="module")
def big_mesh() -> MeshArrays:
    mesh = vase_mesh()
    assert mesh.n_faces > max(p.max_faces for p in PRESETS.values())
    return mesh


@pytest.fixture(scope="module", params=sorted(PRESETS))
def exported(request: pytest.FixtureRequest, big_mesh: MeshArrays) -> tuple[Preset, ExportedAssets]:
    preset = PRESETS[request.param]
    return preset, export_assets(big_mesh, preset, {"dimensions": {"height": 40, "unit": "cm"}}, ASSET_FORMATS,
                                 color_fn=native_color, job_id=f"budget-{preset.name}")


def glb_texture_side(glb: bytes) -> int:
    document = gltf_json(glb)
    if "images" not in document:
        return 0
    (view_index,) = [image["bufferView"] for image in document["images"]]
    view = document["bufferViews"][view_index]
    json_length = int.from_bytes(glb[12:16], "little")
    start = 20 + json_length + 8 + view.get("byteOffset", 0)
    width, height = Image.open(io.BytesIO(glb[start:start + view["byteLength"]])).size
    assert width == height
    return width


def test_faces_within_budget(exported: tuple[Preset, ExportedAssets]) -> None:
    preset, assets = exported
    assert preset.max_faces * 0.9 <= assets.stats.faces <= preset.max_faces
    assert assets.report["model"]["faces"] == assets.stats.faces


def test_glb_bytes_texture_and_validator(exported: tuple[Preset, ExportedAssets]) -> None:
    preset, assets = exported
    glb = assets.files["glb"].data
    assert len(glb) <= preset.max_glb_bytes
    assert glb_texture_side(glb) == preset.texture_size  # vertex colours (0) or the full-size bake
    report = validate_glb(glb)
    assert report.errors == 0, report.codes("error")
    assert report.warnings == 0, report.codes("warning")


def test_usdz_bytes_texture_and_arkit_checks(exported: tuple[Preset, ExportedAssets]) -> None:
    preset, assets = exported
    usdz = assets.files["usdz"].data
    assert len(usdz) <= preset.max_usdz_bytes
    with zipfile.ZipFile(io.BytesIO(usdz)) as package:
        (png,) = [name for name in package.namelist() if name.endswith(".png")]
        side = Image.open(io.BytesIO(package.read(png))).size
    assert side == (preset.usdz_texture_size, preset.usdz_texture_size)
    verdict = check_usdz(usdz)
    assert verdict.errors == 0, verdict.messages


def test_report_records_every_budget_as_passed(exported: tuple[Preset, ExportedAssets]) -> None:
    preset, assets = exported
    budgets = {check["name"]: check for check in assets.report["budgets"]["checks"]}
    assert assets.report["budgets"]["passed"] and all(check["passed"] for check in budgets.values())
    assert budgets["glb_bytes"]["limit"] == preset.max_glb_bytes
    assert budgets["usdz_bytes"]["value"] == len(assets.files["usdz"].data)
    assert assets.report["validators"]["glb"]["status"] == "passed"
    assert assets.report["validators"]["usdz"]["status"] == "passed"
    assert assets.report["surface"]["watertight"]
    assert assets.report["model"]["size_m"][1] == pytest.approx(0.40, rel=1e-4)


def test_poster_is_the_preset_size(exported: tuple[Preset, ExportedAssets]) -> None:
    preset, assets = exported
    poster = Image.open(io.BytesIO(assets.files["poster"].data))
    assert poster.mode == "RGBA" and poster.size == (preset.poster_size, preset.poster_size)


def test_presets_follow_storefront_guidance() -> None:
    for preset in PRESETS.values():
        assert preset.max_faces <= 100_000                      # Apple AR Quick Look guidance
        assert max(preset.texture_size, preset.usdz_texture_size) <= 2048
        assert max(preset.max_glb_bytes, preset.max_usdz_bytes) <= 15_000_000  # Shopify's 15 MB
        assert preset.min_texture_size <= preset.usdz_texture_size
