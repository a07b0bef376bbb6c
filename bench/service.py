"""Benchmark of the service: N jobs through the Ray Serve graph versus `process_job` in one process.

    python bench/service.py [--model tiny|full] [--jobs 8] [--quality fast] [--json costs.json]

Runs on this machine with real components: a redis-server on a free port, a local HTTP server for the
photos and the webhooks, a local Ray with one logical GPU, the tiny ONNX matting model, and the tiny
TripoSR fixture (or a full-size random checkpoint, ~1.7 GB written to a temp dir). Prints:
  * in-process: per-stage seconds (p50 / p95) and total per job, jobs run one after another;
  * graph, one job at a time: end-to-end latency per job and its overhead over the in-process run;
  * graph, N jobs at once: throughput (jobs/min) and p50 / p95 latency per stage.
With --json PATH it also writes what it measured (per-stage p50 / p95 / mean of every run, the N-at-once
wall time, the replica configuration used, and the Redis commands and bytes per job) for
`bench/capacity.py`. Asserts nothing; the numbers depend on what else the machine is doing.
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
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.testing.graph import RAY_ENV, Backend, replica_pids, small_options, wait_for
from pipeline.testing.matting_model import make_product_photo, write_tiny_matting_onnx
from pipeline.testing.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SHOP3D_SHARED", REPO.parent / "shared"))
TINY_FIXTURE_DIR = SHARED_DIR / "triposr" / "fixtures" / "tiny"
MAX_INFLIGHT = 4
IDLE_WINDOW_S = 10.0   # --json: Redis commands counted with the graph idle, subtracted as background


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarise(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """stage -> (p50, p95) seconds over jobs."""
    stages = sorted({stage for row in rows for stage in row})
    return {s: (statistics.median([r[s] for r in rows if s in r]), percentile([r[s] for r in rows if s in r], 0.95))
            for s in stages}


def stage_costs(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """stage -> {p50_s, p95_s, mean_s} over jobs, for the JSON."""
    stages = sorted({stage for row in rows for stage in row})
    return {s: {"p50_s": statistics.median(v), "p95_s": percentile(v, 0.95), "mean_s": statistics.fmean(v)}
            for s in stages for v in [[r[s] for r in rows if s in r]]}


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


def replica_config(options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What each deployment ran with: the decorator's defaults with the bench's options applied."""
    from deployments.app import DEPLOYMENTS

    config: dict[str, Any] = {"max_inflight": MAX_INFLIGHT}
    for name, deployment in DEPLOYMENTS.items():
        applied: Any = deployment.options(**options.get(name, {}))
        settings = applied._deployment_config   # Serve keeps the merged options here; no public getter
        scaling = settings.autoscaling_config
        config[name] = {
            "max_ongoing_requests": settings.max_ongoing_requests,
            "min_replicas": scaling.min_replicas if scaling else applied.num_replicas,
            "max_replicas": scaling.max_replicas if scaling else applied.num_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests if scaling else None,
            "user_config": settings.user_config, "ray_actor_options": applied.ray_actor_options}
    return config


def redis_commands(client: Any) -> Counter[str]:
    """Calls of each command Redis has run so far, those inside Lua scripts included (INFO commandstats)."""
    return Counter({name.removeprefix("cmdstat_"): int(entry["calls"])
                    for name, entry in client.info("commandstats").items()})


def redis_per_job(client: Any, ids: list[str], commands: Counter[str], seconds: float) -> dict[str, Any]:
    """Commands per job (less the background rate measured idle) and the bytes each job keeps in Redis."""
    before = redis_commands(client)
    time.sleep(IDLE_WINDOW_S)
    idle = redis_commands(client) - before
    idle["info"] -= 1   # the INFO call that read the counters
    idle_per_s = idle.total() / IDLE_WINDOW_S
    state_bytes = [int(client.memory_usage(f"shop3d:job:{job_id}", samples=0)) for job_id in ids]   # exact, not sampled
    return {"commands_per_job": (commands.total() - idle_per_s * seconds) / len(ids),
            "commands_in_window": dict(commands.most_common()), "idle_commands_per_s": idle_per_s,
            "idle_commands": dict(idle.most_common()), "window_s": seconds,
            "state_bytes_per_job": statistics.fmean(state_bytes),
            "message_bytes": len(json.dumps(job_fields(ids[0], "http://127.0.0.1:1/mug.jpg", "balanced")))}


def through_graph(model_dir: Path, matting: Path, backend: Backend, redis_url: str, url: str, jobs: int,
                  quality: str, measure: bool = False) -> tuple[list[dict[str, float]], list[dict[str, float]], float,
                                                               dict[str, Any]]:
    import ray
    import redis
    from ray import serve

    from deployments.app import build_app
    from deployments.settings import AppArgs

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024**2)
    args = AppArgs(redis_url=redis_url, tsr_model=str(model_dir), rembg_model=str(matting), allow_private_urls=True,
                   local_storage_dir=backend.storage_dir, max_inflight=MAX_INFLIGHT)
    options = small_options()
    serve.run(build_app(args, options), name="bench", route_prefix=None)
    client = redis.Redis.from_url(redis_url)

    own: Counter[str] = Counter()   # the bench's own polls, not part of a job's Redis load

    def completed(job_id: str) -> bool:
        own["hget"] += 1
        return bool(client.hget(f"shop3d:job:{job_id}", "status") == b"completed")

    def run(ids: list[str]) -> list[dict[str, float]]:
        pushed_at = time.time()
        for job_id in ids:
            client.lpush("celery", json.dumps(job_fields(job_id, url, quality)))
        wait_for(lambda: all(completed(j) for j in ids), "jobs completed", timeout_s=3600, every_s=0.1)
        own["hgetall"] += len(ids)
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
        commands = redis_commands(client)
        own.clear()
        ingress_cpu = process_cpu_seconds("bench", "Ingress")
        started = time.perf_counter()
        concurrent = run(ids)
        wall = time.perf_counter() - started
        ingress_cpu = process_cpu_seconds("bench", "Ingress") - ingress_cpu
        per_job = ingress_cpu / len(ids)
        print(f"\nIngress replica CPU over the {len(ids)} jobs: {ingress_cpu:.2f} s = {per_job * 1000:.0f} ms per job; "
              f"one Ingress saturates its core at about {1 / per_job:.0f} jobs/s")
        measured: dict[str, Any] = {}
        if measure:
            commands = redis_commands(client) - commands - own
            commands["info"] -= 1
            measured = {"replicas": replica_config(options), "redis": redis_per_job(client, ids, commands, wall),
                        "ingress_cpu_s_per_job": ingress_cpu / len(ids)}
    finally:
        serve.shutdown()
        ray.shutdown()
        client.close()
    return sequential, concurrent, wall, measured


def process_cpu_seconds(app: str, deployment: str) -> float:
    """User + system CPU seconds so far of the deployment's replica processes, from /proc."""
    ticks = 0
    for pid in replica_pids(app, deployment):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])   # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def write_json(path: Path, args: argparse.Namespace, local: list[dict[str, float]],
               sequential: list[dict[str, float]], concurrent: list[dict[str, float]], wall: float,
               measured: dict[str, Any]) -> None:
    """The measurements `bench/capacity.py` reads (seconds; rows are per job)."""
    prepare = statistics.median([r["prepare"] for r in local])
    overhead = [g["overhead"] - prepare for g in sequential]
    report = {"model": args.model, "quality": args.quality, "jobs": args.jobs, "cpus": os.cpu_count(),
              "in_process": stage_costs(local), "graph_one_at_a_time": stage_costs(sequential),
              "graph_all_at_once": stage_costs(concurrent), "all_at_once_wall_s": wall,
              "graph_overhead_s": {"p50_s": statistics.median(overhead), "p95_s": percentile(overhead, 0.95),
                                   "mean_s": statistics.fmean(overhead)},
              "rows": {"in_process": local, "graph_one_at_a_time": sequential, "graph_all_at_once": concurrent},
              **measured}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--quality", choices=("fast", "balanced", "quality"), default="fast")
    parser.add_argument("--json", type=Path, help="also write the measurements here, for bench/capacity.py")
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
            sequential, concurrent, wall, measured = through_graph(
                model_dir, matting, backend, redis_server.url, url, args.jobs, args.quality, measure=bool(args.json))
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
    if args.json:
        write_json(args.json, args, local, sequential, concurrent, wall, measured)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
