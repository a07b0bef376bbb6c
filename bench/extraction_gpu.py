"""Benchmark of the "gpu" isosurface extraction (Warp) against "dense" (the reference) and "fast", with agreement.

    python bench/extraction_gpu.py [--device cpu|cuda] [--resolutions 128 256] [--runs 2] [--ckpt-dir DIR]
    python bench/extraction_gpu.py --quick          # the tiny random model at 32 and 64, one run

A full-size random TripoSR (pipeline.model.random_checkpoint.random_model, built in memory; or --ckpt-dir)
on its calibration image, everything on --device. Per resolution and method: wall seconds (min and median
of --runs, after an untimed 24^3 gpu extraction that compiles Warp's kernels), seconds in point queries, faces;
then marching cubes alone on the same dense grid (PyMCubes + numpy merge on the host vs Warp + torch merge
on the device), and gpu vs dense: face and vertex counts, max vertex deviation both ways, colour changes.
Prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from pipeline.isosurface.device_extraction import (
    dense_level_values,
    marching_cubes_on_device,
    merge_rounded_vertices_on_device,
    surface_box,
    warp_available,
)
from pipeline.isosurface.extraction import extract_mesh_with_stats
from pipeline.isosurface.grid import grid_axis
from pipeline.isosurface.triangulation import triangulate
from pipeline.mesh_arrays import MeshArrays

THRESHOLD = 25.0
METHODS = ("dense", "fast", "gpu")


def load_model(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    from pipeline.model import load_pretrained
    from pipeline.model.random_checkpoint import make_calibration_image, random_model

    if args.ckpt_dir is not None:
        model = load_pretrained(args.ckpt_dir, args.device, precision="float32")
    else:
        model = random_model("tiny" if args.quick else "full", seed=0).to(args.device)
    scene_code = model(make_calibration_image(model.config.cond_image_size))[0]
    return model, scene_code


def synchronized(device: str, action: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        result = action()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    return run


def timed(action: Callable[[], Any], runs: int) -> tuple[Any, list[float]]:
    seconds, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - started)
    return result, seconds


def agreement(gpu: MeshArrays, dense: MeshArrays) -> str:
    to_dense = cKDTree(dense.vertices).query(gpu.vertices)[0].max()
    from_dense, nearest = cKDTree(gpu.vertices).query(dense.vertices)
    colours = np.abs(gpu.colors[nearest].astype(int) - dense.colors)
    return (f"faces {gpu.n_faces:,} vs {dense.n_faces:,} (diff {gpu.n_faces - dense.n_faces:+d}), vertices "
            f"{gpu.n_vertices:,} vs {dense.n_vertices:,}, max vertex deviation gpu->dense {to_dense:.2e} "
            f"dense->gpu {from_dense.max():.2e}, colours changed {int((colours > 0).any(axis=1).sum())} "
            f"(max {int(colours.max())})")


def marching_cubes_only(model: Any, scene_code: torch.Tensor, resolution: int, args: argparse.Namespace) -> str:
    """PyMCubes + numpy merge on the host vs Warp + torch merge on the device, on the same dense grid."""
    negated = dense_level_values(model, scene_code, resolution, THRESHOLD, args.chunk_size)
    host = (-negated).cpu().numpy()
    axis = grid_axis(resolution, float(model.renderer_radius))

    def on_device() -> Any:
        box = surface_box(negated)
        if box is None:
            return None
        return merge_rounded_vertices_on_device(*marching_cubes_on_device(negated, box, axis))

    _, cpu_s = timed(lambda: triangulate(host, float(model.renderer_radius)), args.runs)
    _, warp_s = timed(synchronized(args.device, on_device), args.runs)
    return (f"marching cubes + merge only: PyMCubes (host) {min(cpu_s):6.3f} s | Warp ({args.device}) "
            f"{min(warp_s):6.3f} s")


def bench_resolution(model: Any, scene_code: torch.Tensor, resolution: int, args: argparse.Namespace) -> None:
    meshes: dict[str, MeshArrays] = {}
    for method in METHODS:
        if method == "gpu":  # untimed: Warp compiles (or loads from its cache) its kernels on first use
            extract_mesh_with_stats(model, scene_code, 24, method="gpu", chunk_size=args.chunk_size)

        def extract(method: str = method) -> Any:
            return extract_mesh_with_stats(model, scene_code, resolution, method=method,  # type: ignore[arg-type]
                                           chunk_size=args.chunk_size)

        (mesh, stats), seconds = timed(extract, args.runs)
        meshes[method] = mesh
        print(f"  R={resolution:3d} {method:5s}: wall min {min(seconds):7.2f} s median "
              f"{statistics.median(seconds):7.2f} s | queries {stats.query_seconds:7.2f} s | points "
              f"{stats.points_queried:>11,} | faces {mesh.n_faces:>9,} | ran as {stats.method} | load avg "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    print(f"  R={resolution:3d} {marching_cubes_only(model, scene_code, resolution, args)}", flush=True)
    print(f"  R={resolution:3d} gpu vs dense: {agreement(meshes['gpu'], meshes['dense'])}", flush=True)
    print(f"  R={resolution:3d} fast vs dense: faces {meshes['fast'].n_faces:,} vs {meshes['dense'].n_faces:,}",
          flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, help="default 128 256 (--quick: 32 64)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (default 2, --quick 1)")
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--ckpt-dir", type=Path, default=None, help="a checkpoint directory instead of random")
    parser.add_argument("--quick", action="store_true", help="the tiny random model at 32 and 64, one run")
    args = parser.parse_args(argv)
    args.resolutions = args.resolutions or ([32, 64] if args.quick else [128, 256])
    args.runs = args.runs or (1 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"bench/extraction_gpu.py: device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {os.cpu_count()} CPUs, warp available {warp_available()}, {args.runs} runs per row; shared "
          f"machine (see load avg)", flush=True)
    started = time.perf_counter()
    with torch.inference_mode():
        model, scene_code = load_model(args)
        print(f"model ({'tiny' if args.quick else 'full'} random{'' if args.ckpt_dir is None else ', loaded'}) and "
              f"scene code in {time.perf_counter() - started:.1f} s", flush=True)
        for resolution in args.resolutions:
            bench_resolution(model, scene_code, resolution, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
