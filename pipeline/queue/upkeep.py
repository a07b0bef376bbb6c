"""The background side of the reliable queue: heartbeat (with job locks) and the reaper.

The heartbeat proves this consumer is alive; the reaper, run by every consumer, requeues the
processing lists of consumers whose heartbeat expired, moves due retries back to the queue, and
hands back "orphans" in this consumer's own list (a BLMOVE whose reply was lost in an outage, or
leftovers of a previous run under the same consumer id). Both loops survive Redis outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.jobs.keys import (
    DELAYED_KEY,
    PROCESSING_PATTERN,
    consumer_from_processing_key,
    heartbeat_key,
    lock_key,
    processing_key,
)
from pipeline.queue.config import REDIS_DOWN, QueueConfig, reply_bytes
from pipeline.queue.scripts import QueueScripts

log = logging.getLogger(__name__)
PROMOTE_BATCH = 100


class ClaimHolder(Protocol):
    """What upkeep needs to know about the claims its consumer holds."""

    def known_raws(self) -> Counter[bytes]:
        """Raw messages in this consumer's processing list that it knows it holds."""

    def running_job_ids(self) -> list[str]:
        """Job ids whose locks this consumer holds."""

    def claims_started(self) -> int:
        """How many claims (BLMOVEs) this consumer has started; 0: none can be in flight."""


class QueueUpkeep:
    """Heartbeat and reaper loops of one consumer; `check_health` raises when either has died."""

    def __init__(self, redis: aioredis.Redis, scripts: QueueScripts, queue_name: str, consumer_id: str,
                 config: QueueConfig, holder: ClaimHolder, *, orphan_grace_s: float) -> None:
        self.redis = redis
        self.scripts = scripts
        self.queue_name = queue_name
        self.consumer_id = consumer_id
        self.config = config
        self.holder = holder
        self._heartbeat = heartbeat_key(consumer_id)
        self._processing = processing_key(consumer_id)
        self._last_beat = float("-inf")   # monotonic time the last successful renewal was sent
        self._beat_failing = False
        self._lapse_reported = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.orphan_grace_s = orphan_grace_s
        self._suspects: dict[bytes, float] = {}   # unregistered raw in our list -> when first seen (monotonic)

    def start(self) -> None:
        self._stopping.clear()
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name=f"shop3d-heartbeat-{self.consumer_id}"),
                       asyncio.create_task(self._reaper_loop(), name=f"shop3d-reaper-{self.consumer_id}")]

    async def stop(self) -> None:
        """Stop both loops. The event, not only cancel(), ends them: redis-py can swallow a cancellation."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.config.settle_timeout_s)
            if pending:
                log.error("consumer %s: queue loops did not stop in time", self.consumer_id)
        self._tasks = []

    def check_health(self) -> None:
        for task in self._tasks:
            if task.done() and not self._stopping.is_set():
                raise RuntimeError(f"queue loop {task.get_name()} stopped") from task.exception()

    def heartbeat_fresh(self) -> bool:
        """True while the last renewal is younger than the TTL, i.e. no reaper can have taken our list."""
        return time.monotonic() - self._last_beat < self.config.heartbeat_ttl_s

    async def renew_heartbeat(self, *, raise_errors: bool = False) -> bool:
        """SET the heartbeat key and extend our job locks; False (or the error) when Redis is down."""
        sent_at = time.monotonic()   # the TTL starts no earlier than this, so freshness is judged safely
        try:
            await self.redis.set(self._heartbeat, self.consumer_id, px=self.config.heartbeat_ttl_ms)
            job_ids = self.holder.running_job_ids()
            if job_ids:
                await self.scripts.renew_locks(keys=[lock_key(job_id) for job_id in job_ids],
                                               args=[self.consumer_id, self.config.lock_ttl_ms])
        except REDIS_DOWN as exc:
            self._note_beat_failure(exc)
            if raise_errors:
                raise
            return False
        if self._beat_failing:
            log.info("consumer %s: heartbeat renewed again", self.consumer_id)
            self._beat_failing = self._lapse_reported = False
        self._last_beat = sent_at
        return True

    def _note_beat_failure(self, exc: BaseException) -> None:
        if not self._beat_failing:
            log.warning("consumer %s: heartbeat renewal failed (%s)", self.consumer_id, type(exc).__name__)
            self._beat_failing = True
        if not self.heartbeat_fresh() and self.holder.running_job_ids() and not self._lapse_reported:
            self._lapse_reported = True
            log.error("consumer %s: heartbeat lapsed; in-flight jobs %s are fenced and will not be acked",
                      self.consumer_id, ", ".join(self.holder.running_job_ids()))

    async def run_once(self) -> None:
        """One reaper pass: due retries back, dead consumers' lists back, our own orphans back."""
        promoted = await self.scripts.promote(keys=[DELAYED_KEY, self.queue_name], args=[time.time(), PROMOTE_BATCH])
        if promoted:
            log.info("queue %s: %d delayed message(s) due again", self.queue_name, promoted)
        await self.reap_dead_consumers()
        await self.sweep_orphans()

    async def reap_dead_consumers(self) -> int:
        """Requeue the processing list of every other consumer whose heartbeat key is gone."""
        total = 0
        async for key in self.redis.scan_iter(match=PROCESSING_PATTERN, count=100):
            name = key.decode() if isinstance(key, bytes) else key
            consumer = consumer_from_processing_key(name)
            if consumer == self.consumer_id:
                continue
            moved = int(await self.scripts.reap(keys=[heartbeat_key(consumer), name, self.queue_name]))
            if moved:
                log.warning("consumer %s looks dead: requeued %d message(s) onto %s", consumer, moved,
                            self.queue_name)
            total += moved
        return total

    async def sweep_orphans(self) -> int:
        """Hand back raws in our own list that no claim holds and that stayed so for `orphan_grace_s`.

        A BLMOVE in flight may have moved a raw its reply has not registered yet; once the client's socket
        timeout has passed, that reply has arrived or is lost for good, so a raw still unknown is an orphan.
        Before any claim started, everything unknown is a previous run's leftover and goes back at once.
        (Skipping the sweep while a claim is in flight, as it once did, starved it: an idle consumer's loop
        is always waiting in BLMOVE, so a message whose reply a Redis restart lost stayed stranded.)
        """
        listed = Counter(reply_bytes(raw) for raw in await self.redis.lrange(self._processing, 0, -1))
        unknown = listed - self.holder.known_raws()
        now = time.monotonic()
        self._suspects = {raw: self._suspects.get(raw, now) for raw in unknown}
        fresh_start = self.holder.claims_started() == 0
        moved = 0
        for raw, count in unknown.items():
            if not fresh_start and now - self._suspects[raw] < self.orphan_grace_s:
                continue
            self._suspects.pop(raw, None)
            for _ in range(count):
                moved += int(await self.scripts.hand_back(keys=[self._processing, self.queue_name], args=[raw]))
        if moved:
            log.warning("consumer %s: handed back %d unclaimed message(s) from its own list", self.consumer_id, moved)
        return moved

    async def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.renew_heartbeat()
            except RedisError as exc:   # a Redis-side refusal; outages are handled inside renew_heartbeat
                self._note_beat_failure(exc)
            await self._pause(self.config.heartbeat_interval_s)

    async def _reaper_loop(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                await self.run_once()
                failing = False
            # Every outage in REDIS_DOWN (a bare OSError included) and Redis-side refusals (OOM, MISCONF).
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("consumer %s: reaper pass failed (%s)", self.consumer_id, type(exc).__name__)
                failing = True
            await self._pause(self.config.reap_interval_s)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if stop() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
