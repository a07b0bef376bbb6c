"""A capacity plan from measured stage costs, a burst simulation, and a check of the model against a real run.

    python bench/capacity.py plan  --costs costs.json --jobs-per-day 1000000 --p95-s 300 --gpu-s-per-job 2.0
    python bench/capacity.py burst --costs costs.json --jobs-per-day 1000000 --p95-s 300 --gpu-s-per-job 2.0 \\
                                   --png docs/scaling-burst.png
    python bench/capacity.py check --costs tiny20.json     # bench/service.py --jobs 20 --json tiny20.json

`--costs` is what `bench/service.py --json` wrote: the CPU stages' seconds come from it (in-process, one
job at a time). No GPU was ever measured here, so the Reconstruct tier's GPU-seconds per job is an explicit
assumption (`--gpu-s-per-job`), as are the start-up times and the traffic shape; the plan prints which is which.
Autoscaling delays, targets, batch size and the GPU share come from serve_config.yaml. The formulas are
pipeline/capacity/plan.py; the simulation is pipeline/capacity/simulation.py.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.capacity import plan as cp
from pipeline.capacity.chart import burst_chart
from pipeline.capacity.graph import GraphModel, Scaling, ServiceTime, StageModel
from pipeline.capacity.simulation import burst_steps, percentile, poisson_arrivals, simulate
from pipeline.jobs.state import STATE_TTL_S

REPO = Path(__file__).resolve().parents[1]
STAGE_WORK = {"Matting": ("prepare",), "Reconstruct": ("forward", "extract"), "Publish": ("export", "upload")}
CHECK_TOLERANCE = 0.25


@dataclass(frozen=True)
class Costs:
    """What bench/service.py measured, per stage (seconds of one job alone on one replica)."""

    source: str
    stages: dict[str, ServiceTime]
    overhead_s: float
    raw: dict[str, Any]


def stage_time(rows: list[dict[str, float]], keys: tuple[str, ...]) -> ServiceTime:
    """p50 and p95 over jobs of the per-job sum of `keys`."""
    totals = [sum(row[k] for k in keys) for row in rows if all(k in row for k in keys)]
    return ServiceTime(statistics.median(totals), percentile(totals, 0.95))


def load_costs(path: Path, run: str = "in_process") -> Costs:
    raw = json.loads(path.read_text())
    rows = raw["rows"][run]
    return Costs(f"{path} ({raw['model']} model, quality {raw['quality']}, {run} rows)",
                 {name: stage_time(rows, keys) for name, keys in STAGE_WORK.items()},
                 raw["graph_overhead_s"]["p50_s"], raw)


def load_serve_config(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The deployments by name, and the application's args."""
    app = yaml.safe_load(path.read_text())["applications"][0]
    return {d["name"]: d for d in app["deployments"]}, app.get("args", {})


def node_sizes(path: Path) -> dict[str, float]:
    """CPUs and GPUs Ray sees on a node of each worker pool in cluster.yaml (labels pool: cpu|gpu, role: worker)."""
    sizes: dict[str, float] = {}
    for node in yaml.safe_load(path.read_text())["available_node_types"].values():
        labels, resources = node.get("labels", {}), node.get("resources", {})
        if labels.get("role") == "worker" and labels.get("pool") == "gpu":
            sizes.update(gpu_node_cpus=resources["CPU"], gpus_per_node=resources["GPU"])
        elif labels.get("role") == "worker" and labels.get("pool") == "cpu":
            sizes["cpu_node_cpus"] = resources["CPU"]
    return sizes


# ----- plan ------------------------------------------------------------------------------------------

def make_plan(args: argparse.Namespace, costs: Costs, deployments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every number the plan prints, from the formulas in pipeline/capacity/plan.py."""
    rate = cp.arrival_rate(args.jobs_per_day)
    share = float(deployments["Reconstruct"]["ray_actor_options"]["num_gpus"])
    matting_s = costs.stages["Matting"].mean_s if args.matting_s_per_job is None else args.matting_s_per_job
    seconds = {"Matting": matting_s, "Publish": costs.stages["Publish"].mean_s,
               "Reconstruct": cp.replica_seconds_per_job(args.gpu_s_per_job, share)}
    targets = {name: float(deployments[name]["autoscaling_config"]["target_ongoing_requests"]) for name in seconds}
    if args.reconstruct_target is not None:
        targets["Reconstruct"] = args.reconstruct_target
    stages = {name: cp.size_stage(name, rate, seconds[name], utilisation=args.utilisation,
                                  trough_factor=args.trough_factor, peak_factor=args.peak_factor,
                                  target_ongoing_requests=targets[name])
              for name in ("Matting", "Reconstruct", "Publish")}
    gpu, matting, publish = stages["Reconstruct"], stages["Matting"], stages["Publish"]
    gpu_nodes = max(cp.nodes_needed(gpu.max_replicas, share, args.gpus_per_node),
                    cp.nodes_needed(gpu.max_replicas, 1, args.gpu_node_cpus))
    cpu_nodes = cp.nodes_needed(matting.max_replicas + publish.max_replicas, 1, args.cpu_node_cpus)
    in_graph_s = sum(seconds.values()) + costs.overhead_s
    inflight_mean = cp.jobs_in_system(rate, in_graph_s)
    waits = {name: cp.wait_quantile(0.95, s.mean_replicas, rate, s.seconds_per_job) for name, s in stages.items()}
    matting_p95 = costs.stages["Matting"].p95_s if args.matting_s_per_job is None else matting_s * args.gpu_p95_ratio
    service_p95 = matting_p95 + costs.stages["Publish"].p95_s + seconds["Reconstruct"] * args.gpu_p95_ratio
    capacity = min(cp.stage_capacity(s.max_replicas, s.seconds_per_job) for s in stages.values())
    backlog = cp.burst_backlog(rate, args.burst_factor, args.burst_min * 60, capacity)
    redis = costs.raw.get("redis", {})
    commands = cp.redis_commands_per_job(inflight_mean / args.ingress_replicas)
    return {
        "rate_per_s": rate, "seconds": seconds, "stages": stages, "share": share,
        "gpu_nodes_max": gpu_nodes, "gpu_nodes_mean": cp.nodes_needed(gpu.mean_replicas, share, args.gpus_per_node),
        "cpu_nodes_max": cpu_nodes,
        "cpu_nodes_mean": cp.nodes_needed(matting.mean_replicas + publish.mean_replicas, 1, args.cpu_node_cpus),
        "max_inflight": cp.max_inflight(s.limit for s in stages.values()),
        "in_graph_s": in_graph_s, "inflight_mean": inflight_mean, "inflight_peak": inflight_mean * args.peak_factor,
        "waits_p95": waits, "latency_p95_bound": service_p95 + sum(waits.values()) + costs.overhead_s,
        "capacity_max": capacity, "burst_backlog": backlog, "drain_s": cp.drain_seconds(backlog, rate, capacity),
        "redis_commands_per_job": commands, "redis_round_trips": cp.redis_round_trips_per_job(inflight_mean),
        "redis_measured_per_job": redis.get("commands_per_job"),
        "redis_ops_per_s": cp.redis_commands_per_s(rate, commands, cp.redis_background_per_s(
            args.ingress_replicas, gpu.mean_replicas)),
        "redis_peak_ops_per_s": cp.redis_commands_per_s(rate * args.peak_factor, cp.redis_commands_per_job(
            inflight_mean * args.peak_factor / args.ingress_replicas), cp.redis_background_per_s(
            args.ingress_replicas, gpu.max_replicas)),
        "state_bytes": cp.redis_state_bytes(args.jobs_per_day, STATE_TTL_S, redis.get("state_bytes_per_job", 0.0)),
        "state_bytes_per_job": redis.get("state_bytes_per_job"), "message_bytes": redis.get("message_bytes", 0),
        "hop_bytes": cp.framed_image_bytes(args.framed_side_px) + cp.mesh_bytes(args.mesh_vertices, args.mesh_faces),
    }


def print_plan(args: argparse.Namespace, costs: Costs, plan: dict[str, Any]) -> None:
    stages: dict[str, cp.StagePlan] = plan["stages"]
    gib = 1024**3
    print(f"capacity plan: {args.jobs_per_day:,.0f} jobs/day, p95 target {args.p95_s:g} s")
    print(f"  measured  CPU stage costs from {costs.source}")
    print(f"  ASSUMED   Reconstruct {args.gpu_s_per_job:g} GPU-seconds per job (no GPU measured); utilisation "
          f"{args.utilisation:g}; trough {args.trough_factor:g}x, peak {args.peak_factor:g}x the mean rate")
    print(f"\nλ = {args.jobs_per_day:,.0f} / 86,400 = {plan['rate_per_s']:.2f} jobs/s")
    print(f"  {'stage':<12} {'s/job':>7} {'min':>5} {'mean':>5} {'max':>5}  formula R = ceil(k·λ·s / u)")
    for name, s in stages.items():
        note = (f"s = {args.gpu_s_per_job:g} GPU-s / {plan['share']:g} GPU share (assumed)" if name == "Reconstruct"
                else "s = ASSUMED" if name == "Matting" and args.matting_s_per_job is not None
                else f"s = measured mean ({'+'.join(STAGE_WORK[name])})")
        print(f"  {name:<12} {s.seconds_per_job:7.3f} {s.min_replicas:5d} {s.mean_replicas:5d} "
              f"{s.max_replicas:5d}  {note}")
    print(f"\nnodes  gpu pool: {plan['gpu_nodes_max']} at max ({plan['gpu_nodes_mean']} at the mean), "
          f"max(ceil(R·{plan['share']:g} GPU / {args.gpus_per_node:g} GPU), "
          f"ceil(R·1 CPU / {args.gpu_node_cpus:g} CPUs))")
    print(f"       cpu pool: {plan['cpu_nodes_max']} at max ({plan['cpu_nodes_mean']} at the mean), "
          f"ceil((Matting + Publish)·1 CPU / {args.cpu_node_cpus:g} CPUs per node)")
    print("       head:     1 (Ingress, the HTTP proxy, the GCS and the Serve controller)")
    limits = " + ".join(f"{s.max_replicas}·{max(1.0, s.target_ongoing_requests):g}" for s in stages.values())
    print(f"max_inflight = {limits} = {plan['max_inflight']}")
    print(f"Little's law: in flight L = λ·W = {plan['rate_per_s']:.2f} · {plan['in_graph_s']:.2f} s = "
          f"{plan['inflight_mean']:.0f} at the mean, {plan['inflight_peak']:.0f} at the peak")
    waits = ", ".join(f"{name} {w:.2f} s" for name, w in plan["waits_p95"].items())
    print(f"p95 wait per stage at the mean replicas (M/M/c, Erlang C): {waits}")
    print(f"p95 latency bound (Σ p95 service + Σ p95 waits + overhead): {plan['latency_p95_bound']:.1f} s "
          f"vs target {args.p95_s:g} s")
    print(f"burst {args.burst_factor:g}x for {args.burst_min:g} min against the max capacity "
          f"{plan['capacity_max']:.1f} jobs/s: backlog B = (k·λ - μ)·D = {plan['burst_backlog']:,.0f} jobs, "
          f"drained in B / (μ - λ) = {plan['drain_s'] / 60:.1f} min")
    warm = cp.burst_capacity_needed(plan["rate_per_s"], args.burst_factor, args.burst_min * 60, args.p95_s)
    gpu = stages["Reconstruct"]
    print(f"  for its last job to wait <= {args.p95_s:g} s, μ = k·λ·D / (D + T) = {warm:.1f} jobs/s must serve when it "
          f"starts: {math.ceil(warm * gpu.seconds_per_job)} Reconstruct replicas "
          f"({math.ceil(warm * gpu.seconds_per_job * plan['share'] / args.gpus_per_node)} GPU nodes) warm")
    measured = plan["redis_measured_per_job"]
    print(f"\nRedis  {plan['redis_commands_per_job']:.0f} commands per job ({plan['redis_round_trips']} round trips) "
          f"by the scripts at L = {plan['inflight_mean'] / args.ingress_replicas:.0f} in flight per ingress"
          + (f"; measured {measured:.0f} per job over {costs.raw['jobs']} jobs on the local graph (L <= "
             f"{costs.raw['replicas']['max_inflight']}, idle background subtracted)" if measured else ""))
    print(f"       {plan['redis_ops_per_s']:,.0f} commands/s at the mean, "
          f"{plan['redis_peak_ops_per_s']:,.0f} at the peak")
    if plan["state_bytes_per_job"]:
        print(f"       job state: {args.jobs_per_day:,.0f}/day x {STATE_TTL_S / 86400:g} days TTL x "
              f"{plan['state_bytes_per_job']:,.0f} B = {plan['state_bytes'] / gib:.1f} GiB")
        print(f"       burst backlog: {plan['burst_backlog']:,.0f} x {plan['message_bytes']} B = "
              f"{cp.redis_backlog_bytes(plan['burst_backlog'], plan['message_bytes']) / 1024**2:.1f} MiB")
    gbit = [cp.ingress_bytes_per_s(plan["rate_per_s"] * k, plan["hop_bytes"]) * 8 / 1e9 for k in (1, args.peak_factor)]
    print(f"\ningress hops: framed {args.framed_side_px}² image + mesh of {args.mesh_vertices:,} vertices, "
          f"{args.mesh_faces:,} faces = {plan['hop_bytes'] / 1e6:.1f} MB per job; in and out of the Ingress "
          f"2·λ·b = {gbit[0]:.2f} Gbit/s at the mean, {gbit[1]:.2f} at the peak")


# ----- the simulations ---------------------------------------------------------------------------------

def production_graph(args: argparse.Namespace, plan: dict[str, Any], deployments: dict[str, dict[str, Any]],
                     max_inflight: int, costs: Costs) -> GraphModel:
    """The planned limits with serve_config.yaml's delays, targets and batching, and the assumed start-ups."""
    def model(name: str, service: ServiceTime, **extra: Any) -> StageModel:
        scaling = deployments[name]["autoscaling_config"]
        stage: cp.StagePlan = plan["stages"][name]
        return StageModel(name, service, Scaling(
            stage.min_replicas, stage.max_replicas, stage.target_ongoing_requests, scaling["upscale_delay_s"],
            scaling["downscale_delay_s"], counts_backlog="policy" in scaling, initial_replicas=stage.mean_replicas),
            deployments[name]["max_ongoing_requests"], **extra)

    gpu_s = plan["seconds"]["Reconstruct"]
    knobs = deployments["Reconstruct"].get("user_config", {})
    return GraphModel((
        model("Matting", costs.stages["Matting"] if args.matting_s_per_job is None else
              ServiceTime(args.matting_s_per_job, args.matting_s_per_job * args.gpu_p95_ratio),
              startup_s=args.cpu_replica_start_s),
        model("Reconstruct", ServiceTime(gpu_s, gpu_s * args.gpu_p95_ratio), max_batch_size=knobs["max_batch_size"],
              batch_wait_s=knobs["batch_wait_timeout_s"], startup_s=args.gpu_replica_start_s,
              replicas_per_node=round(args.gpus_per_node / plan["share"]), node_startup_s=args.gpu_node_start_s),
        model("Publish", costs.stages["Publish"], startup_s=args.cpu_replica_start_s),
    ), max_inflight=max_inflight, overhead_s=costs.overhead_s, record_every_s=10.0, latency_window_s=120.0)


def local_graph(costs: Costs) -> GraphModel:
    """The graph bench/service.py ran: its replica config, every replica sharing this machine's CPUs. A replica
    does one thread's worth of work at a time however many requests it holds: its `asyncio.to_thread` workers
    share one interpreter's GIL (in production it also reserves `num_cpus: 1`)."""
    config = costs.raw["replicas"]

    def model(name: str, **extra: Any) -> StageModel:
        replicas = config[name]["max_replicas"]
        return StageModel(name, costs.stages[name], Scaling(replicas, replicas), config[name]["max_ongoing_requests"],
                          **extra)

    knobs = config["Reconstruct"]["user_config"]
    return GraphModel((
        model("Matting"),
        model("Reconstruct", max_batch_size=knobs["max_batch_size"], batch_wait_s=knobs["batch_wait_timeout_s"]),
        model("Publish"),
    ), max_inflight=config["max_inflight"], overhead_s=costs.overhead_s, node_cpus=float(costs.raw["cpus"]))


def run_burst(args: argparse.Namespace, costs: Costs, plan: dict[str, Any],
              deployments: dict[str, dict[str, Any]]) -> None:
    graph = production_graph(args, plan, deployments, plan["max_inflight"], costs)
    start_s, duration_s = args.burst_start_min * 60, args.burst_min * 60
    arrivals = poisson_arrivals(burst_steps(args.jobs_per_day, args.burst_factor, start_s, duration_s),
                                start_s + duration_s + args.after_min * 60, random.Random(args.seed))
    result = simulate(graph, arrivals, seed=args.seed)
    samples = result.samples
    peak = max(samples, key=lambda s: s.backlog)
    after = [s for s in samples if s.t >= start_s]
    drained = next((s.t for s in after if s.t > peak.t and s.backlog == 0), math.nan)
    worst = max((s.p95_s for s in samples if not math.isnan(s.p95_s)), default=math.nan)
    over = [s.t for s in samples if s.p95_s > args.p95_s]
    print(f"\nburst: {len(arrivals):,} jobs; {args.burst_factor:g}x the mean rate from minute {args.burst_start_min:g} "
          f"for {args.burst_min:g} min (seed {args.seed})")
    print(f"  peak backlog {peak.backlog:,} jobs at minute {peak.t / 60:.1f}; backlog empty again at minute "
          f"{drained / 60:.1f}; worst sliding p95 {worst:.0f} s")
    print(f"  p95 over the {args.p95_s:g} s target from minute {over[0] / 60:.1f} to {over[-1] / 60:.1f}"
          if over else f"  p95 never over the {args.p95_s:g} s target")
    print("  replicas serving over the run, least-most (time average): " + ", ".join(
        f"{name} {min(s.replicas[name] for s in samples)}-{max(s.replicas[name] for s in samples)} "
        f"({statistics.fmean(s.replicas[name] for s in samples):.0f})" for name in samples[0].replicas))
    print("  replicas serving at the end of the burst: " + ", ".join(
        f"{name} {count}" for name, count in next(s for s in samples if s.t >= start_s + duration_s).replicas.items()))
    print(f"  all jobs: p50 {percentile(result.latencies_s, 0.5):.0f} s, "
          f"p95 {percentile(result.latencies_s, 0.95):.0f} s")
    if args.png:
        title = (f"{args.jobs_per_day:,.0f} jobs/day, a {args.burst_factor:g}x burst for {args.burst_min:g} min "
                 f"(simulated; GPU cost assumed {args.gpu_s_per_job:g} GPU-s/job)")
        args.png.write_bytes(burst_chart(samples, title=title, p95_target_s=args.p95_s))
        print(f"  wrote {args.png}")


def run_check(args: argparse.Namespace) -> int:
    """Predicted vs measured wall time of the N jobs pushed at once (the same replica config)."""
    costs = load_costs(args.costs, "graph_one_at_a_time")
    jobs, measured = costs.raw["jobs"], costs.raw["all_at_once_wall_s"]
    graph = local_graph(costs)
    predictions = [simulate(graph, [0.0] * jobs, seed=seed).makespan_s for seed in range(args.seeds)]
    predicted = statistics.fmean(predictions)
    error = (predicted - measured) / measured
    print(f"model inputs (from {costs.source}):")
    for stage in graph.stages:
        print(f"  {stage.name:<12} p50 {stage.service.p50_s:.3f} s, p95 {stage.service.p95_s:.3f} s, "
              f"replicas {stage.scaling.max_replicas}, max_ongoing {stage.max_ongoing_requests}, "
              f"parallelism {stage.parallelism:g}, batch {stage.max_batch_size}")
    print(f"  max_inflight {graph.max_inflight}, overhead {graph.overhead_s:.3f} s/job, "
          f"{graph.node_cpus:g} CPUs shared")
    print(f"{jobs} jobs pushed at once: predicted {predicted:.1f} s (seeds 0-{args.seeds - 1}: "
          f"{min(predictions):.1f}-{max(predictions):.1f}), measured {measured:.1f} s, error {error:+.1%} "
          f"({'within' if abs(error) <= CHECK_TOLERANCE else 'OUTSIDE'} ±{CHECK_TOLERANCE:.0%})")
    return 0 if abs(error) <= CHECK_TOLERANCE else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="predicted vs measured completion time of bench/service.py's run")
    check.add_argument("--costs", type=Path, required=True)
    check.add_argument("--seeds", type=int, default=5)
    for name in ("plan", "burst"):
        sub = commands.add_parser(name)
        sub.add_argument("--costs", type=Path, required=True, help="bench/service.py --json output (measured)")
        sub.add_argument("--serve-config", type=Path, default=REPO / "serve_config.yaml")
        sub.add_argument("--jobs-per-day", type=float, default=1_000_000)
        sub.add_argument("--p95-s", type=float, default=300.0)
        sub.add_argument("--gpu-s-per-job", type=float, required=True,
                         help="ASSUMPTION: seconds of a whole GPU per job (forward + extraction, batched)")
        sub.add_argument("--matting-s-per-job", type=float,
                         help="ASSUMPTION instead of the measured prepare (which ran the tiny matting model)")
        sub.add_argument("--gpu-p95-ratio", type=float, default=1.25, help="assumed p95 / p50 of an assumed time")
        sub.add_argument("--utilisation", type=float, default=0.75, help="planned busy fraction per replica")
        sub.add_argument("--trough-factor", type=float, default=0.3, help="assumed quietest hour / mean rate")
        sub.add_argument("--peak-factor", type=float, default=2.0, help="assumed busiest hour / mean rate")
        sub.add_argument("--cluster", type=Path, default=REPO / "cluster.yaml", help="node sizes of the pools")
        sub.add_argument("--gpus-per-node", type=float, help="default: cluster.yaml's GPU worker")
        sub.add_argument("--gpu-node-cpus", type=float, help="default: cluster.yaml's GPU worker")
        sub.add_argument("--cpu-node-cpus", type=float, help="default: cluster.yaml's CPU worker")
        sub.add_argument("--ingress-replicas", type=int, default=1)
        sub.add_argument("--reconstruct-target", type=float,
                         help="Reconstruct's target_ongoing_requests instead of serve_config.yaml's")
        sub.add_argument("--burst-factor", type=float, default=10.0)
        sub.add_argument("--burst-min", type=float, default=5.0)
        sub.add_argument("--burst-start-min", type=float, default=15.0)
        sub.add_argument("--after-min", type=float, default=15.0, help="arrivals at the mean rate after the burst")
        sub.add_argument("--gpu-node-start-s", type=float, default=300.0, help="ASSUMPTION: a new GPU node")
        sub.add_argument("--gpu-replica-start-s", type=float, default=60.0, help="ASSUMPTION: load + warm-up")
        sub.add_argument("--cpu-replica-start-s", type=float, default=20.0, help="ASSUMPTION: on a running node")
        sub.add_argument("--framed-side-px", type=int, default=1000, help="ASSUMPTION: the framed picture's side")
        sub.add_argument("--mesh-vertices", type=int, default=371_378, help="docs/performance.md, R=256, full size")
        sub.add_argument("--mesh-faces", type=int, default=737_568, help="docs/performance.md, R=256, full size")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--png", type=Path)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.command == "check":
        return run_check(args)
    costs = load_costs(args.costs)
    deployments, _ = load_serve_config(args.serve_config)
    for name, value in node_sizes(args.cluster).items():
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    if None in (args.gpus_per_node, args.gpu_node_cpus, args.cpu_node_cpus):
        raise SystemExit(f"{args.cluster} has no CPU or GPU worker pool (labels role: worker); give the node sizes")
    plan = make_plan(args, costs, deployments)
    print_plan(args, costs, plan)
    if args.command == "burst":
        run_burst(args, costs, plan, deployments)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
