"""The capacity model (pipeline/capacity): the sizing formulas against independent derivations and the
repository's own configuration, the Redis count against a real Redis running a job's queue path, and the
simulation's behaviour (scaling, delays, Little's law, bursts, sharing, batching)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
from collections import Counter

import pytest
import redis
import redis.asyncio as aioredis
import yaml
from PIL import Image

from pipeline.capacity import plan
from pipeline.capacity.chart import burst_chart, nice_ticks
from pipeline.capacity.graph import GraphModel, Scaling, ServiceTime, StageModel, desired_replicas
from pipeline.capacity.simulation import poisson_arrivals, simulate
from pipeline.delivery.reporting import JobReporter
from pipeline.jobs.state import JobResult, record_progress
from pipeline.queue.consumer import Claim, QueueConfig, ReliableQueue, connect
from pipeline.run.stages import STAGE_PROGRESS
from tests.support.paths import REPO_ROOT


def fixed(seconds: float, replicas: int = 1, *, threads: float = 1.0, max_ongoing: int = 4,
          batch: int = 1, name: str = "Stage") -> StageModel:
    """A stage with a fixed replica count and a constant service time."""
    return StageModel(name, ServiceTime(seconds, seconds), Scaling(replicas, replicas), max_ongoing,
                      parallelism=threads, max_batch_size=batch)


def scaled(seconds: float, *, upscale_delay_s: float = 5.0, max_replicas: int = 6) -> StageModel:
    return StageModel("Reconstruct", ServiceTime(seconds, seconds * 1.2),
                      Scaling(1, max_replicas, 1.0, upscale_delay_s, 600.0, counts_backlog=True), 2)


def graph(*stages: StageModel, max_inflight: int = 100, **extra: float) -> GraphModel:
    options = {"metrics_push_s": 1.0, "look_back_s": 5.0, "record_every_s": 1.0, **extra}
    return GraphModel(stages, max_inflight=max_inflight, **options)


# ----- formulas ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rate", "seconds", "utilisation", "threads"),
                         [(11.57, 8.0, 0.75, 1.0), (0.3, 2.5, 0.5, 1.0), (5.0, 1.7, 0.9, 2.0), (100.0, 0.02, 0.7, 1.0)])
def test_replicas_needed_is_the_fewest_that_stay_under_the_utilisation(rate: float, seconds: float,
                                                                       utilisation: float, threads: float) -> None:
    replicas = plan.replicas_needed(rate, seconds, utilisation, threads)
    busy = rate * seconds / threads
    assert busy / replicas <= utilisation + 1e-9
    assert replicas == 1 or busy / (replicas - 1) > utilisation


def test_serve_config_max_inflight_is_the_sum_of_the_stage_limits() -> None:
    """serve_config.yaml's max_inflight is what the formula gives for its own replica limits."""
    app = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())["applications"][0]
    scaling = [d["autoscaling_config"] for d in app["deployments"] if "autoscaling_config" in d]
    limits = [plan.StageLimit(s["max_replicas"], s["target_ongoing_requests"]) for s in scaling]
    assert plan.max_inflight(limits) == app["args"]["max_inflight"]


def test_cluster_gpu_workers_hold_reconstruct_at_its_max() -> None:
    deployments = {d["name"]: d for d in yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
                   ["applications"][0]["deployments"]}
    gpu_node = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())["available_node_types"]["worker.gpu"]
    replicas = deployments["Reconstruct"]["autoscaling_config"]["max_replicas"]
    asks, has = deployments["Reconstruct"]["ray_actor_options"], gpu_node["resources"]
    needed = max(plan.nodes_needed(replicas, asks["num_gpus"], has["GPU"]),
                 plan.nodes_needed(replicas, asks["num_cpus"], has["CPU"]))
    assert needed <= gpu_node["max_workers"]


def test_erlang_c_and_the_wait_quantile_agree_with_m_m_1() -> None:
    """With one server P(wait) is the utilisation and P(W > t) = (λ/μ)·exp(-(μ - λ)t)."""
    rate, seconds = 0.6, 1.0
    assert plan.erlang_c(1, rate * seconds) == pytest.approx(0.6)
    expected = math.log(0.6 / 0.05) / (1 / seconds - rate)
    assert plan.wait_quantile(0.95, 1, rate, seconds) == pytest.approx(expected)
    assert plan.wait_quantile(0.95, 2, rate * 2, seconds) < expected   # pooling two servers waits less
    assert plan.wait_quantile(0.95, 1, 1.2, seconds) == math.inf


def test_a_burst_backlog_drains_at_the_spare_capacity() -> None:
    backlog = plan.burst_backlog(base_rate=10, factor=10, duration_s=300, capacity_rate=30)
    assert backlog == pytest.approx((100 - 30) * 300)
    assert plan.drain_seconds(backlog, 10, 30) == pytest.approx(backlog / 20)
    assert plan.burst_backlog(10, 2, 300, 30) == 0
    assert plan.drain_seconds(1, 10, 10) == math.inf


def test_the_warm_capacity_for_a_burst_lets_its_last_job_wait_exactly_the_limit() -> None:
    base, factor, duration, limit = 11.57, 10.0, 300.0, 300.0
    capacity = plan.burst_capacity_needed(base, factor, duration, limit)
    assert plan.burst_backlog(base, factor, duration, capacity) / capacity == pytest.approx(limit)


def test_redis_commands_per_job_grow_with_the_locks_renewed_per_claim() -> None:
    assert plan.redis_commands_per_job(5) - plan.redis_commands_per_job(4) == 2
    assert plan.redis_state_bytes(1_000_000, 30 * 86_400, 1000) == pytest.approx(30e9)


def test_redis_steps_count_what_a_job_costs_a_real_redis(redis_url: str) -> None:
    """One job's happy path, run as JobWorker runs it, costs exactly the commands REDIS_STEPS lists, and a
    claim made while another job runs costs one RENEW_LOCKS more (its GET and PEXPIRE included)."""
    counter = redis.Redis.from_url(redis_url)

    def commands() -> Counter[str]:
        stats = counter.info("commandstats")
        return Counter({name: int(entry["calls"]) for name, entry in stats.items()})

    async def finish(queue: ReliableQueue, reporter: JobReporter, claim: Claim) -> None:
        """What JobWorker does after the claim: progress from the stages, result, webhook outcome, ack."""
        assert claim.job is not None and claim.runnable
        assert await reporter.recorded_result(claim.job.job_id) is None
        for stage, percent in STAGE_PROGRESS.items():
            await record_progress(queue.redis, claim.job.job_id, stage=stage, progress=percent)
        result = JobResult({"glb": "https://example.test/a.glb"}, {"faces": 1})
        await reporter.record_result(claim.job.job_id, result)
        await reporter.completed(claim.job, result, claim.attempt)
        await queue.complete(claim, result)

    async def take(queue: ReliableQueue) -> Claim:
        claim = await queue.claim()
        assert claim is not None and claim.runnable
        return claim

    async def main() -> tuple[int, int]:
        client = connect(redis_url, QueueConfig())
        queue, reporter = ReliableQueue(client, "celery", "consumer-1"), JobReporter(client, None)
        for job_id in ("warm-up-1", "warm-up-2", "counted", "second", "third"):
            message = {"job_id": job_id, "shop": "s.myshopify.com", "product_id": "1", "product_handle": "mug",
                       "image_urls": ["https://x.test/a.jpg"]}
            await aioredis.Redis.lpush(client, "celery", json.dumps(message))
        try:
            # Two at once first, so every script is loaded (EVALSHA misses and SCRIPT LOADs are not counted).
            warm = [await take(queue), await take(queue)]
            for claim in warm:
                await finish(queue, reporter, claim)
            before = commands()
            await finish(queue, reporter, await take(queue))
            alone = (commands() - before).total() - 1    # less the INFO that took `before`
            await take(queue)                            # "second" stays running while "third" is claimed
            before = commands()
            await take(queue)
            claim_while_running = (commands() - before).total() - 1
        finally:
            await client.aclose()
        return alone, claim_while_running

    alone, claim_while_running = asyncio.run(main())
    counter.close()
    assert alone == plan.redis_commands_per_job(0)
    claim_steps = sum(step.commands for step in plan.REDIS_STEPS[:4])
    assert claim_while_running == claim_steps + plan.redis_commands_per_job(1) - plan.redis_commands_per_job(0)


def test_the_simulated_policy_is_the_deployed_one() -> None:
    """desired_replicas of the simulation and of deployments/autoscaling.py agree (before the clamp)."""
    from deployments.autoscaling import desired_replicas as deployed

    for ongoing, backlog, target in [(0, 0, 2), (3, 0, 2), (3, 4, 2), (30, 500, 2), (7, 1, 0.75), (0.4, 0, 1)]:
        scaling = Scaling(1, 10_000, target, counts_backlog=True)
        assert desired_replicas(ongoing + backlog, scaling) == deployed(ongoing, backlog, target)


# ----- the simulation --------------------------------------------------------------------------------

def test_processor_sharing_and_batches_finish_when_their_work_is_done() -> None:
    """Two 1-s jobs on one single-thread replica both end at 2 s, at 1 s with two threads; a batch of three
    on a batched replica ends together after its wait plus three jobs' work."""
    assert simulate(graph(fixed(1.0)), [0.0, 0.0]).finished_at == pytest.approx((2.0, 2.0))
    assert simulate(graph(fixed(1.0, threads=2)), [0.0, 0.0]).finished_at == pytest.approx((1.0, 1.0))
    batched = StageModel("Reconstruct", ServiceTime(1.0, 1.0), Scaling(1, 1), 8, max_batch_size=4, batch_wait_s=0.1)
    assert simulate(graph(batched), [0.0, 0.0, 0.0]).finished_at == pytest.approx((3.1, 3.1, 3.1))


def test_replicas_on_one_node_share_its_cpus() -> None:
    two_stages = (fixed(1.0, name="A"), fixed(1.0, name="B"))
    spread = simulate(graph(*two_stages), [0.0, 1.0])
    crowded = simulate(graph(*two_stages, node_cpus=1.0), [0.0, 0.0, 1.0])
    assert spread.finished_at == pytest.approx((2.0, 3.0))
    assert max(crowded.finished_at) > max(spread.finished_at) + 1.0


def test_more_arrivals_ask_for_more_replicas_up_to_the_max() -> None:
    def peak_replicas(rate: float) -> int:
        arrivals = poisson_arrivals([(0.0, rate)], 120.0, random.Random(1))
        result = simulate(graph(scaled(2.0)), arrivals, seed=1)
        return max(s.replicas["Reconstruct"] for s in result.samples)

    light, busy, flooded = peak_replicas(0.3), peak_replicas(1.5), peak_replicas(20.0)
    assert light < busy <= flooded == 6


def test_the_upscale_delay_postpones_the_first_new_replica() -> None:
    def first_upscale(delay_s: float) -> float:
        result = simulate(graph(scaled(2.0, upscale_delay_s=delay_s)), [i * 0.2 for i in range(300)])
        return next(s.t for s in result.samples if s.replicas["Reconstruct"] > 1)

    quick, slow = first_upscale(2.0), first_upscale(20.0)
    assert slow - quick == pytest.approx(18.0, abs=2.0)


def test_littles_law_holds_in_the_steady_state() -> None:
    """Time-averaged jobs in the system equal the arrival rate times the mean time in it."""
    rate, until = 1.5, 2000.0
    arrivals = poisson_arrivals([(0.0, rate)], until, random.Random(7))
    stages = (StageModel("A", ServiceTime(0.5, 0.8), Scaling(1, 1), 4),
              StageModel("B", ServiceTime(1.0, 1.6), Scaling(2, 2), 4))
    result = simulate(graph(*stages), arrivals, seed=7)
    steady = [s for s in result.samples if 100 <= s.t <= until]
    in_system = sum(s.backlog + s.inflight for s in steady) / len(steady)
    mean_latency = sum(result.latencies_s) / len(result.latencies_s)
    assert in_system == pytest.approx(len(arrivals) / until * mean_latency, rel=0.1)


def test_a_burst_backlog_builds_as_predicted_and_drains() -> None:
    base, factor, start, duration = 1.0, 5.0, 60.0, 60.0
    capacity = plan.stage_capacity(4, 1.0)   # four single-thread replicas of a 1-s stage
    steps = [(0.0, base), (start, base * factor), (start + duration, base)]
    arrivals = poisson_arrivals(steps, 400.0, random.Random(3))
    result = simulate(graph(fixed(1.0, 4, max_ongoing=1), max_inflight=4), arrivals, seed=3)
    peak = max(result.samples, key=lambda s: s.backlog)
    assert peak.backlog == pytest.approx(plan.burst_backlog(base, factor, duration, capacity), rel=0.3)
    assert start + duration - 5 <= peak.t <= start + duration + 5
    assert result.samples[-1].backlog == 0 and len(result.latencies_s) == len(arrivals)
    drained = next(s.t for s in result.samples if s.t > peak.t and s.backlog == 0)
    assert drained - peak.t == pytest.approx(plan.drain_seconds(peak.backlog, base, capacity), rel=0.35)


def test_the_simulation_is_deterministic_for_a_seed() -> None:
    stages = (StageModel("A", ServiceTime(1.0, 2.0), Scaling(1, 3), 2),)
    arrivals = poisson_arrivals([(0.0, 1.0)], 60.0, random.Random(0))
    first, again, other = (simulate(graph(*stages), arrivals, seed=seed) for seed in (4, 4, 5))
    assert first == again
    assert first.latencies_s != other.latencies_s


# ----- the chart --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("low", "high"), [(0, 1), (0, 27_552), (3.2, 7.9), (0, 0)])
def test_nice_ticks_cover_the_range_in_round_steps(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    step = ticks[1] - ticks[0]
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    assert round(step / 10 ** math.floor(math.log10(step)), 6) in (1, 2, 5)


def test_the_burst_chart_is_a_png_of_three_panels() -> None:
    arrivals = poisson_arrivals([(0.0, 1.0), (20.0, 4.0), (40.0, 1.0)], 80.0, random.Random(2))
    result = simulate(graph(scaled(1.0)), arrivals, seed=2)
    image = Image.open(io.BytesIO(burst_chart(result.samples, title="test", p95_target_s=10.0)))
    assert image.format == "PNG" and image.width >= 800 and image.height > image.width * 0.7
    assert len(image.convert("RGB").getcolors(maxcolors=4096) or ()) > 5   # lines in several colours
