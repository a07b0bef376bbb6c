"""Knobs of the reliable queue, the client it needs, and the pure timing rules (retry and reconnect delays)."""

from __future__ import annotations

import os
import random
import re
import socket
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.jobs.keys import DEAD_LETTERS_KEPT
from pipeline.jobs.state import STATE_TTL_S

# What "Redis went away" looks like (refused, reset, timed out, still loading after a restart).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_CONSUMER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


@dataclass(frozen=True)
class QueueConfig:
    """Timing and limits of one ReliableQueue; seconds unless named otherwise. Bad values raise ValueError."""

    max_attempts: int = 3            # claims of one job before it is dead-lettered (crashes count too)
    block_s: float = 2.0             # BLMOVE block; short so stop() stays responsive
    heartbeat_ttl_s: float = 30.0    # a consumer silent this long is dead; its list is requeued
    reap_interval_s: float = 10.0    # how often upkeep requeues dead lists and due retries
    retry_base_s: float = 10.0       # first retry delay of a TransientError; doubles per attempt
    retry_max_s: float = 600.0
    lock_retry_s: float = 30.0       # delay of a copy whose job another consumer is running
    reconnect_max_s: float = 5.0     # cap of the backoff while Redis is unreachable
    settle_timeout_s: float = 120.0  # how long complete/fail/release keep retrying through an outage
    state_ttl_s: int = STATE_TTL_S   # lifetime of a job-state hash after its last write
    dead_letters_kept: int = DEAD_LETTERS_KEPT   # the dead list's cap; the oldest letters are dropped

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.dead_letters_kept < 1:
            raise ValueError("max_attempts and dead_letters_kept must be at least 1")
        for name in ("block_s", "heartbeat_ttl_s", "reap_interval_s", "retry_base_s", "retry_max_s",
                     "lock_retry_s", "reconnect_max_s", "settle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def heartbeat_interval_s(self) -> float:
        """Renew three times per TTL, so one slow renewal does not kill a live consumer."""
        return self.heartbeat_ttl_s / 3

    @property
    def heartbeat_ttl_ms(self) -> int:
        return int(self.heartbeat_ttl_s * 1000)

    @property
    def lock_ttl_ms(self) -> int:
        """Job locks live as long as the heartbeat and are renewed with it."""
        return self.heartbeat_ttl_ms


def retry_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before retry number `attempt` (1-based): base * 2**(attempt-1), capped at max_s."""
    return min(max_s, base_s * 2.0 ** max(0, attempt - 1))


def backoff_delay(failures: int, *, cap: float, base: float = 0.1) -> float:
    """Reconnect delay after `failures` consecutive errors: exponential, capped, half-jittered."""
    ceiling = min(cap, base * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def reply_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes (the queue's clients return bytes; a str would come from a decoding client)."""
    return value if isinstance(value, bytes) else value.encode()


def connect(redis_url: str, config: QueueConfig) -> aioredis.Redis:
    """The client the queue needs: raw bytes (LREM matches exact bytes) and a socket timeout above BLMOVE's."""
    return aioredis.Redis.from_url(redis_url, decode_responses=False, socket_timeout=config.block_s + 10.0,
                                   socket_connect_timeout=5.0, health_check_interval=30)


def validate_client(redis: aioredis.Redis, config: QueueConfig) -> None:
    """Refuse a client that would break the queue: decoded replies, or a socket timeout <= the BLMOVE block."""
    kwargs = redis.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ValueError("the queue needs decode_responses=False: LREM must see the exact raw bytes")
    timeout = kwargs.get("socket_timeout")
    if timeout is not None and timeout <= config.block_s:
        raise ValueError(f"socket_timeout ({timeout}s) must exceed block_s ({config.block_s}s), "
                         "or every idle BLMOVE ends in TimeoutError")


def orphan_grace(redis: aioredis.Redis, config: QueueConfig) -> float:
    """How long an unregistered raw may sit in our list before it counts as an orphan: past the client's
    socket timeout (plus a second), a BLMOVE that moved it has returned or failed; a client without a
    timeout gets the timeout `connect` would have set."""
    timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
    return float(timeout if timeout is not None else config.block_s + 10.0) + 1.0


def validate_consumer_id(consumer_id: str) -> str:
    """Consumer ids become Redis key parts: 1-200 chars of [A-Za-z0-9._:-]."""
    if not _CONSUMER_ID.match(consumer_id):
        raise ValueError("consumer id must be 1-200 characters of [A-Za-z0-9._:-]")
    return consumer_id


def default_consumer_id() -> str:
    """host:pid:random, unique per process; use a stable name per slot to reclaim leftovers at start."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:100] or "host"
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
