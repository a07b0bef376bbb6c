"""The producer and operator side of the queue: push jobs, measure the backlog, read, requeue and purge
the dead letters.

Used by `shop3d submit`, POST /jobs, the autoscaling signal, the operator API and CLI; re-exported by
`pipeline.queue.consumer`. A requeue is one script (`scripts.REQUEUE_DEAD`): the letter leaves the dead
list, the job's state turns `queued` with the requeue in its history, and the raw goes back on the
queue, all or nothing, so two operators pressing Requeue at once run the job once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from pipeline.jobs.envelopes import Job, to_queue_message
from pipeline.jobs.index import INDEX_KEYS
from pipeline.jobs.keys import DEAD_INFO_KEY, DEAD_KEY, job_key
from pipeline.jobs.state import STATE_TTL_S, record_queued, utc_now
from pipeline.queue.config import reply_bytes
from pipeline.queue.scripts import REQUEUE_DEAD

DEAD_PAGE = 500   # dead letters read per round trip while looking one up by job id


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered raw message and why: {job_id, error {code, message}, attempts, consumer, queue, ts}."""

    raw: bytes
    info: dict[str, Any] | None   # None if the info hash lost it (it is written and trimmed in the same script)

    @property
    def job_id(self) -> str | None:
        return None if self.info is None else self.info.get("job_id")


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


async def _dead_letter_page(redis: aioredis.Redis, start: int, count: int) -> list[DeadLetter]:
    raws = [reply_bytes(raw) for raw in await redis.lrange(DEAD_KEY, start, start + count - 1)]
    if not raws:
        return []
    infos = await redis.hmget(DEAD_INFO_KEY, [hashlib.sha1(raw, usedforsecurity=False).hexdigest() for raw in raws])
    return [DeadLetter(raw=raw, info=json.loads(info) if info else None) for raw, info in zip(raws, infos, strict=True)]


async def dead_letters(redis: aioredis.Redis, limit: int = 100) -> list[DeadLetter]:
    """The newest `limit` dead letters with their reasons, newest first."""
    return await _dead_letter_page(redis, 0, limit) if limit > 0 else []


async def find_dead_letter(redis: aioredis.Redis, job_id: str) -> DeadLetter | None:
    """The newest dead letter of `job_id`, or None. Pages through the list (it is capped at DEAD_LETTERS_KEPT)."""
    start = 0
    while page := await _dead_letter_page(redis, start, DEAD_PAGE):
        for letter in page:
            if letter.job_id == job_id:
                return letter
        start += DEAD_PAGE
    return None


async def requeue_dead_letter(redis: aioredis.Redis, queue_name: str, letter: DeadLetter, *, by: str,
                              state_ttl_s: int = STATE_TTL_S) -> bool:
    """Put `letter` back on the queue with its job's attempts reset and the requeue in its history
    (`by` names who asked: "api", "cli"); False if it was no longer dead-lettered."""
    job_id = letter.job_id or ""
    keys = [DEAD_KEY, DEAD_INFO_KEY, job_key(job_id), queue_name, *INDEX_KEYS]
    done = await redis.eval(REQUEUE_DEAD, len(keys), *keys, letter.raw, job_id, state_ttl_s, utc_now(), by)
    return bool(done)


async def requeue_dead_job(redis: aioredis.Redis, queue_name: str, job_id: str, *, by: str) -> bool:
    """Requeue the dead letter of `job_id`; False when the job is not dead-lettered."""
    letter = await find_dead_letter(redis, job_id)
    return letter is not None and await requeue_dead_letter(redis, queue_name, letter, by=by)


async def requeue_all_dead(redis: aioredis.Redis, queue_name: str, *, by: str) -> int:
    """Requeue the letters dead now, oldest first (so the queue keeps their order); returns how many.

    Bounded by the count at the start: a requeued job that fails again while this runs is not retaken.
    """
    requeued, left = 0, await dead_letter_count(redis)
    while left > 0 and (letters := await _dead_letter_page(redis, -min(left, DEAD_PAGE), min(left, DEAD_PAGE))):
        for letter in reversed(letters):
            requeued += await requeue_dead_letter(redis, queue_name, letter, by=by)
        left -= len(letters)
    return requeued


async def purge_dead_letters(redis: aioredis.Redis) -> int:
    """Drop every dead letter and its info in one transaction; returns how many letters went. The jobs'
    states (status `failed`, the error) stay until they expire."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.llen(DEAD_KEY)
        pipe.delete(DEAD_KEY, DEAD_INFO_KEY)
        count, _ = await pipe.execute()
    return int(count)
