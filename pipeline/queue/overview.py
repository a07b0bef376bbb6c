"""The queue at a glance, for the operator API, console and CLI: backlog, work in flight per consumer,
delayed retries, dead letters, undelivered webhooks, and per-stage p50/p95 over the recent jobs.

Reads bounded structures only (list lengths, the processing lists, the job index); the one SCAN walks
the processing lists, one per live or recently dead consumer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis

from pipeline.jobs.keys import (
    DEAD_KEY,
    DELAYED_KEY,
    PROCESSING_PATTERN,
    UNDELIVERED_WEBHOOKS_KEY,
    consumer_from_processing_key,
)
from pipeline.jobs.state import list_jobs

JOBS_SAMPLED = 200   # completed jobs whose timings make the per-stage percentiles


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list (p50 of [1, 2, 3, 4] is 2)."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def stage_percentiles(timings: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """{stage: {p50_s, p95_s}} over per-job {stage: seconds}; a stage counts the jobs that report it."""
    by_stage: dict[str, list[float]] = {}
    for job_timings in timings:
        for stage, seconds in job_timings.items():
            by_stage.setdefault(stage, []).append(float(seconds))
    result = {}
    for stage, values in by_stage.items():
        values.sort()
        result[stage] = {"p50_s": round(percentile(values, 0.50), 3), "p95_s": round(percentile(values, 0.95), 3)}
    return result


async def in_flight_by_consumer(redis: aioredis.Redis) -> dict[str, int]:
    """Claimed-but-unsettled messages per consumer (a dead consumer's list shows until a reaper empties it)."""
    counts = {}
    async for key in redis.scan_iter(match=PROCESSING_PATTERN, count=100):
        name = key.decode() if isinstance(key, bytes) else key
        counts[consumer_from_processing_key(name)] = int(await redis.llen(name))
    return {consumer: count for consumer, count in sorted(counts.items()) if count}


async def queue_overview(redis: aioredis.Redis, queue_name: str) -> dict[str, Any]:
    """GET /queue's body (docs/operations.md)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.llen(queue_name)
        pipe.zcard(DELAYED_KEY)
        pipe.llen(DEAD_KEY)
        pipe.llen(UNDELIVERED_WEBHOOKS_KEY)
        depth, delayed, dead, undelivered = await pipe.execute()
    completed = await list_jobs(redis, status="completed", limit=JOBS_SAMPLED)
    timings = [job["stats"].get("timings_s", {}) for job in completed if isinstance(job.get("stats"), dict)]
    return {"queue": queue_name, "depth": int(depth), "in_flight": await in_flight_by_consumer(redis),
            "delayed": int(delayed), "dead": int(dead), "undelivered_webhooks": int(undelivered),
            "stages": stage_percentiles(timings), "jobs_sampled": len(timings)}
