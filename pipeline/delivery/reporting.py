"""Telling the backend: a job's result recorded in Redis, then the status webhook, then its delivery.

The order makes a completed job's webhook effectively exactly-once across crashes: the result is
recorded before the webhook is sent, and the delivery outcome before the queue acks. A re-delivered
job whose result is already recorded is not run again; only its missing webhook is sent (with the same
deterministic `webhook-id`, so a receiver can drop the rare duplicate of a crash between 2xx and
record). A terminal delivery lasts at most the sender's deadline; one that finally fails is recorded on
the job and kept in `shop3d:webhooks:undelivered` (the newest UNDELIVERED_WEBHOOKS_KEPT) for replay.
`processing` goes out in the background; before the job's terminal event is sent it is superseded (no
further retry) and an attempt in flight is let finish, so the receiver has answered `processing`
before `completed` or `failed` leaves. A superseded or failed `processing` is never kept for replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_before_delay, wait_exponential

from pipeline.delivery.webhooks import WebhookSender, build_payload, encode_payload
from pipeline.errors import Shop3dError
from pipeline.jobs.envelopes import Job
from pipeline.jobs.keys import UNDELIVERED_WEBHOOKS_KEPT, UNDELIVERED_WEBHOOKS_KEY, job_key
from pipeline.jobs.state import STATE_TTL_S, JobResult, update_job, utc_now

logger = logging.getLogger(__name__)
T = TypeVar("T")

RESULT_FIELD = "result"                 # JSON {assets, stats}: the work is done, ack may still be pending
DELIVERY_FIELD = "webhook_{status}"     # "delivered" | "failed" | "disabled", per terminal status
PROCESSING_DEADLINE_S = 10.0            # a `processing` event is news only while the job runs


@dataclass(frozen=True, eq=False)
class _Pending:
    """A `processing` delivery running in the background, and the event that supersedes it."""

    job_id: str
    task: asyncio.Task[Any]
    superseded: asyncio.Event


@dataclass(frozen=True)
class JobIdentity:
    """Who a webhook is about; a malformed message may name only its id (or nothing)."""

    job_id: str
    shop: str | None = None
    product_id: str | None = None
    variant_id: str | None = None

    @classmethod
    def of(cls, job: Job) -> JobIdentity:
        return cls(job.job_id, job.shop, job.product_id, job.variant_id)


class JobReporter:
    """Records results and sends status webhooks for one worker; `sender` None means no backend configured."""

    def __init__(self, redis: aioredis.Redis, sender: WebhookSender | None, *, redis_retry_s: float = 120.0,
                 state_ttl_s: int = STATE_TTL_S, undelivered_kept: int = UNDELIVERED_WEBHOOKS_KEPT) -> None:
        if undelivered_kept < 1:
            raise ValueError("undelivered_kept must be at least 1")
        self.redis = redis
        self.sender = sender
        self.redis_retry_s = redis_retry_s
        self.state_ttl_s = state_ttl_s
        self.undelivered_kept = undelivered_kept
        self._pending: set[_Pending] = set()   # `processing` deliveries still running

    async def _redis(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis operation, retrying through an outage for up to `redis_retry_s`: a finished
        job must not be failed because Redis restarted while it was being reported."""
        retrying = AsyncRetrying(retry=retry_if_exception_type((RedisError, OSError)),
                                 wait=wait_exponential(multiplier=0.2, max=5.0),
                                 stop=stop_before_delay(self.redis_retry_s), before_sleep=_log_outage, reraise=True)

        async def attempt() -> T:   # tenacity awaits only coroutine functions, not lambdas returning awaitables
            return await operation()

        result: T = await retrying(attempt)
        return result

    async def recorded_result(self, job_id: str) -> JobResult | None:
        """The result a previous attempt recorded before it could ack, if any."""
        raw = await self._redis(lambda: self.redis.hget(job_key(job_id), RESULT_FIELD))
        if raw is None:
            return None
        data = json.loads(raw)
        return JobResult(assets=data["assets"], stats=data["stats"])

    async def record_result(self, job_id: str, result: JobResult) -> None:
        value = json.dumps({"assets": dict(result.assets), "stats": dict(result.stats)})
        await self._update(job_id, {RESULT_FIELD: value})

    def processing(self, job: Job, attempt: int) -> None:
        """Send the `processing` webhook in the background: a slow backend must not delay the work."""
        if self.sender is None:
            return
        self.supersede_processing(job.job_id)
        payload = build_payload(job_id=job.job_id, status="processing", stage="claimed", progress=0,
                                shop=job.shop, product_id=job.product_id, variant_id=job.variant_id, attempt=attempt)
        superseded = asyncio.Event()
        deadline_s = min(self.sender.deadline_s, PROCESSING_DEADLINE_S)
        task = asyncio.create_task(self.sender.deliver(payload, deadline_s=deadline_s, superseded=superseded),
                                   name=f"webhook-processing-{job.job_id}")
        pending = _Pending(job.job_id, task, superseded)
        self._pending.add(pending)
        task.add_done_callback(lambda _task: self._pending.discard(pending))

    def supersede_processing(self, job_id: str) -> list[asyncio.Task[Any]]:
        """Stop retrying the job's `processing` deliveries (an attempt in flight finishes): once the
        attempt ends, that news is stale. Returns their tasks."""
        mine = [pending for pending in self._pending if pending.job_id == job_id]
        for pending in mine:
            pending.superseded.set()
        return [pending.task for pending in mine]

    async def completed(self, job: Job, result: JobResult, attempt: int) -> None:
        """Send the `completed` webhook unless a previous attempt delivered it; record the outcome."""
        await self._end_processing(job.job_id)
        if await self._already_delivered(job.job_id, "completed"):
            logger.info("job %s: completed webhook already delivered; not sent again", job.job_id)
            return
        payload = build_payload(job_id=job.job_id, status="completed", stage="done", progress=100, shop=job.shop,
                                product_id=job.product_id, variant_id=job.variant_id, assets=result.assets,
                                stats=result.stats, attempt=attempt)
        await self._deliver(job.job_id, payload)

    async def failed(self, who: JobIdentity, error: Shop3dError, attempt: int) -> None:
        """Send the `failed` webhook of a dead-lettered job (or message) and record the outcome."""
        await self._end_processing(who.job_id)
        if await self._already_delivered(who.job_id, "failed"):
            return
        payload = build_payload(job_id=who.job_id, status="failed", stage="failed", progress=0, shop=who.shop,
                                product_id=who.product_id, variant_id=who.variant_id, error=error, attempt=attempt)
        await self._deliver(who.job_id, payload)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Supersede `processing` deliveries (their jobs are settled or handed back), let one in flight
        finish for `timeout_s`, then cancel it."""
        for pending in self._pending:
            pending.superseded.set()
        if self._pending:
            _, unfinished = await asyncio.wait({pending.task for pending in self._pending}, timeout=timeout_s)
            for task in unfinished:
                task.cancel()

    async def _end_processing(self, job_id: str) -> None:
        """Supersede the job's `processing` delivery and wait for it (at most PROCESSING_DEADLINE_S), so a
        terminal event never overtakes it."""
        tasks = self.supersede_processing(job_id)
        if tasks:
            await asyncio.wait(tasks)

    async def _already_delivered(self, job_id: str, status: str) -> bool:
        value = await self._redis(lambda: self.redis.hget(job_key(job_id), DELIVERY_FIELD.format(status=status)))
        return value == b"delivered"

    async def _deliver(self, job_id: str, payload: Mapping[str, Any]) -> None:
        """Send a terminal event (bounded by the sender's deadline) and record the outcome on the job."""
        if self.sender is None:
            outcome, error = "disabled", None
        else:
            result = await self.sender.deliver(payload)
            outcome, error = ("delivered", None) if result.delivered else ("failed", result.error)
        if outcome == "failed":
            logger.error("job %s: %s webhook undeliverable (%s); kept in %s", job_id, payload["status"], error,
                         UNDELIVERED_WEBHOOKS_KEY)
            await self._keep_undelivered(payload, error)
        fields = {DELIVERY_FIELD.format(status=payload["status"]): outcome}
        if error:
            fields[f"webhook_{payload['status']}_error"] = error
        await self._update(job_id, fields)

    async def _keep_undelivered(self, payload: Mapping[str, Any], error: str | None) -> None:
        """LPUSH for replay, trimmed to the newest `undelivered_kept` in the same transaction."""
        entry = encode_payload({"payload": payload, "error": error, "recorded_at": utc_now()})

        async def push() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(UNDELIVERED_WEBHOOKS_KEY, entry)
                pipe.ltrim(UNDELIVERED_WEBHOOKS_KEY, 0, self.undelivered_kept - 1)
                await pipe.execute()

        await self._redis(push)

    async def _update(self, job_id: str, fields: Mapping[str, str]) -> None:
        """Write on the job hash with its TTL renewed (a malformed message's `unknown-*` id gets one too)."""
        await self._redis(lambda: update_job(self.redis, job_id, fields, ttl_s=self.state_ttl_s))


def _log_outage(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    logger.warning("Redis unavailable while reporting (%s); retrying in %.1fs", type(error).__name__,
                   state.upcoming_sleep)
