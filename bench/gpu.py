"""The one-shot GPU proof: everything the GPU tier claims, measured in one prepared run.

    python bench/gpu.py [--device cuda|cpu] [--quick] [--out DIR] [--replicas 4]

Writes DIR/gpu.json and DIR/gpu.txt (default: bench-out/). Sections, each timed and each allowed to fail
on its own (its error is recorded and the run goes on, so one surprise does not waste a lent GPU):

1. environment: GPU, driver, torch, compute capability, bf16 support, the float32 precision flags;
2. parity on the tiny fixture against the official outputs: float32 without and with TF32, bf16 autocast;
3. the full-size forward at B = 1, 2, 4, 8 in float32 and autocast, CUDA-synchronised, with memory;
4. extraction dense vs fast vs gpu at 128^3 / 256^3 / 384^3: seconds, faces, agreement;
5. bf16 autocast against float32 on the full-size model: scene-code error, density sign flips, faces,
   Chamfer distance of the meshes;
6. `reconstruct_meshes` at B = 4 with its stage breakdown; the pickled results hold no tensor;
7. replica-like processes side by side, each capped at its memory fraction: throughput, per-process peak;
8. the out-of-memory path: which code comes out under a tiny memory cap, and that the next call recovers.

`--device cpu --quick` runs the same code paths on the CPU with the tiny fixture and small grids in a
few minutes, so the script is proven before a GPU is lent. On the CPU, section 8 injects the OOM at the
device boundary (pipeline.testing.faulty_model) since there is no allocator cap to hit. Prints numbers and
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pickle
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.isosurface.extraction import extract_mesh_with_stats
from pipeline.model import TripoSR, load_pretrained
from pipeline.model.device import (
    cap_process_memory,
    empty_cache,
    memory_fraction,
    peak_memory_bytes,
    reset_peak_memory,
    set_float32_precision,
    synchronize,
)
from pipeline.model.random_checkpoint import make_calibration_image, random_model
from pipeline.reconstruct import Reconstruction, model_batch, reconstruct_meshes, warm_start
from pipeline.testing.measure import reset_peak_rss, rss_bytes

REPO = Path(__file__).resolve().parents[1]
TINY_FIXTURE = REPO.parent / "shared" / "triposr" / "fixtures" / "tiny"
GIB = 2**30


# ----------------------------------------------------------------------------------------- helpers

def timed(action: Callable[[], Any], device: torch.device, runs: int) -> tuple[Any, dict[str, float]]:
    """The last result and min/median seconds of `runs` calls, each closed by a device sync."""
    seconds, result = [], None
    for _ in range(runs):
        synchronize(device)
        started = time.perf_counter()
        result = action()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return result, {"min_s": round(min(seconds), 4), "median_s": round(statistics.median(seconds), 4), "runs": runs}


def memory(device: torch.device) -> dict[str, float]:
    """Allocated / reserved / peak GiB on CUDA; current and peak RSS on the CPU."""
    if device.type == "cuda":
        return {"allocated_gib": round(torch.cuda.memory_allocated(device) / GIB, 3),
                "reserved_gib": round(torch.cuda.memory_reserved(device) / GIB, 3),
                "peak_gib": round((peak_memory_bytes(device) or 0) / GIB, 3)}
    return {"rss_gib": round(rss_bytes("VmRSS") / GIB, 3), "peak_rss_gib": round(rss_bytes("VmHWM") / GIB, 3)}


def reset_peaks(device: torch.device) -> None:
    reset_peak_memory(device)
    if device.type == "cpu":
        reset_peak_rss()


def framed_images(count: int) -> list[np.ndarray]:
    """`count` different framed uint8 product-like pictures (the calibration picture, shifted)."""
    base = (make_calibration_image()[0].numpy() * 255).round().astype(np.uint8)
    return [np.roll(base, shift=17 * i, axis=1) for i in range(count)]


def model_input(model: TripoSR, count: int) -> torch.Tensor:
    """`count` framed pictures as the model's (B, S, S, 3) input, on the CPU."""
    return model_batch(model, framed_images(count))


def the_model(args: argparse.Namespace, device: torch.device, *, autocast: bool) -> TripoSR:
    """The tiny fixture (--quick) or a full-size random TripoSR (the released architecture and cost);
    `autocast` as a CUDA replica runs it, else float32 (its autocast_dtype may be switched on later)."""
    if args.quick:
        model = load_pretrained(TINY_FIXTURE, device, chunk_size=args.chunk_size, precision="float32")
    else:
        model = random_model("full", seed=args.seed).to(device)
        model.chunk_size = args.chunk_size
    if autocast:   # as load_pretrained does on CUDA: bf16 autocast, its weights stored cast
        model.autocast_dtype = torch.bfloat16
        model.store_autocast_weights()
    return model.eval()


def chamfer(a: np.ndarray, b: np.ndarray, samples: int = 200_000) -> float:
    """Symmetric mean nearest-vertex distance between two vertex sets (subsampled), in model units."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    a = a[rng.choice(len(a), min(samples, len(a)), replace=False)]
    b = b[rng.choice(len(b), min(samples, len(b)), replace=False)]
    return float((cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2)


def nearest_both_ways(a: np.ndarray, b: np.ndarray) -> float:
    """The larger of max-over-a of the distance to b and max-over-b of the distance to a."""
    from scipy.spatial import cKDTree

    return float(max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max()))


# ----------------------------------------------------------------------------------------- sections

def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "device": str(device), "quick": args.quick}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / GIB, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported(), gpus=torch.cuda.device_count())
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            check=False, capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError as exc:
            info["driver"] = f"unknown ({type(exc).__name__})"
    else:
        info.update(cpu_threads=torch.get_num_threads(), bf16_cpu=True)
    set_float32_precision()
    info["fp32_precision"] = {"matmul": torch.backends.cuda.matmul.fp32_precision,
                              "cudnn_conv": torch.backends.cudnn.conv.fp32_precision}  # type: ignore[attr-defined]
    try:
        import warp

        info["warp"] = warp.__version__
    except ImportError:
        info["warp"] = None
    return info


def tiny_parity(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Max abs error of scene codes and point densities against the official outputs, per precision."""
    with np.load(TINY_FIXTURE / "reference.npz") as arrays:
        reference = {name: arrays[name] for name in ("image", "scene_codes", "query_points", "query_density_act")}
    image = torch.from_numpy(reference["image"]).float().div(255)[None].to(device)
    points = torch.from_numpy(reference["query_points"]).to(device)
    model = load_pretrained(TINY_FIXTURE, device, precision="float32")   # autocast switched per row below
    result: dict[str, Any] = {}
    for name, precision, autocast in (("fp32_ieee", "ieee", False), ("fp32_tf32", "tf32", False),
                                      ("bf16_autocast", "ieee", True)):
        set_float32_precision(precision)
        model.autocast_dtype = torch.bfloat16 if autocast else None
        with torch.no_grad():
            codes = model(image)
            density, _ = model.query(codes[0], points)
        result[name] = {
            "scene_code_max_abs": float(np.abs(codes.cpu().numpy() - reference["scene_codes"]).max()),
            "density_act_max_rel": float((np.abs(density.cpu().numpy() - reference["query_density_act"][:, 0])
                                          / np.abs(reference["query_density_act"][:, 0])).max())}
    set_float32_precision()
    stored = load_pretrained(TINY_FIXTURE, device, precision="float32")
    stored.autocast_dtype = torch.bfloat16
    stored.store_autocast_weights()
    model.autocast_dtype = torch.bfloat16
    with torch.no_grad():
        gap = (stored(image) - model(image)).abs().max()
    result["bf16_stored_weights_vs_per_forward_cast_max_abs"] = float(gap)
    return result


def forward_sweep(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for autocast in (False, True):
        model = the_model(args, device, autocast=autocast)
        label = "bf16_autocast" if autocast else "fp32"
        result[label] = {}
        for batch in args.batch_sizes:
            images = model_input(model, batch).to(device)
            empty_cache(device)
            reset_peaks(device)
            with torch.no_grad():
                _, times = timed(lambda model=model, images=images: model(images), device, args.runs)
            result[label][f"B{batch}"] = {**times, "per_image_s": round(times["median_s"] / batch, 4),
                                          **memory(device)}
        del model
        empty_cache(device)
    return result


def extraction_methods(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model = the_model(args, device, autocast=False)
    with torch.no_grad():
        scene_code = model(model_input(model, 1).to(device))[0]
    result: dict[str, Any] = {}
    for resolution in args.resolutions:
        row: dict[str, Any] = {}
        meshes = {}
        for method in ("dense", "fast", "gpu"):
            try:
                (mesh, stats), times = timed(lambda method=method, resolution=resolution: extract_mesh_with_stats(
                    model, scene_code, resolution, method=method, chunk_size=args.chunk_size), device, 1)
            except (ValueError, ImportError, RuntimeError) as exc:
                row[method] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                continue
            meshes[method] = mesh
            row[method] = {"s": times["min_s"], "faces": int(mesh.faces.shape[0]),
                           "points_queried": stats.points_queried}
        if "dense" in meshes:
            for method in ("fast", "gpu"):
                if method in meshes:
                    row[method]["speedup_vs_dense"] = round(row["dense"]["s"] / row[method]["s"], 2)
                    row[method]["max_vertex_gap"] = nearest_both_ways(meshes[method].vertices,
                                                                      meshes["dense"].vertices)
        result[f"R{resolution}"] = row
    return result


def bf16_against_fp32(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The same inputs through float32 and bf16 autocast: how far the surface moves."""
    model = the_model(args, device, autocast=False)
    image = model_input(model, 1).to(device)
    with torch.no_grad():
        reference = model(image)
        model.autocast_dtype = torch.bfloat16
        autocast = model(image)
        model.autocast_dtype = None
    error = (autocast - reference).abs()
    resolution = args.resolutions[min(1, len(args.resolutions) - 1)]
    radius = float(model.renderer_radius)
    axis = torch.linspace(-radius, radius, min(resolution, 128), device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        inside_fp32 = model.query(reference[0], grid)[0] > 25.0
        inside_bf16 = model.query(autocast[0], grid)[0] > 25.0
    mesh_fp32, _ = extract_mesh_with_stats(model, reference[0], resolution, method="fast", chunk_size=args.chunk_size)
    mesh_bf16, _ = extract_mesh_with_stats(model, autocast[0], resolution, method="fast", chunk_size=args.chunk_size)
    return {"scene_code_max_abs": float(error.max()), "scene_code_mean_abs": float(error.mean()),
            "scene_code_std": float(reference.std()),
            "sign_flips": int((inside_fp32 != inside_bf16).sum()), "grid_points": int(grid.shape[0]),
            "resolution": resolution, "faces_fp32": int(mesh_fp32.faces.shape[0]),
            "faces_bf16": int(mesh_bf16.faces.shape[0]),
            "chamfer": chamfer(mesh_fp32.vertices, mesh_bf16.vertices), "chamfer_units": "model units (radius "
            f"{radius:g})"}


def reconstruct_batch4(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model = the_model(args, device, autocast=device.type == "cuda")
    warm = warm_start(model, 1.0 if device.type == "cuda" else 0.0)
    images = framed_images(4)
    resolution = args.resolutions[0]
    runs = []
    for _ in range(args.runs):
        reset_peaks(device)
        started = time.perf_counter()
        results = reconstruct_meshes(model, images, [resolution] * 4, chunk_size=args.chunk_size)
        wall = time.perf_counter() - started
        done = [r for r in results if isinstance(r, Reconstruction)]
        runs.append({"wall_s": round(wall, 4), "forward_s": round(done[0].forward_s, 4) if done else None,
                     "extract_s": [round(r.extract_s, 4) for r in done], "ok": len(done), **memory(device)})
    pickled = pickle.dumps(results)
    return {"warmup_s": round(warm.warmup_s, 3), "resolution": resolution, "runs": runs,
            "gpu_stage_per_job_p50_s": round(statistics.median(run["wall_s"] for run in runs) / 4, 4),
            "pickled_bytes": len(pickled), "pickle_mentions_torch": b"torch" in pickled}


def _replica(args: argparse.Namespace, device_name: str, share: float, jobs: int, queue: Any) -> None:
    """One replica-like process: its memory cap, a warm start, then `jobs` images in batches of 4."""
    try:
        device = torch.device(device_name)
        model = the_model(args, device, autocast=device.type == "cuda")
        fraction = cap_process_memory(device, memory_fraction(share))
        warm_start(model, share if device.type == "cuda" else 0.0)
        reset_peaks(device)
        images = framed_images(4)
        started = time.perf_counter()
        done = 0
        while done < jobs:
            results = reconstruct_meshes(model, images, [args.resolutions[0]] * 4, chunk_size=args.chunk_size)
            done += sum(isinstance(r, Reconstruction) for r in results)
        queue.put({"jobs": done, "seconds": time.perf_counter() - started, "fraction": fraction, **memory(device)})
    except Exception as exc:   # reported, not raised: the parent collects every replica's outcome
        queue.put({"error": f"{type(exc).__name__}: {exc}"[:300]})


def concurrent_replicas(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    share = 1.0 / args.replicas
    processes = [context.Process(target=_replica, args=(args, str(device), share, args.jobs_per_replica, queue))
                 for _ in range(args.replicas)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    outcomes = [queue.get(timeout=args.section_timeout_s) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    wall = time.perf_counter() - started
    jobs = sum(o.get("jobs", 0) for o in outcomes)
    busiest = max((o.get("seconds", 0.0) for o in outcomes), default=0.0)
    return {"replicas": args.replicas, "share": share, "outcomes": outcomes, "wall_s_with_start": round(wall, 2),
            "jobs": jobs, "jobs_per_s": round(jobs / busiest, 3) if busiest else None}


def out_of_memory_path(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """A real allocator cap on CUDA; an injected OOM at the device boundary on the CPU."""
    model = the_model(args, device, autocast=device.type == "cuda")
    images = framed_images(2)
    resolution = args.resolutions[0]
    if device.type == "cuda":
        cap_process_memory(device, 0.002)
        squeezed = reconstruct_meshes(model, images, [resolution] * 2, chunk_size=args.chunk_size)
        cap_process_memory(device, memory_fraction(1.0))
        empty_cache(device)
        runner: TripoSR = model
    else:
        from pipeline.testing.faulty_model import Faults, FaultyModel

        squeezed = reconstruct_meshes(FaultyModel(model, Faults(forward_oom_from_batch=1)), images,
                                      [resolution] * 2, chunk_size=args.chunk_size)
        runner = model
    recovered = reconstruct_meshes(runner, images, [resolution] * 2, chunk_size=args.chunk_size)
    return {"under_cap": [getattr(r, "code", "ok") for r in squeezed],
            "next_call": [getattr(r, "code", "ok") for r in recovered]}


SECTIONS: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "environment": environment, "tiny_parity": tiny_parity, "forward": forward_sweep,
    "extraction": extraction_methods, "bf16_vs_fp32": bf16_against_fp32, "reconstruct_b4": reconstruct_batch4,
    "replicas": concurrent_replicas, "out_of_memory": out_of_memory_path}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny fixture, small grids: proves the paths")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run these sections only")
    args = parser.parse_args(argv)
    args.chunk_size = 65536
    args.section_timeout_s = 600
    if args.quick:
        args.batch_sizes, args.resolutions, args.runs, args.jobs_per_replica = [1, 2, 4], [32, 64], 2, 8
        args.replicas = min(args.replicas, 2)
    else:
        args.batch_sizes, args.resolutions, args.runs, args.jobs_per_replica = [1, 2, 4, 8], [128, 256, 384], 3, 40
    return args


def report_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, section in results.items():
        lines.append(f"== {name} ({section.get('_seconds', '?')} s)")
        body = {k: v for k, v in section.items() if k != "_seconds"}
        lines.extend("  " + line for line in json.dumps(body, indent=1, default=str).splitlines())
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name, section in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        try:
            results[name] = section(args, device)
        except Exception as exc:   # one failing section must not cost the rest of a lent GPU's run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500], "traceback": traceback.format_exc()[-2000:]}
        results[name]["_seconds"] = round(time.perf_counter() - started, 1)
        print("\n".join(report_lines({name: results[name]})), flush=True)
        (args.out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))   # partial results survive
    (args.out / "gpu.txt").write_text("\n".join(report_lines(results)) + "\n")
    failed = [name for name, section in results.items() if "error" in section]
    print(f"sections: {len(results)}, failed: {failed or 'none'}; wrote {args.out / 'gpu.json'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
