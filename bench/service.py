"""Benchmark of the service: N jobs through the Ray Serve graph versus `process_job` in one process.

    python bench/service.py [--model tiny|full] [--jobs 8] [--quality fast]

Runs on this machine with real components: a redis-server on a free port, a local HTTP server for the
photos and the webhooks, a local Ray with one logical GPU, the tiny ONNX matting model, and the tiny
TripoSR fixture (or a full-size random checkpoint, ~1.7 GB written to a temp dir). Prints:
  * in-process: per-stage seconds (p50 / p95) and total per job, jobs run one after another;
  * graph, one job at a time: end-to-end latency per job and its overhead over the in-process run;
  * graph, N jobs at once: throughput (jobs/min) and p50 / p95 latency per stage.
Asserts nothing; the numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.testing.graph import RAY_ENV, Backend, small_options, wait_for
from pipeline.testing.matting_model import make_product_photo, write_tiny_matting_onnx
from pipeline.testing.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SHOP3D_SHARED", REPO.parent / "shared"))
TINY_FIXTURE_DIR = SHARED_DIR / "triposr" / "fixtures" / "tiny"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarise(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """stage -> (p50, p95) seconds over jobs."""
    stages = sorted({stage for row in rows for stage in row})
    return {s: (statistics.median([r[s] for r in rows if s in r]), percentile([r[s] for r in rows if s in r], 0.95))
            for s in stages}


def print_table(title: str, table: dict[str, tuple[float, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'stage':<10} {'p50 s':>8} {'p95 s':>8}")
    for stage, (p50, p95) in table.items():
        print(f"  {stage:<10} {p50:8.3f} {p95:8.3f}")


def make_model(kind: str, work: Path) -> Path:
    if kind == "tiny":
        target = work / "tiny"
        shutil.copytree(TINY_FIXTURE_DIR, target)
        return target
    from pipeline.model.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(work / "full", "full")


def job_fields(job_id: str, url: str, quality: str) -> dict[str, Any]:
    return {"job_id": job_id, "shop": "bench.myshopify.com", "product_id": "1", "product_handle": "mug",
            "image_urls": [url], "quality": quality}


async def in_process(model_dir: Path, matting: Path, backend: Backend, url: str, jobs: int,
                     quality: str) -> list[dict[str, float]]:
    from pipeline.delivery.storage import LocalObjectStore
    from pipeline.intake.download import DownloadPolicy, make_http_client
    from pipeline.intake.matting import BackgroundRemover
    from pipeline.jobs.envelopes import Job
    from pipeline.model import load_pretrained
    from pipeline.run.runner import Intake, Services, process_job
    from pipeline.run.stages import JobDefaults
    from pipeline.settings import Settings

    policy = DownloadPolicy(allow_private=True)
    store = LocalObjectStore(backend.storage_dir)
    store.ensure_ready()
    intake = Intake(BackgroundRemover(str(matting)), make_http_client(policy), policy, max_pixels=40_000_000)
    services = Services(model=load_pretrained(model_dir), intake=intake, store=store,
                        defaults=JobDefaults.from_settings(Settings(_env_file=None)))
    rows = []
    try:
        for index in range(jobs + 1):   # the first run warms up and is dropped
            started = time.perf_counter()
            result = await process_job(Job(**job_fields(f"inproc-{index}", url, quality)), services)
            row = dict(result.stats["timings_s"])
            row["total"] = time.perf_counter() - started
            if index:
                rows.append(row)
    finally:
        await services.aclose()
    return rows


def job_latency(pushed_at: float, state: dict[bytes, bytes]) -> float:
    """Seconds from the LPUSH to the job's recorded finish (both wall-clock, same machine)."""
    return datetime.fromisoformat(state[b"finished_at"].decode()).timestamp() - pushed_at


def through_graph(model_dir: Path, matting: Path, backend: Backend, redis_url: str, url: str, jobs: int,
                  quality: str) -> tuple[list[dict[str, float]], list[dict[str, float]], float]:
    import ray
    import redis
    from ray import serve

    from deployments.app import build_app
    from deployments.settings import AppArgs

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024**2)
    args = AppArgs(redis_url=redis_url, tsr_model=str(model_dir), rembg_model=str(matting), allow_private_urls=True,
                   local_storage_dir=backend.storage_dir, max_inflight=4)
    serve.run(build_app(args, small_options()), name="bench", route_prefix=None)
    client = redis.Redis.from_url(redis_url)

    def run(ids: list[str]) -> list[dict[str, float]]:
        pushed_at = time.time()
        for job_id in ids:
            client.lpush("celery", json.dumps(job_fields(job_id, url, quality)))
        wait_for(lambda: all(client.hget(f"shop3d:job:{j}", "status") == b"completed" for j in ids),
                 "jobs completed", timeout_s=3600, every_s=0.1)
        rows = []
        for job_id in ids:
            state = client.hgetall(f"shop3d:job:{job_id}")
            row = dict(json.loads(state[b"stats"])["timings_s"])
            row["total"] = job_latency(pushed_at, state)
            row["overhead"] = row["total"] - sum(row[k] for k in ("forward", "extract", "export", "upload"))
            rows.append(row)
        return rows

    try:
        run(["graph-warmup"])
        sequential = [run([f"graph-seq-{i}"])[0] for i in range(jobs)]
        ids = [f"graph-par-{i}" for i in range(jobs)]
        started = time.perf_counter()
        concurrent = run(ids)
        wall = time.perf_counter() - started
    finally:
        serve.shutdown()
        ray.shutdown()
        client.close()
    return sequential, concurrent, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--quality", choices=("fast", "balanced", "quality"), default="fast")
    args = parser.parse_args()
    os.environ.update(RAY_ENV)
    with tempfile.TemporaryDirectory(prefix="shop3d-bench-") as tmp:
        work = Path(tmp)
        os.environ["U2NET_HOME"] = str(work / "u2net")
        matting = write_tiny_matting_onnx(work / "u2net" / "models" / "tiny.onnx")
        model_dir = make_model(args.model, work)
        redis_server = RedisServer(work)
        redis_server.start()
        backend = Backend(work / "objects")
        url = backend.server.serve_bytes("/mug.jpg", make_product_photo(640, 480), "image/jpeg")
        try:
            local = asyncio.run(in_process(model_dir, matting, backend, url, args.jobs, args.quality))
            sequential, concurrent, wall = through_graph(model_dir, matting, backend, redis_server.url, url,
                                                         args.jobs, args.quality)
        finally:
            backend.stop()
            redis_server.stop()
    print(f"\nshop3d service benchmark: model={args.model} quality={args.quality} jobs={args.jobs} "
          f"({os.cpu_count()} CPUs, no GPU)")
    print_table("in-process process_job, one job at a time", summarise(local))
    print_table("Ray Serve graph, one job at a time (total = LPUSH to completed; overhead = total minus the "
                "replicas' stage work)", summarise(sequential))
    in_process_total = statistics.median([r["total"] for r in local])
    graph_total = statistics.median([r["total"] for r in sequential])
    prepare = statistics.median([r["prepare"] for r in local])
    overhead = [g["overhead"] - prepare for g in sequential]
    print(f"\ngraph vs in-process, one job at a time: total p50 {graph_total:.3f}s vs {in_process_total:.3f}s")
    print(f"graph overhead per job (total - stage work in the replicas - in-process prepare p50): "
          f"p50 {statistics.median(overhead):.3f}s, p95 {percentile(overhead, 0.95):.3f}s")
    print_table(f"Ray Serve graph, {args.jobs} jobs pushed at once", summarise(concurrent))
    print(f"\nthroughput: {args.jobs / wall * 60:.1f} jobs/min ({wall:.1f}s for {args.jobs} jobs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
