"""QA report: surface topology, budget checks, the report JSON and its webhook summary, and
export_assets producing the job's formats with a report that describes them."""

from __future__ import annotations

import dataclasses
import json
from typing import get_args

import numpy as np
import pytest

from pipeline.assets import report as qa
from pipeline.assets.bundle import export_assets, prepare_with_frame
from pipeline.assets.formats import (
    ASSET_FORMATS,
    CONTENT_TYPES,
    DEFAULT_FORMATS,
    FILENAMES,
    OutputFormat,
    resolve_formats,
)
from pipeline.errors import JobRejected
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import PRESETS
from tests.test_geometry import ellipsoid_mesh

TETRA_FACES = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def test_surface_check_closed_open_flipped_and_non_manifold() -> None:
    closed = qa.check_surface(TETRA_FACES)
    assert closed.watertight and closed.consistently_wound
    opened = qa.check_surface(TETRA_FACES[:3])
    assert not opened.watertight and opened.boundary_edges == 3
    flipped = TETRA_FACES.copy()
    flipped[0] = flipped[0][::-1]
    assert qa.check_surface(flipped).watertight and not qa.check_surface(flipped).consistently_wound
    fin = np.concatenate([TETRA_FACES, [[0, 1, 4]]])  # a third face on edge 0-1
    assert qa.check_surface(fin).non_manifold_edges == 1


def test_budget_checks_and_verdicts() -> None:
    assert qa.BudgetCheck("faces", 10, 10).passed and not qa.BudgetCheck("faces", 10, 11).passed
    assert qa.verdict_from_counts(0, 2, ["W"]).status == "passed"
    assert qa.verdict_from_counts(1, 0, ["E"]).status == "failed"


def test_report_json_and_summary() -> None:
    report = qa.build_report(
        job_id="job-1", preset="fast", formats=["glb", "report"],
        model={"faces": 4, "vertices": 4, "size_m": [0.1, 0.2, 0.1], "bbox_min_m": [0, 0, 0],
               "bbox_max_m": [0.1, 0.2, 0.1]},
        surface=qa.check_surface(TETRA_FACES), files={"glb": 1234},
        texture_sizes={"glb": 0}, validators={"glb": qa.verdict_from_counts(0, 0, [])},
        budgets=[qa.BudgetCheck("faces", 10, 4), qa.BudgetCheck("glb_bytes", 1000, 1234)],
        adjustments=[], timings_s={"glb": 0.12345, "poster": 1.0})
    assert json.loads(qa.report_json(report)) == report
    assert report["budgets"]["passed"] is False  # the GLB is over its limit
    summary = qa.summarize_report(report)
    assert summary == {"faces": 4, "vertices": 4, "size_m": [0.1, 0.2, 0.1], "bytes": {"glb": 1234},
                       "watertight": True, "validators": {"glb": "passed"}, "budgets_passed": False,
                       "adjusted": False, "seconds": 1.123}


def test_format_table_names_every_format_once() -> None:
    assert ASSET_FORMATS == get_args(OutputFormat) == ("glb", "usdz", "poster", "report")
    assert tuple(FILENAMES) == tuple(CONTENT_TYPES) == ASSET_FORMATS
    assert len(set(FILENAMES.values())) == len(ASSET_FORMATS)  # one stored file each, none overwrites another
    assert set(DEFAULT_FORMATS) < set(ASSET_FORMATS)


def test_resolve_formats() -> None:
    assert resolve_formats(None) == DEFAULT_FORMATS == ("glb", "poster", "report")
    assert resolve_formats(["usdz", "glb", "usdz"]) == ("usdz", "glb")
    with pytest.raises(ValueError, match="fbx"):
        resolve_formats(["glb", "fbx"])
    with pytest.raises(ValueError):
        resolve_formats([])


def test_default_formats_give_glb_poster_and_a_matching_report() -> None:
    assets = export_assets(ellipsoid_mesh(40), PRESETS["fast"], {"dimensions": {"height": "25 cm"}},
                           job_id="job-7", stage_timings={"reconstruct": 2.5})
    assert list(assets.files) == ["glb", "poster", "report"]
    glb, poster, report_file = assets.files["glb"], assets.files["poster"], assets.files["report"]
    assert (glb.filename, glb.content_type) == ("model.glb", "model/gltf-binary")
    assert (poster.filename, poster.content_type) == ("poster.png", "image/png")
    assert (report_file.filename, report_file.content_type) == ("report.json", "application/json")
    report = json.loads(report_file.data)
    assert report == assets.report and report["job_id"] == "job-7" and report["preset"] == "fast"
    assert report["model"]["faces"] == assets.mesh.n_faces == assets.stats.faces
    assert report["model"]["size_m"][1] == pytest.approx(0.25, rel=1e-4)
    assert report["files"] == {"glb": {"bytes": len(glb.data)}, "poster": {"bytes": len(poster.data)}}
    assert report["surface"]["watertight"] is True
    assert report["validators"]["glb"]["status"] == "passed"
    assert report["budgets"]["passed"] is True and report["adjustments"] == []
    assert {"reconstruct", "geometry", "glb", "poster", "validate_glb"} <= set(report["timings_s"])
    assert report["timings_s"]["reconstruct"] == 2.5
    assert assets.summary["validators"] == {"glb": "passed"} and assets.summary["budgets_passed"]


def test_usdz_when_asked_with_its_own_verdict_and_budget() -> None:
    assets = export_assets(ellipsoid_mesh(40), PRESETS["fast"], None, ["usdz", "glb"], job_id="job-8")
    assert list(assets.files) == ["usdz", "glb"]
    assert assets.files["usdz"].content_type == "model/vnd.usdz+zip"
    report = assets.report
    assert report["validators"]["usdz"]["status"] == "passed"
    assert report["texture_sizes"] == {"glb": 0, "usdz": PRESETS["fast"].usdz_texture_size}
    names = {check["name"] for check in report["budgets"]["checks"]}
    assert {"faces", "glb_bytes", "usdz_bytes", "usdz_texture_px"} <= names
    assert "bake" in report["timings_s"]


def test_over_budget_glb_is_decimated_and_the_step_recorded() -> None:
    preset = dataclasses.replace(PRESETS["fast"], max_glb_bytes=120_000)
    assets = export_assets(ellipsoid_mesh(64), preset, None, ["glb", "report"], job_id="job-9")
    assert len(assets.files["glb"].data) <= 120_000
    assert assets.report["adjustments"] and "faces" in assets.report["adjustments"][0]
    assert assets.report["model"]["faces"] < preset.max_faces
    assert assets.report["budgets"]["passed"] is True


def noise_color(points: np.ndarray) -> np.ndarray:
    """Texel-scale noise: a PNG cannot compress it, so texture bytes grow with the texture's area."""
    hashed: np.ndarray = np.modf(np.abs(np.sin(points @ np.array([[127.1, 311.7, 74.7]] * 3).T * 1000.0)) * 43758.5)[0]
    return hashed


def test_over_budget_texture_is_halved_first() -> None:
    preset = dataclasses.replace(PRESETS["quality"], max_faces=3000, texture_size=1024, min_texture_size=256,
                                 max_glb_bytes=400_000)
    assets = export_assets(ellipsoid_mesh(40), preset, None, ["glb"], color_fn=noise_color, job_id="job-10")
    adjustments = assets.report["adjustments"]
    assert adjustments[0].startswith("glb:") and "texture 1024 -> 512" in adjustments[0]
    assert all("texture" in step for step in adjustments)  # faces untouched while the texture can shrink
    assert 256 <= assets.report["texture_sizes"]["glb"] < 1024
    assert assets.report["model"]["faces"] == prepare_with_frame(ellipsoid_mesh(40), 3000, None)[0].n_faces
    assert len(assets.files["glb"].data) <= 400_000


def test_unreachable_budget_fails_the_export() -> None:
    preset = dataclasses.replace(PRESETS["fast"], max_glb_bytes=100)
    with pytest.raises(JobRejected) as info:
        export_assets(ellipsoid_mesh(24), preset, None, ["glb"], validate=False)
    assert info.value.code == "export_failed"


def test_empty_mesh_is_rejected() -> None:
    empty = MeshArrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8))
    with pytest.raises(JobRejected) as info:
        export_assets(empty, PRESETS["fast"])
    assert info.value.code == "empty_mesh"
