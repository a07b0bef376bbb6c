"""Benchmark of the per-job assets: GLB, USDZ, poster and QA report for each preset, on TripoSR meshes.

    python bench/assets.py [--models tiny full] [--presets fast balanced quality] [--poster docs/poster-sample.png]

Prints, per model and preset: faces, vertices, GLB / USDZ / poster bytes, texture sides, budget outcome
and the seconds of every step (extraction, geometry, bake, each writer, each validator). Asserts
nothing. "tiny" is the parity fixture's checkpoint on its own scene code (../shared or $SHOP3D_SHARED);
"full" is a full-size random checkpoint (pipeline.model.random_checkpoint) on its calibration image.
Colours for the baked textures come from the model's colour field (pipeline.model.color_field.ColorField).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.assets.bundle import export_assets
from pipeline.assets.formats import ASSET_FORMATS
from pipeline.isosurface.extraction import extract_mesh
from pipeline.model import TripoSR, load_pretrained
from pipeline.model.color_field import ColorField
from pipeline.presets import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_model() -> tuple[TripoSR, torch.Tensor]:
    shared = Path(os.environ.get("SHOP3D_SHARED", REPO_ROOT.parent / "shared"))
    fixture = shared / "triposr" / "fixtures" / "tiny"
    model = load_pretrained(str(fixture))
    return model, torch.from_numpy(np.load(fixture / "reference.npz")["scene_codes"][0])


def full_model() -> tuple[TripoSR, torch.Tensor]:
    from pipeline.model.random_checkpoint import make_calibration_image, random_model

    model = random_model("full")
    with torch.no_grad():
        scene_codes = model(make_calibration_image())
    return model, scene_codes[0]


def run_preset(model: TripoSR, scene_code: torch.Tensor, preset_name: str) -> tuple[dict[str, Any], bytes]:
    """One preset end to end from the scene code; returns the printed row and the poster PNG."""
    preset = PRESETS[preset_name]
    started = time.perf_counter()
    with torch.no_grad():
        mesh = extract_mesh(model, scene_code, preset.mc_resolution)
    extracted = time.perf_counter() - started
    assets = export_assets(mesh, preset, None, ASSET_FORMATS, color_fn=ColorField.from_model(model, scene_code),
                           job_id=f"bench-{preset_name}")
    report = assets.report
    row = {"preset": preset_name, "mc_faces": mesh.n_faces, "faces": report["model"]["faces"],
           "vertices": report["model"]["vertices"], **{f"{k}_bytes": v["bytes"] for k, v in report["files"].items()},
           "report_bytes": len(assets.files["report"].data), "textures": report["texture_sizes"],
           "budgets": "passed" if report["budgets"]["passed"] else "FAILED",
           "validators": {k: v["status"] for k, v in report["validators"].items()},
           "adjustments": len(report["adjustments"]),
           "seconds": {"extract": round(extracted, 2), **{k: round(v, 2) for k, v in report["timings_s"].items()}}}
    return row, assets.files["poster"].data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("tiny", "full"), default=["tiny"])
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["fast", "balanced", "quality"])
    parser.add_argument("--poster", type=Path, help="save the last preset's poster PNG here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    poster = b""
    for name in args.models:
        started = time.perf_counter()
        model, scene_code = tiny_model() if name == "tiny" else full_model()
        print(f"model {name}: loaded and encoded in {time.perf_counter() - started:.1f} s", flush=True)
        for preset_name in args.presets:
            row, poster = run_preset(model, scene_code, preset_name)
            print(f"  {row}", flush=True)
    if args.poster and poster:
        args.poster.parent.mkdir(parents=True, exist_ok=True)
        args.poster.write_bytes(poster)
        print(f"poster saved to {args.poster} ({len(poster)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
