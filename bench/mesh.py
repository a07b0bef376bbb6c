"""Benchmark of isosurface extraction: dense (official) vs fast (coarse-to-fine) per field and resolution.

    python bench/mesh.py [--fields sphere random] [--resolutions 128 256 384] [--runs 3] [--ckpt-dir DIR]

Prints numbers and asserts nothing. Every measurement is one extraction in its own subprocess, which
reports wall seconds, CPU seconds (all threads; less sensitive to other work on a shared machine), the
points queried and its peak RSS (VmHWM, reset after the model is loaded where the kernel allows, with the
RSS at that point reported as the baseline). "random" is a full-size random TripoSR checkpoint
(pipeline.model.random_checkpoint; made in a temp dir without --ckpt-dir) on its calibration image.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.testing.measure import reset_peak_rss, rss_bytes

GIB = 1024**3
_RESULT = "RESULT "




class SphereField:
    """An analytic stand-in for TripoSR.query: a sphere of radius 0.5, u = 8 (0.5 - |p|)."""

    renderer_radius = 0.87

    def query(self, scene_code: Any, points: Any) -> tuple[Any, Any]:
        import torch

        u = 8.0 * (0.5 - points.to(torch.float64).norm(dim=1))
        color = ((points / self.renderer_radius + 1.0) / 2.0).clamp(0.0, 1.0)
        return (25.0 * torch.exp(u)).to(torch.float32), color.to(torch.float32)


# ---------------------------------------------------------------- worker (one extraction per process)

def load_field(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    if args.field == "sphere":
        return SphereField(), torch.zeros(3, 1, 2, 2)
    from pipeline.model import load_pretrained

    return load_pretrained(args.ckpt_dir), torch.load(args.scene_code)


def work_extract(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.isosurface.extraction import extract_mesh_with_stats

    field, scene_code = load_field(args)
    baseline = rss_bytes("VmRSS")
    reset = reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    mesh, stats = extract_mesh_with_stats(field, scene_code, args.resolution, method=args.method,
                                          chunk_size=args.chunk_size)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "query_s": stats.query_seconds, "points": stats.points_queried, "fraction": stats.queried_fraction,
            "closure_points": stats.closure_points, "faces": mesh.n_faces, "vertices": mesh.n_vertices,
            "peak_rss": rss_bytes("VmHWM"), "baseline_rss": baseline, "peak_reset": reset}


def work_scene_code(args: argparse.Namespace) -> dict[str, Any]:
    """Run the full model once on its calibration image and save the scene code for the extractions."""
    import torch

    from pipeline.model import load_pretrained
    from pipeline.model.random_checkpoint import make_calibration_image

    model = load_pretrained(args.ckpt_dir)
    torch.save(model(make_calibration_image(model.config.cond_image_size))[0].clone(), args.scene_code)
    return {"saved": str(args.scene_code)}


# ---------------------------------------------------------------- driver

def run_worker(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--ckpt-dir", str(args.ckpt_dir), "--scene-code", str(args.scene_code),
               "--chunk-size", str(args.chunk_size), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT):
            return dict(json.loads(line[len(_RESULT):]))
    return {"error": f"worker exited {done.returncode}: {done.stderr.strip()[-2000:]}"}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    wall, cpu = [run["wall_s"] for run in runs], [run["cpu_s"] for run in runs]
    last = runs[-1]
    return {"wall_min": min(wall), "wall_median": statistics.median(wall), "cpu_min": min(cpu),
            "cpu_median": statistics.median(cpu), "points": last["points"], "fraction": last["fraction"],
            "faces": last["faces"], "peak_rss": max(run["peak_rss"] for run in runs),
            "baseline_rss": last["baseline_rss"], "peak_reset": last["peak_reset"]}


def measure(args: argparse.Namespace, field: str, resolution: int, method: str) -> dict[str, Any] | None:
    runs = []
    for _ in range(args.runs):
        result = run_worker(args, "--worker", "--field", field, "--resolution", str(resolution), "--method", method)
        if "error" in result:
            print(f"  {field} R={resolution} {method}: {result['error']}")
            return None
        runs.append(result)
    summary = summarize(runs)
    print(f"  {field:6s} R={resolution:3d} {method:5s}: wall min {summary['wall_min']:7.2f} s median "
          f"{summary['wall_median']:7.2f} s | cpu min {summary['cpu_min']:7.2f} s median {summary['cpu_median']:7.2f} s"
          f" | points {summary['points']:>11,} ({summary['fraction']:6.2%}) | faces {summary['faces']:>9,} | "
          f"peak RSS {summary['peak_rss'] / GIB:5.2f} GiB (after load {summary['baseline_rss'] / GIB:4.2f} GiB)"
          f" | load avg {os.getloadavg()[0]:.1f}")
    sys.stdout.flush()
    return summary


def drive(args: argparse.Namespace) -> None:
    import torch

    print(f"bench/mesh.py: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"shared machine (other engineers' work may run: see load avg), {args.runs} runs per row")
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as scratch:
        args.scene_code = Path(scratch) / "scene_code.pt"
        if "random" in args.fields:
            if args.ckpt_dir is None:
                from pipeline.model.random_checkpoint import write_random_checkpoint

                args.ckpt_dir = write_random_checkpoint(Path(scratch) / "full", "full", seed=0)
            print("scene code:", run_worker(args, "--scene-code-worker"))
        for field in args.fields:
            for resolution in args.resolutions:
                rows = {method: measure(args, field, resolution, method) for method in args.methods}
                dense, fast = rows.get("dense"), rows.get("fast")
                if dense and fast:
                    print(f"  {field:6s} R={resolution:3d} fast vs dense: {dense['wall_min'] / fast['wall_min']:.1f}x "
                          f"wall (min), {dense['cpu_min'] / fast['cpu_min']:.1f}x cpu (min), "
                          f"{dense['points'] / fast['points']:.1f}x fewer points, faces {fast['faces']:,} vs "
                          f"{dense['faces']:,}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", nargs="+", default=["sphere", "random"], choices=["sphere", "random"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 384])
    parser.add_argument("--methods", nargs="+", default=["dense", "fast"], choices=["dense", "fast"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--ckpt-dir", type=Path, default=None, help="a full-size checkpoint directory")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene-code-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene-code", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--field", default="sphere", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="fast", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker or args.scene_code_worker:
        result = work_extract(args) if args.worker else work_scene_code(args)
        print(_RESULT + json.dumps(result))
        return 0
    drive(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
