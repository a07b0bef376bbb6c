"""Benchmark of our TripoSR on a full-size random checkpoint: load, forward, point queries, extraction.

    python bench/model.py [--ckpt-dir DIR] [--runs 3] [--batch-sizes 1 4] [--resolutions 128 256 384]

Prints numbers and asserts nothing. Each measurement group runs in its own subprocess, and the peak RSS
(VmHWM) is reset before each measurement where the kernel allows (/proc/self/clear_refs), so peaks do
not leak from one measurement into the next. Without --ckpt-dir a random checkpoint is made in a temp dir.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.testing.measure import reset_peak_rss, rss_bytes

GIB = 1024 ** 3
_RESULT = "RESULT "


def peak_rss_bytes() -> int:
    return rss_bytes("VmHWM")


def timed_runs(action: Callable[[], Any], runs: int) -> dict[str, float]:
    """min / median seconds of `runs` calls, and the peak RSS over them."""
    reset_peak_rss()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return {"min_s": min(seconds), "median_s": statistics.median(seconds), "runs": runs,
            "peak_rss": peak_rss_bytes()}


# ---------------------------------------------------------------- workers (run in subprocesses)

def work_load(args: argparse.Namespace) -> dict[str, Any]:
    """Ours (meta device + mmap + assign) or the straightforward road (allocate, torch.load, copy in)."""
    import torch

    from pipeline.model import load_pretrained
    from pipeline.model.checkpoint import load_config
    from pipeline.model.tsr import TripoSR

    directory = Path(args.ckpt_dir)
    reset_peak_rss()
    started = time.perf_counter()
    if args.baseline:
        model = TripoSR(load_config(directory / "config.yaml", directory))
        model.load_state_dict(torch.load(directory / "model.ckpt", map_location="cpu", weights_only=True))
    else:
        model = load_pretrained(directory)
    return {"seconds": time.perf_counter() - started, "peak_rss": peak_rss_bytes(),
            "params": sum(p.numel() for p in model.parameters())}


def work_forward(args: argparse.Namespace) -> dict[str, Any]:
    """First call, then `runs` timed forwards per batch size; --baseline forces the math (naive) attention."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pipeline.model import load_pretrained
    from pipeline.model.random_checkpoint import make_calibration_image

    model = load_pretrained(args.ckpt_dir)
    image = make_calibration_image(model.config.cond_image_size)
    context = sdpa_kernel(SDPBackend.MATH) if args.baseline else contextlib.nullcontext()
    results: dict[str, Any] = {}
    with context:
        results["first_call"] = timed_runs(lambda: model(image), 1)
        for batch in args.batch_sizes:
            images = image.expand(batch, -1, -1, -1).contiguous()
            results[f"B={batch}"] = timed_runs(lambda images=images: model(images), args.runs)
    return results


def work_extract(args: argparse.Namespace) -> dict[str, Any]:
    """Query throughput, then extraction per (resolution, method) on the calibration image's scene code."""
    from pipeline.model import load_pretrained
    from pipeline.model.random_checkpoint import grid_points, make_calibration_image

    model = load_pretrained(args.ckpt_dir)
    scene_code = model(make_calibration_image(model.config.cond_image_size))[0]
    points = grid_points(128, model.renderer_radius)
    results: dict[str, Any] = {"query_128^3": timed_runs(lambda: model.query(scene_code, points), args.runs)}
    try:
        from pipeline.isosurface.extraction import extract_mesh_with_stats
    except ImportError as exc:
        results["extraction"] = f"skipped: pipeline.isosurface.extraction unavailable ({exc})"
        return results
    for resolution in args.resolutions:
        for method in args.methods:
            seconds, peaks = [], []
            for _ in range(args.runs):
                reset_peak_rss()
                started = time.perf_counter()
                mesh, stats = extract_mesh_with_stats(model, scene_code, resolution, 25.0, method=method,
                                                      chunk_size=args.chunk_size)
                seconds.append(time.perf_counter() - started)
                peaks.append(peak_rss_bytes())
                faces, vertices = mesh.n_faces, mesh.n_vertices
                del mesh
            results[f"R={resolution} {method}"] = {
                "min_s": min(seconds), "median_s": statistics.median(seconds), "runs": args.runs,
                "points_queried": stats.points_queried, "faces": faces, "vertices": vertices,
                "peak_rss": max(peaks)}
    return results


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "load": work_load, "forward": work_forward, "extract": work_extract}


# ---------------------------------------------------------------- driver

def run_worker(kind: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run one worker in a fresh interpreter and return its JSON result (or its error text)."""
    command = [sys.executable, __file__, "--worker", kind, "--ckpt-dir", str(args.ckpt_dir),
               "--runs", str(args.runs), "--chunk-size", str(args.chunk_size),
               "--batch-sizes", *map(str, args.batch_sizes), "--resolutions", *map(str, args.resolutions),
               "--methods", *args.methods, *extra]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    return {"error": f"worker {kind} exited {done.returncode}: {done.stderr.strip()[-2000:]}"}


def repeated_worker(kind: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """`args.runs` fresh processes of one worker (a load is only cold once per process): min / median seconds."""
    results = [run_worker(kind, args, *extra) for _ in range(args.runs)]
    if any("error" in result for result in results):
        return next(result for result in results if "error" in result)
    seconds = [result["seconds"] for result in results]
    return {"min_s": min(seconds), "median_s": statistics.median(seconds), "runs": args.runs,
            "peak_rss": max(result["peak_rss"] for result in results)}


def describe(name: str, result: Any) -> str:
    if not isinstance(result, dict):
        return f"  {name}: {result}"
    parts = []
    for key, value in result.items():
        if key.endswith("rss"):
            parts.append(f"{key} {value / GIB:.2f} GiB")
        elif key.endswith("_s") or key == "seconds":
            parts.append(f"{key} {value:.2f}")
        elif isinstance(value, int):
            parts.append(f"{key} {value:,}")
        else:
            parts.append(f"{key} {value}")
    return f"  {name}: " + ", ".join(parts)


def print_group(title: str, result: dict[str, Any]) -> None:
    print(title)
    nested = all(isinstance(value, dict) for value in result.values()) and "error" not in result
    for name, value in (result.items() if nested else [("result", result)]):
        print(describe(name, value))
    sys.stdout.flush()


def drive(args: argparse.Namespace) -> None:
    import torch

    print(f"bench/model.py: torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs (shared machine: other work may be running), CPU float32")
    with tempfile.TemporaryDirectory(prefix="bench-model-") as scratch:
        if args.ckpt_dir is None:
            # In a subprocess, so this driver does not keep the maker's 1.7 GB heap while workers run.
            started = time.perf_counter()
            args.ckpt_dir = Path(scratch) / "full"
            subprocess.run([sys.executable, "-m", "pipeline.model.random_checkpoint", "--size", "full",
                            str(args.ckpt_dir)], check=True, capture_output=True)
            print(f"made a full-size random checkpoint in {time.perf_counter() - started:.1f} s")
        size = (Path(args.ckpt_dir) / "model.ckpt").stat().st_size
        print(f"checkpoint {args.ckpt_dir}/model.ckpt: {size / GIB:.2f} GiB")
        print_group("load (ours: meta device + mmap + assign), one fresh process per run",
                    repeated_worker("load", args))
        print_group("load (straightforward: allocate, torch.load, load_state_dict copy)",
                    repeated_worker("load", args, "--baseline"))
        print_group("forward (ours: SDPA attention)", run_worker("forward", args))
        if not args.skip_baseline:
            # B=1 only: math attention materialises (B, 16, 3072, 3072) scores, 2.4 GB per image.
            baseline_args = argparse.Namespace(**{**vars(args), "batch_sizes": [1]})
            print_group("forward B=1 (straightforward float32: math attention)",
                        run_worker("forward", baseline_args, "--baseline"))
        if not args.skip_extraction:
            print_group("query + extraction (threshold 25)", run_worker("extract", args))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, default=None, help="a full-size checkpoint directory")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 384])
    parser.add_argument("--methods", nargs="+", default=["dense", "fast"], choices=["dense", "fast"])
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        from pipeline.model import set_num_threads

        set_num_threads(args.threads)
        print(_RESULT + json.dumps(WORKERS[args.worker](args)))
        return 0
    drive(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
