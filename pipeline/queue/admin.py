"""The producer and operator side of the queue: push jobs, measure the backlog, read the dead letters.

Used by `shop3d submit`, POST /jobs, the autoscaling signal and the ops CLI; re-exported by `pipeline.queue.consumer`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from pipeline.jobs.envelopes import Job, to_queue_message
from pipeline.jobs.keys import DEAD_INFO_KEY, DEAD_KEY
from pipeline.jobs.state import record_queued
from pipeline.queue.config import reply_bytes


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered raw message and why: {job_id, error {code, message}, attempts, consumer, queue, ts}."""

    raw: bytes
    info: dict[str, Any] | None   # None if the info hash lost it (it is written and trimmed in the same script)


async def enqueue(redis: aioredis.Redis, queue_name: str, raw: bytes) -> int:
    """LPUSH `raw` exactly as the backend does; returns the new queue length."""
    return int(await redis.lpush(queue_name, raw))


async def submit_job(redis: aioredis.Redis, queue_name: str, job: Job) -> bytes:
    """Record `job` as queued and push its README-style envelope; returns the bytes pushed."""
    raw = to_queue_message(job)
    await record_queued(redis, job)
    await enqueue(redis, queue_name, raw)
    return raw


async def queue_depth(redis: aioredis.Redis, queue_name: str) -> int:
    """Messages waiting in the backend's list (not counting delayed retries or claimed ones)."""
    return int(await redis.llen(queue_name))


async def dead_letter_count(redis: aioredis.Redis) -> int:
    return int(await redis.llen(DEAD_KEY))


async def dead_letters(redis: aioredis.Redis, limit: int = 100) -> list[DeadLetter]:
    """The newest `limit` dead letters with their reasons, newest first."""
    raws = [reply_bytes(raw) for raw in await redis.lrange(DEAD_KEY, 0, limit - 1)]
    if not raws:
        return []
    infos = await redis.hmget(DEAD_INFO_KEY, [hashlib.sha1(raw, usedforsecurity=False).hexdigest() for raw in raws])
    return [DeadLetter(raw=raw, info=json.loads(info) if info else None) for raw, info in zip(raws, infos, strict=True)]
