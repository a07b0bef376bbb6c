"""A reliable consumer of the backend's Redis list (integrations.md §3.1): no job is lost or run twice at once.

    queue = ReliableQueue(connect(url, config), "celery", default_consumer_id(), config)
    await queue.start()                          # reclaims its own leftovers, starts heartbeat + upkeep
    claim = await queue.claim()                  # None after config.block_s without a message
    if claim and claim.rejection: notify failed  # already dead-lettered (bad message, attempts exhausted)
    if claim and claim.runnable:                 # duplicates are already acked, busy copies deferred
        try:    work...; await queue.complete(claim, JobResult(assets, stats))   # after upload + webhook
        except ClaimLost: drop the work          # self-fenced: someone else owns the message now
        except Exception as exc: if await queue.fail(claim, exc) == "dead_lettered": notify failed
    await queue.stop()                           # hands unfinished claims back to the queue

Mechanics: BLMOVE from the RIGHT of the queue into `shop3d:processing:{consumer}`; a heartbeat key
(TTL config.heartbeat_ttl_s) renewed every third of the TTL, with the job locks; reapers requeue the
lists of consumers whose heartbeat expired and move due retries back. `fail` is the one place that
sorts failures: TransientError -> delayed retry until max_attempts, anything else -> dead list.
Self-fencing: every settle checks, atomically, that this consumer's heartbeat still exists; if it had
lapsed (so a reaper may have handed the message to someone else) the message is put back instead
and ClaimLost is raised; `owns(claim)` lets long work notice a lapse early. Redis outages: `claim`
backs off and returns None; settles retry until config.settle_timeout_s; background loops never die.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import redis.asyncio as aioredis

from pipeline.errors import JobRejected, Shop3dError, TransientError, error_from_exception
from pipeline.jobs import state as job_state
from pipeline.jobs.envelopes import Job, ParsedMessage, parse_message
from pipeline.jobs.index import INDEX_KEYS
from pipeline.jobs.keys import DEAD_INFO_KEY, DEAD_KEY, DELAYED_KEY, heartbeat_key, job_key, lock_key, processing_key
from pipeline.jobs.log_context import job_logging
from pipeline.jobs.state import JobResult
from pipeline.queue.admin import DeadLetter, dead_letter_count, dead_letters, enqueue, queue_depth, submit_job
from pipeline.queue.config import (
    REDIS_DOWN,
    QueueConfig,
    backoff_delay,
    connect,
    default_consumer_id,
    orphan_grace,
    reply_bytes,
    retry_delay,
    validate_client,
    validate_consumer_id,
)
from pipeline.queue.scripts import QueueScripts
from pipeline.queue.upkeep import QueueUpkeep

__all__ = ["Claim", "ClaimLost", "DeadLetter", "FailureOutcome", "JobResult", "QueueConfig", "ReliableQueue",
           "connect", "dead_letter_count", "dead_letters", "default_consumer_id", "enqueue", "queue_depth",
           "submit_job"]

log = logging.getLogger(__name__)

FailureOutcome = Literal["retry_scheduled", "dead_lettered"]
SettleMode = Literal["ack", "retry", "dead", "release"]


class ClaimLost(Exception):
    """This consumer no longer owns the claim (heartbeat lapsed, or the queue was stopped): drop the work.

    Not a Shop3dError on purpose: it says nothing about the job, and must not be sorted by `fail`.
    """


@dataclass(frozen=True)
class Claim:
    """One message taken from the queue, and what the queue already decided about it."""

    raw: bytes                            # the exact bytes, as LREM needs them
    consumer: str
    message: ParsedMessage | None = None  # None when the message could not be parsed
    rejection: JobRejected | None = None  # set: already dead-lettered; the caller only notifies
    attempt: int = 1                      # claims of this job so far, this one included
    duplicate: bool = False               # the job had completed: acked without work
    lock_obtained: bool = False           # False: another consumer runs this job; the copy was deferred
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def job(self) -> Job | None:
        return self.message.job if self.message is not None else None

    @property
    def job_id(self) -> str | None:
        """The business id: the job's, else one recovered from a rejected message."""
        if self.message is not None:
            return self.message.job.job_id
        if self.rejection is not None:
            job_id = self.rejection.details.get("job_id")
            return job_id if isinstance(job_id, str) else None
        return None

    @property
    def runnable(self) -> bool:
        """True when the caller must now do the work and then `complete`, `fail` or `release` it."""
        return self.message is not None and self.rejection is None and not self.duplicate and self.lock_obtained


class ReliableQueue:
    """At-least-once consumer of `queue_name` for one consumer id (unique per process, or stable per slot)."""

    def __init__(self, redis: aioredis.Redis, queue_name: str, consumer_id: str,
                 config: QueueConfig | None = None) -> None:
        self.config = config or QueueConfig()
        validate_client(redis, self.config)
        self.redis = redis
        self.queue_name = queue_name
        self.consumer_id = validate_consumer_id(consumer_id)
        self._processing = processing_key(consumer_id)
        self._heartbeat = heartbeat_key(consumer_id)
        self._scripts = QueueScripts.register(redis)
        self._held: Counter[bytes] = Counter()     # raws in our processing list that we know about
        self._running: dict[str, Claim] = {}       # runnable claims, by token (their locks are renewed)
        self._claims_pending = 0
        self._claims_started = 0
        self._stop = asyncio.Event()   # an Event, not a bool: set by stop() while claim() awaits
        self._redis_failures = 0
        self._upkeep = QueueUpkeep(redis, self._scripts, queue_name, consumer_id, self.config, self,
                                   orphan_grace_s=orphan_grace(redis, self.config))

    # ----- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Beat, run one reaper pass (which hands back a previous run's leftovers), start the loops."""
        await self._upkeep.renew_heartbeat(raise_errors=True)
        await self._upkeep.run_once()
        self._upkeep.start()

    async def stop(self) -> None:
        """Stop claiming, hand every unsettled claim back (LMOVE-style, atomically), stop the loops."""
        self._stop.set()
        deadline = time.monotonic() + self.config.block_s + 5.0
        # Polled, not awaited on an Event: claims end on many paths, and this runs once per shutdown.
        while self._claims_pending and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for claim in list(self._running.values()):
            await self.release(claim)
        await self._upkeep.stop()
        try:
            await self.redis.delete(self._heartbeat)   # reapers need not wait for the TTL
        except REDIS_DOWN:
            log.warning("consumer %s: Redis unreachable at stop; heartbeat left to expire", self.consumer_id)

    def check_health(self) -> None:
        """Raise when a background loop has died (the ingress's check_health calls this)."""
        self._upkeep.check_health()

    def owns(self, claim: Claim) -> bool:
        """False once the claim was settled or released, or the heartbeat could not be renewed for a TTL."""
        return claim.token in self._running and self._upkeep.heartbeat_fresh()

    @property
    def inflight(self) -> int:
        """Runnable claims not yet settled."""
        return len(self._running)

    # ClaimHolder, for the upkeep loops
    def known_raws(self) -> Counter[bytes]:
        return Counter(self._held)

    def running_job_ids(self) -> list[str]:
        return [claim.job_id for claim in self._running.values() if claim.job_id is not None]

    def claims_started(self) -> int:
        return self._claims_started

    # ----- taking ----------------------------------------------------------------------------------

    async def claim(self) -> Claim | None:
        """Take the oldest message, or None after block_s (or while Redis is down, after a backoff)."""
        if self._stop.is_set():
            return None
        self._claims_pending += 1
        self._claims_started += 1
        try:
            raw = await self._take()
            if raw is None:
                return None
            if self._stop.is_set():   # stop() began while we were blocked: put it straight back
                await self._scripts.hand_back(keys=[self._processing, self.queue_name], args=[raw])
                self._unhold(raw)
                return None
            return await self._admit(raw)
        except REDIS_DOWN as exc:
            await self._back_off("claim", exc)
            return None
        except ClaimLost:
            return None   # self-fenced while dead-lettering: the message went back to the queue
        finally:
            self._claims_pending -= 1

    async def _take(self) -> bytes | None:
        """SET the heartbeat, then BLMOVE; the raw is registered before any other coroutine runs."""
        await self._upkeep.renew_heartbeat(raise_errors=True)
        # Redis takes a fractional block time; the int in redis-py's stub is narrower than the command.
        block: Any = self.config.block_s
        reply = await self.redis.blmove(self.queue_name, self._processing, block, "RIGHT", "LEFT")
        if self._redis_failures:
            log.info("consumer %s: Redis reachable again", self.consumer_id)
            self._redis_failures = 0
        if reply is None:
            return None
        raw = reply_bytes(reply)
        self._held[raw] += 1
        return raw

    async def _admit(self, raw: bytes) -> Claim:
        """Parse, deduplicate, lock and count one taken message; rejections are dead-lettered here."""
        try:
            message = parse_message(raw)
        except JobRejected as rejection:
            claim = Claim(raw, self.consumer_id, rejection=rejection)
            with job_logging(claim.job_id or "unknown"):
                log.warning("job %s: rejected from queue %s: %s (%s)", claim.job_id or "<unknown>",
                            self.queue_name, rejection.code, rejection.message)
                await self._sort_failure(claim, rejection)
            return claim
        with job_logging(message.job.job_id):
            return await self._admit_job(raw, message)

    async def _admit_job(self, raw: bytes, message: ParsedMessage) -> Claim:
        job_id = message.job.job_id
        try:
            kind, attempt = await self._scripts.claim(
                keys=[job_key(job_id), lock_key(job_id), self._processing, DELAYED_KEY],
                args=[self.consumer_id, self.config.lock_ttl_ms, raw, time.time() + self.config.lock_retry_s,
                      self.config.state_ttl_s])
        except REDIS_DOWN:
            self._unhold(raw)   # unknown outcome: the orphan sweep hands it back if it is still ours
            raise
        claim = Claim(raw, self.consumer_id, message=message, attempt=int(attempt))
        if kind == 0:
            self._unhold(raw)
            log.info("job %s: already completed; duplicate delivery acknowledged", job_id)
            return replace(claim, duplicate=True)
        if kind == 1:
            self._unhold(raw)
            log.info("job %s: running on another consumer; copy deferred %.1fs", job_id, self.config.lock_retry_s)
            return claim
        claim = replace(claim, lock_obtained=True)
        if claim.attempt > self.config.max_attempts:
            exhausted = JobRejected("attempts_exhausted", f"claimed {claim.attempt} times without finishing "
                                   f"(limit {self.config.max_attempts})", job_id=job_id)
            await self._sort_failure(claim, exhausted)
            return replace(claim, rejection=exhausted)
        self._running[claim.token] = claim
        try:
            await self._record_claimed(claim, message.job)
        except REDIS_DOWN as exc:   # the state is informative; the claim itself is safely held
            log.warning("job %s: could not record the processing state (%s)", job_id, type(exc).__name__)
        log.info("job %s: claimed by %s (attempt %d/%d)", job_id, self.consumer_id, claim.attempt,
                 self.config.max_attempts)
        return claim

    async def _record_claimed(self, claim: Claim, job: Job) -> None:
        now = job_state.utc_now()
        await job_state.update_job(self.redis, job.job_id, job_state.claimed_fields(
            job, attempt=claim.attempt, consumer=self.consumer_id, now=now), ttl_s=self.config.state_ttl_s,
            delete=("error", "retry_at", "finished_at"), created_at=now)

    # ----- settling --------------------------------------------------------------------------------

    async def complete(self, claim: Claim, result: JobResult) -> None:
        """Ack a finished job: state `completed` with its assets, message removed, lock freed; atomically.

        Call only once the upload and the webhook are recorded. Raises ClaimLost when self-fenced.
        """
        self._require_runnable(claim)
        await self._settle(claim, "ack", job_state.completed_fields(result, job_state.utc_now()))
        log.info("job %s: completed (attempt %d)", claim.job_id, claim.attempt)

    async def fail(self, claim: Claim, exc: BaseException) -> FailureOutcome:
        """Sort a failed runnable claim: retry a TransientError later, dead-letter everything else.

        Unknown exceptions become `internal_error`. Raises ClaimLost when self-fenced.
        """
        self._require_runnable(claim)
        return await self._sort_failure(claim, error_from_exception(exc), exc)

    async def release(self, claim: Claim) -> None:
        """Hand an unfinished claim back to the consumption end of the queue, not counted as an attempt."""
        if claim.token not in self._running:
            return
        await self._settle(claim, "release", job_state.requeued_fields(job_state.utc_now()))
        log.info("job %s: handed back to %s unfinished", claim.job_id, self.queue_name)

    async def _sort_failure(self, claim: Claim, error: Shop3dError, exc: BaseException | None = None) -> FailureOutcome:
        """The one place that decides retry vs dead-letter, for every failure the queue sees."""
        if error.code == "internal_error" and exc is not None:
            log.error("job %s: unexpected %s", claim.job_id, type(exc).__name__, exc_info=exc)
        now = job_state.utc_now()
        if isinstance(error, TransientError) and claim.attempt < self.config.max_attempts:
            delay = retry_delay(claim.attempt, self.config.retry_base_s, self.config.retry_max_s)
            due = time.time() + delay
            fields = job_state.retry_fields(error, retry_at=job_state.utc_iso(due), now=now)
            await self._settle(claim, "retry", fields, due=due)
            log.warning("job %s: %s on attempt %d/%d; retrying in %.1fs", claim.job_id, error.code,
                        claim.attempt, self.config.max_attempts, delay)
            return "retry_scheduled"
        info = json.dumps({"job_id": claim.job_id, "error": error.to_dict(), "attempts": claim.attempt,
                           "consumer": self.consumer_id, "queue": self.queue_name, "ts": now})
        await self._settle(claim, "dead", job_state.failed_fields(error, now), info=info)
        log.warning("job %s: dead-lettered after attempt %d: %s (%s)", claim.job_id, claim.attempt,
                    error.code, error.message)
        return "dead_lettered"

    async def _settle(self, claim: Claim, mode: SettleMode, fields: dict[str, str], *,
                      due: float = 0.0, info: str = "") -> None:
        """Run the settle script (retrying through outages) and forget the claim; ClaimLost unless settled."""
        try:
            status, retried = await self._settle_raw(claim.raw, claim.job_id or "", mode, fields, due=due, info=info)
        finally:
            self._forget(claim)
        if status == 1 or mode == "release":
            return
        if status == 0 and retried and self._upkeep.heartbeat_fresh():
            log.info("job %s: settle (%s) confirmed after a reconnect", claim.job_id, mode)
            return
        reason = "heartbeat lapsed; handed back" if status == -1 else "no longer in this consumer's list"
        log.error("job %s: claim lost (%s); not acknowledging", claim.job_id, reason)
        raise ClaimLost(f"job {claim.job_id}: {reason}")

    async def _settle_raw(self, raw: bytes, job_id: str, mode: SettleMode, fields: dict[str, str], *,
                          due: float = 0.0, info: str = "") -> tuple[int, bool]:
        """(script status, whether a reconnect happened); raises the Redis error after settle_timeout_s."""
        keys = [self._heartbeat, self._processing, lock_key(job_id), job_key(job_id), self.queue_name,
                DELAYED_KEY, DEAD_KEY, DEAD_INFO_KEY, *INDEX_KEYS]
        pairs = job_state.flatten(fields)
        args: list[Any] = [mode, raw, job_id, self.consumer_id, self.config.state_ttl_s, due, info,
                           self.config.dead_letters_kept, *pairs]
        # Hand-rolled rather than tenacity: the loop must report whether a reconnect happened (then a
        # status 0 means our own earlier try went through) and shares its failure count with claim()'s
        # backoff, which both log once per outage; threading that through callbacks reads worse.
        deadline = time.monotonic() + self.config.settle_timeout_s
        retried = False
        while True:
            try:
                status = int(await self._scripts.settle(keys=keys, args=args))
                self._redis_failures = 0
                return status, retried
            except REDIS_DOWN as exc:
                if time.monotonic() >= deadline:
                    raise
                retried = True
                await self._back_off(f"settle ({mode})", exc)

    def _forget(self, claim: Claim) -> None:
        self._running.pop(claim.token, None)
        self._unhold(claim.raw)

    def _unhold(self, raw: bytes) -> None:
        self._held[raw] -= 1
        if self._held[raw] <= 0:
            del self._held[raw]

    def _require_runnable(self, claim: Claim) -> None:
        if claim.token not in self._running:
            raise ClaimLost(f"job {claim.job_id}: claim is not held (already settled, released or never runnable)")

    async def _back_off(self, what: str, exc: BaseException) -> None:
        self._redis_failures += 1
        delay = backoff_delay(self._redis_failures, cap=self.config.reconnect_max_s)
        log_at = logging.WARNING if self._redis_failures == 1 else logging.DEBUG
        log.log(log_at, "consumer %s: Redis unavailable during %s (%s); retrying in %.2fs", self.consumer_id,
                what, type(exc).__name__, delay)
        await asyncio.sleep(delay)

