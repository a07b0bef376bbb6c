"""Job state in Redis: one hash per job (`shop3d:job:{job_id}`), read by `/jobs/{id}` and the webhooks.

Fields: status (queued | processing | completed | failed), stage, progress (0-100), attempts, consumer,
shop / product_id / product_handle / variant_id / quality, assets and stats (JSON, on completion),
error (JSON {code, message[, details]}), retry_at, created_at / updated_at / finished_at (ISO-8601 UTC),
and `claims`, the queue's attempt counter while the job is unsettled. Every write renews the hash's TTL.
The `*_fields` functions are pure (the queue writes them inside its atomic scripts); the async
functions apply them directly, for callers outside the queue (progress updates, the reporter).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis.asyncio as aioredis

from pipeline.errors import Shop3dError
from pipeline.jobs.envelopes import Job
from pipeline.jobs.index import INDEX_FUNCTION, INDEX_KEYS, index_key
from pipeline.jobs.keys import job_key

JobStatus = Literal["queued", "processing", "completed", "failed"]
STATE_TTL_S = 30 * 24 * 3600   # a month of /jobs/{id} history; also how long a completed job stays deduplicated
CLAIMS_FIELD = "claims"   # kept in the job hash, not a global hash, so it expires with the job
_INT_FIELDS = ("progress", "attempts", CLAIMS_FIELD)
_JSON_FIELDS = ("assets", "stats", "error", "result", "history")   # result: delivery.reporting; history: requeues

# Submitting must not turn a completed (deduplicated) or running job back into "queued".
# KEYS: state, INDEX_KEYS. ARGV: ttl s, created_at, job id, then field/value pairs.
_RECORD_QUEUED = INDEX_FUNCTION + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'completed' and status ~= 'processing' then redis.call('HSET', KEYS[1], 'status', 'queued') end
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
index_job(KEYS[1], ARGV[3], ARGV[1], 2)
return 1
"""

# Any other write outside the queue's scripts. KEYS: state, INDEX_KEYS. ARGV: job id, ttl s, created_at
# ('' to leave it), number of fields to delete, those fields, then field/value pairs to set.
_WRITE_STATE = INDEX_FUNCTION + """
local job_id, ttl, created, deleted = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if deleted > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 5, 4 + deleted)) end
if #ARGV > 4 + deleted then redis.call('HSET', KEYS[1], unpack(ARGV, 5 + deleted)) end
if created ~= '' then redis.call('HSETNX', KEYS[1], 'created_at', created) end
redis.call('EXPIRE', KEYS[1], ttl)
index_job(KEYS[1], job_id, ttl, 2)
return 1
"""


@dataclass(frozen=True)
class JobResult:
    """What a finished job produced: asset name (glb, usdz, poster, report) -> URL, plus mesh stats."""

    assets: Mapping[str, str]
    stats: Mapping[str, Any] = field(default_factory=dict)


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, the format of every state timestamp."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def utc_iso(unix_s: float) -> str:
    """A unix time (seconds) in the state timestamp format."""
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds")


def job_fields(job: Job) -> dict[str, str]:
    """The job's identity as state fields, so a state read needs no second lookup."""
    fields = {"shop": job.shop, "product_id": job.product_id, "product_handle": job.product_handle}
    if job.quality is not None:   # None until the job path applies DEFAULT_QUALITY
        fields["quality"] = job.quality
    if job.variant_id is not None:
        fields["variant_id"] = job.variant_id
    return fields


def claimed_fields(job: Job, *, attempt: int, consumer: str, now: str) -> dict[str, str]:
    """State of a job a consumer has just taken (attempt counts from 1)."""
    return {**job_fields(job), "status": "processing", "stage": "claimed", "progress": "0",
            "attempts": str(attempt), "consumer": consumer, "updated_at": now}


def progress_fields(stage: str, progress: int, now: str) -> dict[str, str]:
    """Stage/progress update; progress is a percentage, 0-100, else ValueError."""
    if not 0 <= progress <= 100:
        raise ValueError(f"progress must be 0-100, got {progress}")
    return {"stage": stage, "progress": str(progress), "updated_at": now}


def completed_fields(result: JobResult, now: str) -> dict[str, str]:
    return {"status": "completed", "stage": "done", "progress": "100", "assets": json.dumps(dict(result.assets)),
            "stats": json.dumps(dict(result.stats)), "updated_at": now, "finished_at": now}


def failed_fields(error: Shop3dError, now: str) -> dict[str, str]:
    return {"status": "failed", "error": json.dumps(error.to_dict()), "updated_at": now, "finished_at": now}


def retry_fields(error: Shop3dError, *, retry_at: str, now: str) -> dict[str, str]:
    """A transient failure that will be retried: back to `queued`, with the error that caused it."""
    return {"status": "queued", "stage": "retry_wait", "error": json.dumps(error.to_dict()),
            "retry_at": retry_at, "updated_at": now}


def requeued_fields(now: str) -> dict[str, str]:
    """A job handed back unfinished (graceful shutdown): queued again, not counted as an attempt."""
    return {"status": "queued", "stage": "requeued", "updated_at": now}


def flatten(fields: Mapping[str, str]) -> list[str]:
    """{a: 1, b: 2} -> [a, 1, b, 2], the argument form of HSET and of the queue's scripts."""
    return [item for pair in fields.items() for item in pair]


def decode_state(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """HGETALL reply -> dict with str keys, ints for progress/attempts, parsed JSON for assets/stats/error."""
    state: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        text = value.decode() if isinstance(value, bytes) else value
        if name in _INT_FIELDS:
            state[name] = int(text)
        elif name in _JSON_FIELDS:
            state[name] = json.loads(text)
        else:
            state[name] = text
    return state


async def get_job_state(redis: aioredis.Redis, job_id: str) -> dict[str, Any] | None:
    """The decoded state of `job_id`, or None when the job is unknown (or its state expired)."""
    raw = await redis.hgetall(job_key(job_id))
    return decode_state(raw) if raw else None


async def record_queued(redis: aioredis.Redis, job: Job, *, ttl_s: int = STATE_TTL_S) -> None:
    """Mark a submitted job `queued` (unless it is already completed or running)."""
    now = utc_now()
    pairs = flatten({**job_fields(job), "updated_at": now})
    await redis.eval(_RECORD_QUEUED, 1 + len(INDEX_KEYS), job_key(job.job_id), *INDEX_KEYS, ttl_s, now, job.job_id,
                     *pairs)


async def record_progress(redis: aioredis.Redis, job_id: str, *, stage: str, progress: int) -> None:
    """Set the stage name and percentage of a running job; the status is left alone."""
    await update_job(redis, job_id, progress_fields(stage, progress, utc_now()))


async def update_job(redis: aioredis.Redis, job_id: str, fields: Mapping[str, str], *,
                     ttl_s: int = STATE_TTL_S, delete: Sequence[str] = (), created_at: str | None = None) -> None:
    """HSET `fields` (after HDEL of `delete`) on the job hash, renew its TTL and move the job in the index,
    in one script: no write leaves a hash that never expires (a bare HSET would create one for an unknown
    or expired job) or an index that disagrees with the hash. `created_at` is set only if missing."""
    await redis.eval(_WRITE_STATE, 1 + len(INDEX_KEYS), job_key(job_id), *INDEX_KEYS, job_id, ttl_s,
                     created_at or "", len(delete), *delete, *flatten(fields))


async def list_jobs(redis: aioredis.Redis, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest `limit` jobs (by last state write), all or those with `status`, as decoded states with
    their `job_id`. Reads the index and the listed hashes only; one whose hash expired is skipped."""
    if limit < 1:
        return []
    replies = await redis.zrevrange(index_key(status), 0, limit - 1)   # members only (no WITHSCORES)
    job_ids = [reply.decode() if isinstance(reply, bytes) else str(reply) for reply in replies]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(job_key(job_id))
        hashes = await pipe.execute()
    return [{"job_id": job_id, **decode_state(raw)} for job_id, raw in zip(job_ids, hashes, strict=True) if raw]
