"""Benchmark: fast vs dense extraction side by side in one process, on several full-size random surfaces.

    python bench/extraction_ratio.py [--seeds 0 1 2] [--images disc] [--resolution 256] [--runs 2]
                                     [--ckpt-root DIR]

A surface is one full-size random checkpoint (seed) run on one input image; each seed's checkpoint (1.7 GB)
is written to --ckpt-root/seed-N (reused when present) or a temp dir removed after use, and only one model
is held at a time. Per surface it prints faces, dense and fast wall seconds (min over --runs, the two
methods alternating), their wall and CPU-time ratios and the identity checks (face and vertex counts,
the largest distance from a vertex of either mesh to the other's nearest vertex), then the minimum ratio.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from scipy.spatial import cKDTree

from pipeline.errors import JobRejected
from pipeline.isosurface.extraction import ExtractionMethod, extract_mesh_with_stats
from pipeline.mesh_arrays import MeshArrays
from pipeline.model.random_checkpoint import make_stripes_image


def disc_image(size: int) -> torch.Tensor:
    from pipeline.model.random_checkpoint import make_calibration_image

    return make_calibration_image(size)


def two_discs_image(size: int) -> torch.Tensor:
    """Two overlapping discs of different colours, off centre: a different scene code from the same weights."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    image = torch.full((size, size, 3), 127 / 255)
    for (cy, cx), radius, colour in (((-0.1, -0.12), 0.22, (0.1, 0.3, 0.85)), ((0.12, 0.1), 0.18, (0.9, 0.8, 0.1))):
        inside = (coords[:, None] - cy) ** 2 + (coords[None, :] - cx) ** 2 < radius**2
        image[inside] = torch.tensor(colour)
    return image[None]




IMAGES: dict[str, Callable[[int], torch.Tensor]] = {"disc": disc_image, "two-discs": two_discs_image,
                                                     "stripes": make_stripes_image}


def vertex_distances(fast: MeshArrays, dense: MeshArrays) -> tuple[float, float]:
    """(max over fast vertices of the distance to the nearest dense vertex, and the same dense -> fast)."""
    return (float(cKDTree(dense.vertices).query(fast.vertices)[0].max()),
            float(cKDTree(fast.vertices).query(dense.vertices)[0].max()))


def time_extraction(model: Any, scene_code: torch.Tensor, resolution: int,
                    method: ExtractionMethod) -> tuple[MeshArrays, float, float, int]:
    """(mesh, wall s, CPU s of this process (all threads; less sensitive to other work), points queried)."""
    started, cpu = time.perf_counter(), time.process_time()
    mesh, stats = extract_mesh_with_stats(model, scene_code, resolution, method=method)
    return mesh, time.perf_counter() - started, time.process_time() - cpu, stats.points_queried


def measure_surface(label: str, model: Any, scene_code: torch.Tensor, args: argparse.Namespace) -> float:
    """Print one surface's row; returns dense/fast (min wall over the runs)."""
    walls: dict[str, list[float]] = {"dense": [], "fast": []}
    cpus: dict[str, list[float]] = {"dense": [], "fast": []}
    meshes: dict[str, MeshArrays] = {}
    points: dict[str, int] = {}
    for _ in range(args.runs):
        for method in ("dense", "fast"):
            mesh, wall, cpu, queried = time_extraction(model, scene_code, args.resolution, method)  # type: ignore[arg-type]
            walls[method].append(wall)
            cpus[method].append(cpu)
            meshes[method], points[method] = mesh, queried
    dense, fast = meshes["dense"], meshes["fast"]
    ratio = min(walls["dense"]) / min(walls["fast"])
    fast_to_dense, dense_to_fast = vertex_distances(fast, dense)
    identical = (fast.n_faces == dense.n_faces and fast.n_vertices == dense.n_vertices
                 and max(fast_to_dense, dense_to_fast) <= 1e-6)
    print(f"  {label:22s} faces {dense.n_faces:>9,} | dense {min(walls['dense']):6.2f} s | fast "
          f"{min(walls['fast']):5.2f} s | ratio {ratio:4.2f}x wall, "
          f"{min(cpus['dense']) / min(cpus['fast']):4.2f}x cpu | points {points['fast']:>9,} "
          f"({points['fast'] / points['dense']:5.2%}) | fast faces {fast.n_faces:,} vertices {fast.n_vertices:,} "
          f"vs {dense.n_vertices:,} | max vertex distance fast->dense {fast_to_dense:.1e} dense->fast "
          f"{dense_to_fast:.1e} | {'IDENTICAL' if identical else 'DIFFERENT'} | load avg {os.getloadavg()[0]:.1f}")
    sys.stdout.flush()
    return ratio


def checkpoint_dir(seed: int, root: Path) -> Path:
    from pipeline.model.random_checkpoint import write_random_checkpoint

    target = root / f"seed-{seed}"
    if not (target / "model.ckpt").is_file():
        write_random_checkpoint(target, "full", seed=seed)
    return target


def measure_seed(seed: int, root: Path, args: argparse.Namespace) -> list[float]:
    from pipeline.model import load_pretrained

    model = load_pretrained(checkpoint_dir(seed, root))
    ratios = []
    for image in args.images:
        with torch.inference_mode():
            scene_code = model(IMAGES[image](model.config.cond_image_size))[0].clone()
        try:
            ratios.append(measure_surface(f"seed {seed} image {image}", model, scene_code, args))
        except JobRejected as rejected:  # some seed/image pairs have no surface at the threshold
            print(f"  seed {seed} image {image}: skipped, {rejected}")
    return ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", nargs="+", default=["disc"], choices=sorted(IMAGES))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--ckpt-root", type=Path, default=None, help="keep (and reuse) checkpoints here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"bench/extraction_ratio.py: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, R={args.resolution}, min of {args.runs} runs per method, dense and fast "
          f"alternating in one process (shared machine: see load avg)")
    owned = args.ckpt_root is None
    root: Path = Path(tempfile.mkdtemp(prefix="bench-ratio-")) if owned else args.ckpt_root
    ratios: list[float] = []
    try:
        for seed in args.seeds:
            ratios += measure_seed(seed, root, args)
            if owned:
                shutil.rmtree(root / f"seed-{seed}", ignore_errors=True)  # one 1.7 GB checkpoint at a time
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    print(f"minimum fast/dense ratio over {len(ratios)} surfaces: {min(ratios):.2f}x "
          f"(all: {', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
