"""Telling the backend: a job's result recorded in Redis, then the status webhook, then its delivery.

The order makes a completed job's webhook effectively exactly-once across crashes: the result is
recorded before the webhook is sent, and the delivery outcome before the queue acks. A re-delivered
job whose result is already recorded is not run again; only its missing webhook is sent (with the same
deterministic `webhook-id`, so a receiver can drop the rare duplicate of a crash between 2xx and
record). A delivery that finally fails is recorded on the job and kept in `shop3d:webhooks:undelivered`
for replay, never lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.errors import Shop3dError
from pipeline.jobs.envelopes import Job
from pipeline.jobs.state import JobResult, utc_now
from pipeline.delivery.webhooks import WebhookSender, build_payload, encode_payload
from pipeline.jobs.keys import UNDELIVERED_WEBHOOKS_KEY, job_key

logger = logging.getLogger(__name__)
T = TypeVar("T")

RESULT_FIELD = "result"                 # JSON {assets, stats}: the work is done, ack may still be pending
DELIVERY_FIELD = "webhook_{status}"     # "delivered" | "failed" | "disabled", per terminal status


@dataclass(frozen=True)
class JobIdentity:
    """Who a webhook is about; a malformed message may name only its id (or nothing)."""

    job_id: str
    shop: str | None = None
    product_id: str | None = None
    variant_id: str | None = None

    @classmethod
    def of(cls, job: Job) -> "JobIdentity":
        return cls(job.job_id, job.shop, job.product_id, job.variant_id)


class JobReporter:
    """Records results and sends status webhooks for one worker; `sender` None means no backend configured."""

    def __init__(self, redis: aioredis.Redis, sender: WebhookSender | None, *, redis_retry_s: float = 120.0) -> None:
        self.redis = redis
        self.sender = sender
        self.redis_retry_s = redis_retry_s
        self._background: set[asyncio.Task[None]] = set()

    async def _redis(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis operation, retrying through an outage for up to `redis_retry_s`: a finished
        job must not be failed because Redis restarted while it was being reported."""
        deadline = time.monotonic() + self.redis_retry_s
        delay = 0.2
        while True:
            try:
                return await operation()
            except (RedisError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("Redis unavailable while reporting (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def recorded_result(self, job_id: str) -> JobResult | None:
        """The result a previous attempt recorded before it could ack, if any."""
        raw = await self._redis(lambda: self.redis.hget(job_key(job_id), RESULT_FIELD))
        if raw is None:
            return None
        data = json.loads(raw)
        return JobResult(assets=data["assets"], stats=data["stats"])

    async def record_result(self, job_id: str, result: JobResult) -> None:
        value = json.dumps({"assets": dict(result.assets), "stats": dict(result.stats)})
        await self._redis(lambda: self.redis.hset(job_key(job_id), RESULT_FIELD, value))

    def processing(self, job: Job, attempt: int) -> None:
        """Send the `processing` webhook in the background: a slow backend must not delay the work."""
        payload = build_payload(job_id=job.job_id, status="processing", stage="claimed", progress=0,
                                shop=job.shop, product_id=job.product_id, variant_id=job.variant_id, attempt=attempt)
        task = asyncio.create_task(self._deliver(job.job_id, payload, record=False))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def completed(self, job: Job, result: JobResult, attempt: int) -> None:
        """Send the `completed` webhook unless a previous attempt delivered it; record the outcome."""
        if await self._already_delivered(job.job_id, "completed"):
            logger.info("job %s: completed webhook already delivered; not sent again", job.job_id)
            return
        payload = build_payload(job_id=job.job_id, status="completed", stage="done", progress=100, shop=job.shop,
                                product_id=job.product_id, variant_id=job.variant_id, assets=result.assets,
                                stats=result.stats, attempt=attempt)
        await self._deliver(job.job_id, payload, record=True)

    async def failed(self, who: JobIdentity, error: Shop3dError, attempt: int) -> None:
        """Send the `failed` webhook of a dead-lettered job (or message) and record the outcome."""
        if await self._already_delivered(who.job_id, "failed"):
            return
        payload = build_payload(job_id=who.job_id, status="failed", stage="failed", progress=0, shop=who.shop,
                                product_id=who.product_id, variant_id=who.variant_id, error=error, attempt=attempt)
        await self._deliver(who.job_id, payload, record=True)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Give background deliveries a moment to finish, then cancel them."""
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=timeout_s)
            for task in pending:
                task.cancel()

    async def _already_delivered(self, job_id: str, status: str) -> bool:
        value = await self._redis(lambda: self.redis.hget(job_key(job_id), DELIVERY_FIELD.format(status=status)))
        return value == b"delivered"

    async def _deliver(self, job_id: str, payload: Mapping[str, Any], *, record: bool) -> None:
        if self.sender is None:
            outcome, error = "disabled", None
        else:
            result = await self.sender.deliver(payload)
            outcome, error = ("delivered", None) if result.delivered else ("failed", result.error)
        if outcome == "failed":
            logger.error("job %s: %s webhook undeliverable (%s); kept in %s", job_id, payload["status"], error,
                         UNDELIVERED_WEBHOOKS_KEY)
            entry = encode_payload({"payload": payload, "error": error, "recorded_at": utc_now()})
            await self._redis(lambda: self.redis.lpush(UNDELIVERED_WEBHOOKS_KEY, entry))
        if record:
            fields = {DELIVERY_FIELD.format(status=payload["status"]): outcome}
            if error:
                fields[f"webhook_{payload['status']}_error"] = error
            await self._redis(lambda: self.redis.hset(job_key(job_id), mapping=fields))
