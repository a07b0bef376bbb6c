"""`shop3d submit` and `shop3d status`: the backend's side of the queue, for manual tests and operators."""

from __future__ import annotations

from typing import Any

from pipeline.jobs.envelopes import validate_job
from pipeline.jobs.state import get_job_state
from pipeline.queue.consumer import QueueConfig, connect, submit_job
from pipeline.settings import Settings


async def submit(fields: dict[str, Any], settings: Settings) -> str:
    """Validate `fields` as a Job, record it queued and LPUSH it in the earlier README's envelope; -> job_id."""
    job = validate_job({k: v for k, v in fields.items() if v is not None})
    redis = connect(settings.redis_url, QueueConfig())
    try:
        await submit_job(redis, settings.queue_name, job)
    finally:
        await redis.aclose()
    return job.job_id


async def status(job_id: str, settings: Settings) -> dict[str, Any] | None:
    """The job's state hash from Redis, decoded; None when the job is unknown."""
    redis = connect(settings.redis_url, QueueConfig())
    try:
        return await get_job_state(redis, job_id)
    finally:
        await redis.aclose()

