"""Every Redis key shop3d writes expires or is bounded (pipeline/jobs/keys.py says how).

One worker (real redis-server, real local HTTP server as the backend) is driven through malformed
messages, completed, rejected and retried jobs, a duplicate, a crashed consumer and webhooks the backend
refuses; `SCAN shop3d:*` is then walked mid-flight and at rest. A key passes if it has a TTL, or is a
capped list/hash within its documented cap, or (mid-flight only) holds messages still moving on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from pipeline.delivery.reporting import JobReporter
from pipeline.delivery.webhooks import WebhookSender
from pipeline.errors import JobRejected, TransientError
from pipeline.jobs.envelopes import Job
from pipeline.jobs.keys import (
    DEAD_INFO_KEY,
    DEAD_KEY,
    DELAYED_KEY,
    PREFIX,
    PROCESSING_PATTERN,
    UNDELIVERED_WEBHOOKS_KEY,
)
from pipeline.jobs.state import JobResult, get_job_state, record_progress
from pipeline.queue.consumer import QueueConfig, ReliableQueue, connect, dead_letters
from pipeline.run.worker import JobWorker
from pipeline.testing.http_server import LocalHTTPServer, Request, Response

QUEUE = "celery"
CONFIG = QueueConfig(max_attempts=2, block_s=0.2, heartbeat_ttl_s=1.0, reap_interval_s=0.1, retry_base_s=1.0,
                     retry_max_s=1.0, lock_retry_s=0.3, reconnect_max_s=0.3, dead_letters_kept=3)
UNDELIVERED_KEPT = 2
MAX_INFLIGHT = 2
CAPS = {DEAD_KEY: CONFIG.dead_letters_kept, DEAD_INFO_KEY: CONFIG.dead_letters_kept,
        UNDELIVERED_WEBHOOKS_KEY: UNDELIVERED_KEPT}
RESULT = JobResult(assets={"glb": "https://cdn.example/model.glb"}, stats={"faces": 12})

# How each job ends: the id says it (see `execute`); `refused-*` webhooks get HTTP 400 from the backend.
COMPLETED = ["done-1", "done-2", "refused-1", "refused-2", "refused-3", "crashed-1"]
FAILED = ["rejected-1", "flaky-1", "invalid-1"]
NAMELESS = [b'{"task": "generate_3d_model", ', b"\xff\xfe not utf-8", b"[1, 2, 3]",
            json.dumps({"shop": "demo.myshopify.com", "product_id": "1", "product_handle": "mug",
                        "image_urls": ["https://cdn.example/a.jpg"]}).encode()]   # a bare job without job_id


def job_message(job_id: str, **extra: Any) -> bytes:
    fields = {"job_id": job_id, "shop": "demo.myshopify.com", "product_id": "gid://shopify/Product/1",
              "product_handle": "red-mug", "image_urls": ["https://cdn.example/a.jpg"], **extra}
    return json.dumps({"task": "generate_3d_model", "id": f"env-{job_id}", "args": [], "kwargs": fields}).encode()


def backend(server: LocalHTTPServer) -> str:
    def answer(request: Request) -> Response:
        return Response(400 if json.loads(request.body)["job_id"].startswith("refused-") else 204)

    server.route("/hooks", answer)
    return server.url("/hooks")


async def key_sizes(client: aioredis.Redis) -> dict[str, tuple[str, int, int]]:
    """Every shop3d key -> (type, entries, TTL in ms; -1 none). A key that expires meanwhile is left out."""
    sizes = {}
    async for raw in client.scan_iter(match=PREFIX + "*", count=1000):
        key = raw.decode()
        kind = (await client.type(key)).decode()
        length = {"list": client.llen, "hash": client.hlen, "zset": client.zcard}.get(kind)
        entries = int(await length(key)) if length else 1
        ttl_ms = int(await client.pttl(key))
        if kind != "none" and ttl_ms != -2:
            sizes[key] = (kind, entries, ttl_ms)
    return sizes


async def unbounded_keys(client: aioredis.Redis, *, in_flight: bool) -> list[str]:
    """Keys that neither expire nor stay within a documented bound; empty when all is well.

    In flight, the delayed ZSET may hold retries due within the retry delay, and a processing list
    the claims of one consumer; at rest both must be gone (Redis deletes an emptied key).
    """
    latest_due = time.time() + max(CONFIG.retry_max_s, CONFIG.lock_retry_s) + 1.0
    problems = []
    for key, (kind, entries, ttl) in (await key_sizes(client)).items():
        if ttl > 0 or (key in CAPS and entries <= CAPS[key]):
            continue
        if in_flight and key == DELAYED_KEY \
                and all(score <= latest_due for _, score in await client.zrange(key, 0, -1, withscores=True)):
            continue
        if in_flight and key.startswith(PREFIX + "processing:") and entries <= MAX_INFLIGHT + 1:
            continue
        problems.append(f"{key}: {kind} of {entries}, TTL {ttl} ms")
    return problems


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_every_key_expires_or_is_bounded(redis_url: str, http_server: LocalHTTPServer) -> None:
    hook_url = backend(http_server)

    async def scenario() -> None:
        client = connect(redis_url, CONFIG)

        async def execute(job: Job) -> JobResult:
            """Stands in for the pipeline: reports progress, then ends as the job id says."""
            await record_progress(client, job.job_id, stage="reconstruct", progress=50)
            if job.job_id.startswith("rejected-"):
                raise JobRejected("no_foreground", "nothing left after background removal")
            if job.job_id.startswith("flaky-"):
                raise TransientError("image_unreachable", "connection refused")
            return RESULT

        # A consumer that claims a job and "dies": nothing renews its heartbeat; the worker's reaper
        # hands its list back once the heartbeat key expires.
        crasher_client = connect(redis_url, CONFIG)
        crasher = ReliableQueue(crasher_client, QUEUE, "crasher", CONFIG)
        await client.lpush(QUEUE, job_message("crashed-1"))
        claim = await crasher.claim()
        assert claim is not None and claim.runnable
        assert await unbounded_keys(client, in_flight=True) == []   # mid-flight: claim counter, lock, list

        sender = WebhookSender(hook_url, None, max_attempts=2, base_delay_s=0.01, deadline_s=5.0)
        reporter = JobReporter(client, sender, undelivered_kept=UNDELIVERED_KEPT)
        worker = JobWorker(ReliableQueue(client, QUEUE, "worker-1", CONFIG), execute, reporter,
                           max_inflight=MAX_INFLIGHT)
        await worker.queue.start()
        worker.start()
        try:
            for raw in NAMELESS:
                await client.lpush(QUEUE, raw)
            for job_id in COMPLETED[:-1] + FAILED[:-1]:
                await client.lpush(QUEUE, job_message(job_id))
            await client.lpush(QUEUE, job_message("invalid-1", quality="ultra"), job_message("done-1"))

            await eventually(lambda: _has_delayed(client), "flaky-1's retry to be scheduled")
            assert await unbounded_keys(client, in_flight=True) == []

            await eventually(lambda: _at_rest(client), "every job and webhook to settle")
            worker.check_health()
            assert await unbounded_keys(client, in_flight=False) == []
            await _check_caps_and_records(client)
        finally:
            await worker.stop(drain_timeout_s=5.0)
            await crasher_client.aclose()
        assert await unbounded_keys(client, in_flight=False) == []   # stopped: heartbeat gone, nothing held
        await client.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 90))


async def _has_delayed(client: aioredis.Redis) -> bool:
    return int(await client.zcard(DELAYED_KEY)) > 0


async def _at_rest(client: aioredis.Redis) -> bool:
    """Queue, retries and claims empty; every job terminal with its webhook outcome recorded."""
    if await client.llen(QUEUE) or await client.zcard(DELAYED_KEY) \
            or [key async for key in client.scan_iter(match=PROCESSING_PATTERN)]:
        return False
    for job_id, status in [(job_id, "completed") for job_id in COMPLETED] + [(job_id, "failed") for job_id in FAILED]:
        state = await get_job_state(client, job_id)
        if not state or state.get("status") != status or f"webhook_{status}" not in state:
            return False
    nameless = [key async for key in client.scan_iter(match=PREFIX + "job:unknown-*")]
    return len(nameless) == len(NAMELESS) and all([await client.hexists(key, "webhook_failed") for key in nameless])


async def _check_caps_and_records(client: aioredis.Redis) -> None:
    """The caps were reached (so trimming ran), and the dead letters' info matches the list exactly."""
    dead = await client.lrange(DEAD_KEY, 0, -1)
    assert len(dead) == CONFIG.dead_letters_kept < len(NAMELESS) + len(FAILED)
    info_keys = {key.decode() for key in await client.hkeys(DEAD_INFO_KEY)}
    assert info_keys == {hashlib.sha1(raw, usedforsecurity=False).hexdigest() for raw in dead}
    assert all(letter.info is not None for letter in await dead_letters(client))
    undelivered = [json.loads(entry)["payload"] for entry in await client.lrange(UNDELIVERED_WEBHOOKS_KEY, 0, -1)]
    assert len(undelivered) == UNDELIVERED_KEPT < 3 and {p["status"] for p in undelivered} == {"completed"}
    nameless = [key async for key in client.scan_iter(match=PREFIX + "job:unknown-*")]
    assert nameless and all([await client.ttl(key) > 0 for key in nameless])
