"""pipeline.queue.consumer + pipeline.jobs.state against a real redis-server (flushed per test), with short timings.

A "crashed" consumer is a second ReliableQueue that claims but is never started: nothing renews its
heartbeat, so the key expires after heartbeat_ttl_s exactly as it would if the process had died.
Every wait is bounded by a deadline; the tests are plain functions driving asyncio.run.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery

from pipeline.errors import JobRejected, TransientError
from pipeline.jobs.envelopes import Job, to_queue_message, validate_job
from pipeline.jobs.keys import DELAYED_KEY, PROCESSING_PATTERN, heartbeat_key, job_key, lock_key, processing_key
from pipeline.jobs.state import CLAIMS_FIELD, JobResult, get_job_state, record_progress, record_queued
from pipeline.queue.config import retry_delay
from pipeline.queue.consumer import (
    Claim,
    ClaimLost,
    QueueConfig,
    ReliableQueue,
    connect,
    dead_letter_count,
    dead_letters,
    enqueue,
    queue_depth,
    submit_job,
)
from pipeline.testing.redis_server import RedisServer

QUEUE = "celery"
CONFIG = QueueConfig(max_attempts=3, block_s=0.2, heartbeat_ttl_s=1.0, reap_interval_s=0.1, retry_base_s=0.5,
                     retry_max_s=2.0, lock_retry_s=0.3, reconnect_max_s=0.3, settle_timeout_s=20.0)
RESULT = JobResult(assets={"glb": "https://cdn.example/test-shop/mug/model.glb"}, stats={"faces": 1234})


def run(scenario: Coroutine[Any, Any, None], timeout_s: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout_s))


def make_job(job_id: str | None = None) -> Job:
    return validate_job({"job_id": job_id or str(uuid.uuid4()), "shop": "test-shop.myshopify.com",
                         "product_id": "gid://shopify/Product/123", "product_handle": "coffee-mug",
                         "image_urls": ["https://example.com/image.jpg"], "metadata": {"productTitle": "Mug"}})


def readme_envelope(job: Job) -> bytes:
    """The same job in a README envelope with its own envelope id: different bytes, same job_id."""
    return json.dumps({"task": "generate_3d_model", "id": str(uuid.uuid4()), "args": [],
                       "kwargs": job.model_dump(mode="json", exclude_none=True)}).encode()


@asynccontextmanager
async def consumer(url: str, name: str, config: QueueConfig = CONFIG, *, start: bool = True
                   ) -> AsyncIterator[ReliableQueue]:
    client = connect(url, config)
    queue = ReliableQueue(client, QUEUE, name, config)
    if start:
        await queue.start()
    try:
        yield queue
    finally:
        if start:
            await queue.stop()
        await client.aclose()


@asynccontextmanager
async def plain_client(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def claim_until(queue: ReliableQueue, accept: Callable[[Claim], bool], timeout_s: float = 10.0) -> Claim:
    """Claim repeatedly until a claim satisfies `accept` (others: None, deferred copies)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        claim = await queue.claim()
        if claim is not None and accept(claim):
            return claim
    raise AssertionError("no acceptable claim before the deadline")


def decided(claim: Claim) -> bool:
    return claim.runnable or claim.rejection is not None


async def drain(queue: ReliableQueue, handle: Callable[[Job], Awaitable[JobResult]],
                done: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """A consumer loop like the ingress's: run every runnable claim and complete it, until `done()`."""
    deadline = time.monotonic() + timeout_s
    while not await done():
        if time.monotonic() > deadline:
            raise AssertionError("the consumer loop did not finish before the deadline")
        claim = await queue.claim()
        if claim is None or not claim.runnable or claim.job is None:
            continue
        try:
            await queue.complete(claim, await handle(claim.job))
        except ClaimLost:
            continue


async def delayed_count(client: aioredis.Redis) -> int:
    return int(await client.zcard(DELAYED_KEY))


async def processing_count(client: aioredis.Redis) -> int:
    return sum([int(await client.llen(key)) async for key in client.scan_iter(match=PROCESSING_PATTERN)])


async def claims_counted(client: aioredis.Redis, job: Job) -> bool:
    """Whether the queue's attempt counter of `job` is still set (it is cleared when the job settles)."""
    return bool(await client.hexists(job_key(job.job_id), CLAIMS_FIELD))


async def all_settled(client: aioredis.Redis) -> bool:
    return (await queue_depth(client, QUEUE) == 0 and await delayed_count(client) == 0
            and await processing_count(client) == 0)


# ----- the happy path -----------------------------------------------------------------------------------

def test_jobs_are_taken_fifo_from_the_right_and_completed(redis_url: str) -> None:
    jobs = [make_job() for _ in range(3)]

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            for job in jobs:
                await enqueue(client, QUEUE, to_queue_message(job))   # LPUSH, like the backend
            for job in jobs:
                claim = await claim_until(queue, decided)
                assert claim.job == job and claim.attempt == 1 and claim.runnable
                assert await client.lrange(processing_key("worker-a"), 0, -1) == [claim.raw]
                assert await client.get(lock_key(job.job_id)) == b"worker-a"
                state = await get_job_state(client, job.job_id)
                assert state is not None and state["status"] == "processing" and state["consumer"] == "worker-a"
                assert state[CLAIMS_FIELD] == 1 and await client.ttl(job_key(job.job_id)) > 0
                await record_progress(client, job.job_id, stage="reconstruct", progress=40)
                assert (await get_job_state(client, job.job_id) or {})["progress"] == 40
                assert queue.owns(claim)
                await queue.complete(claim, RESULT)
                assert not queue.owns(claim)
            for job in jobs:
                state = await get_job_state(client, job.job_id)
                assert state is not None
                assert state["status"] == "completed" and state["progress"] == 100 and state["attempts"] == 1
                assert state["assets"] == dict(RESULT.assets) and state["stats"] == dict(RESULT.stats)
                assert state["created_at"] <= state["updated_at"] == state["finished_at"]
                assert await client.exists(lock_key(job.job_id)) == 0
                assert not await claims_counted(client, job)
            assert await all_settled(client)
            assert await queue.claim() is None   # an empty queue answers None after block_s

    run(scenario())


def test_heartbeat_is_renewed_in_the_background(redis_url: str) -> None:
    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            await asyncio.sleep(CONFIG.heartbeat_ttl_s * 2.5)
            assert await client.exists(heartbeat_key("worker-a")) == 1
            queue.check_health()
        async with plain_client(redis_url) as client:
            assert await client.exists(heartbeat_key("worker-a")) == 0   # stop() removes it

    run(scenario())


def test_client_must_keep_raw_bytes_and_outwait_the_block() -> None:
    config = QueueConfig(block_s=5.0)
    with pytest.raises(ValueError, match="decode_responses"):
        ReliableQueue(aioredis.Redis(decode_responses=True, socket_timeout=10), QUEUE, "w", config)
    with pytest.raises(ValueError, match="socket_timeout"):
        ReliableQueue(aioredis.Redis(socket_timeout=5), QUEUE, "w", config)
    with pytest.raises(ValueError, match="consumer id"):
        ReliableQueue(connect("redis://127.0.0.1:1/0", config), QUEUE, "bad name/with slash", config)
    ReliableQueue(connect("redis://127.0.0.1:1/0", config), QUEUE, "host:1:abc", config)   # no I/O yet
    with pytest.raises(ValueError):
        QueueConfig(max_attempts=0)


def test_retry_delay_doubles_and_is_capped() -> None:
    assert [retry_delay(attempt, 10.0, 60.0) for attempt in (1, 2, 3, 4, 5)] == [10.0, 20.0, 40.0, 60.0, 60.0]


# ----- crashes, fencing, attempts ---------------------------------------------------------------------

def test_crashed_consumer_job_is_reaped_and_rerun_by_another(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "crasher", start=False) as crashed, \
                consumer(redis_url, "survivor") as survivor:
            await enqueue(client, QUEUE, to_queue_message(job))
            lost = await claim_until(crashed, decided)
            assert lost.runnable
            await asyncio.sleep(CONFIG.heartbeat_ttl_s / 2)
            assert await queue_depth(client, QUEUE) == 0   # not reaped while the heartbeat lives
            rerun = await claim_until(survivor, decided)   # the reaper requeues it once the key expires
            assert rerun.job == job and rerun.attempt == 2
            await survivor.complete(rerun, RESULT)
            # The crashed consumer "wakes up": its settle is fenced and must not ack or requeue again.
            assert not crashed.owns(lost)
            with pytest.raises(ClaimLost):
                await crashed.complete(lost, RESULT)
            state = await get_job_state(client, job.job_id)
            assert state is not None and state["status"] == "completed" and state["consumer"] == "survivor"
            assert await all_settled(client)

    run(scenario())


def test_lapsed_heartbeat_hands_the_job_back_instead_of_acking(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "slow", start=False) as slow:
            await enqueue(client, QUEUE, to_queue_message(job))
            claim = await claim_until(slow, decided)
            await eventually(lambda: _gone(client, heartbeat_key("slow")), "the heartbeat to expire")
            assert not slow.owns(claim)
            with pytest.raises(ClaimLost):
                await slow.complete(claim, RESULT)
            assert await client.lrange(QUEUE, 0, -1) == [claim.raw]   # back, once, for someone else
            assert (await get_job_state(client, job.job_id) or {})["status"] == "processing"

    run(scenario())


async def _gone(client: aioredis.Redis, key: str) -> bool:
    return await client.exists(key) == 0


def test_stable_consumer_id_reclaims_its_leftovers_at_start(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client:
            async with consumer(redis_url, "slot-0", start=False) as before_crash:
                await enqueue(client, QUEUE, to_queue_message(job))
                assert (await claim_until(before_crash, decided)).runnable
            assert await client.exists(heartbeat_key("slot-0")) == 1   # it "died" within its TTL
            async with consumer(redis_url, "slot-0") as restarted:
                assert await queue_depth(client, QUEUE) == 1    # handed back by start(), no TTL wait
                claim = await claim_until(restarted, decided)
                assert claim.job == job
                await restarted.complete(claim, RESULT)

    run(scenario())


def test_attempts_exhausted_by_crashes_dead_letters_with_reason(redis_url: str) -> None:
    job = make_job()
    config = replace(CONFIG, max_attempts=2)

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "reaper", config) as reaper:
            await enqueue(client, QUEUE, to_queue_message(job))
            for attempt in (1, 2):
                async with consumer(redis_url, f"crasher-{attempt}", config, start=False) as crasher:
                    claim = await claim_until(crasher, decided)
                    assert claim.runnable and claim.attempt == attempt
                await eventually(lambda: _has_depth(client, 1), f"crash {attempt} to be reaped")
            final = await claim_until(reaper, decided)
            assert not final.runnable
            assert final.rejection is not None and final.rejection.code == "attempts_exhausted"
            letters = await dead_letters(client)
            assert [letter.raw for letter in letters] == [to_queue_message(job)]
            info = letters[0].info
            assert info is not None and info["job_id"] == job.job_id and info["attempts"] == 3
            assert info["error"]["code"] == "attempts_exhausted"
            state = await get_job_state(client, job.job_id)
            assert state is not None and state["status"] == "failed"
            assert state["error"]["code"] == "attempts_exhausted" and "finished_at" in state
            assert not await claims_counted(client, job)
            assert await all_settled(client)

    run(scenario())


async def _has_depth(client: aioredis.Redis, depth: int) -> bool:
    return await queue_depth(client, QUEUE) == depth


# ----- failures sorted by fail() ----------------------------------------------------------------------

def test_rejected_messages_are_dead_lettered_at_once(redis_url: str) -> None:
    invalid = make_job().model_dump(mode="json")
    invalid["image_urls"] = []
    garbage = b"\xff not json"

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            await enqueue(client, QUEUE, garbage)
            await enqueue(client, QUEUE, json.dumps(invalid).encode())
            first = await claim_until(queue, decided)
            assert first.rejection is not None and first.rejection.code == "malformed_message"
            assert first.job_id is None and first.raw == garbage
            second = await claim_until(queue, decided)
            assert second.rejection is not None and second.rejection.code == "invalid_job"
            assert second.job_id == invalid["job_id"]
            assert await dead_letter_count(client) == 2
            reasons = {letter.raw: (letter.info or {})["error"]["code"] for letter in await dead_letters(client)}
            assert reasons == {garbage: "malformed_message", json.dumps(invalid).encode(): "invalid_job"}
            state = await get_job_state(client, invalid["job_id"])
            assert state is not None and state["status"] == "failed"
            assert state["error"]["code"] == "invalid_job" and "image_urls" in state["error"]["message"]
            assert await all_settled(client)

    run(scenario())


def test_job_rejected_during_work_is_dead_lettered_without_retry(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            await enqueue(client, QUEUE, to_queue_message(job))
            claim = await claim_until(queue, decided)
            outcome = await queue.fail(claim, JobRejected("no_foreground", "nothing left after matting"))
            assert outcome == "dead_lettered"
            assert (await get_job_state(client, job.job_id) or {})["error"]["code"] == "no_foreground"
            assert await dead_letter_count(client) == 1 and await all_settled(client)
            with pytest.raises(ClaimLost):
                await queue.complete(claim, RESULT)   # settled already: a second ack is refused

    run(scenario())


def test_transient_error_is_retried_after_a_delay_then_succeeds(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            await enqueue(client, QUEUE, to_queue_message(job))
            claim = await claim_until(queue, decided)
            failed_at = time.monotonic()
            outcome = await queue.fail(claim, TransientError("image_unreachable", "connection refused"))
            assert outcome == "retry_scheduled"
            state = await get_job_state(client, job.job_id)
            assert state is not None and state["status"] == "queued" and state["stage"] == "retry_wait"
            assert state["error"]["code"] == "image_unreachable" and "retry_at" in state
            assert await delayed_count(client) == 1 and await queue_depth(client, QUEUE) == 0
            retry = await claim_until(queue, decided)
            assert time.monotonic() - failed_at >= CONFIG.retry_base_s * 0.9   # not before it was due
            assert retry.job == job and retry.attempt == 2
            await queue.complete(retry, RESULT)
            state = await get_job_state(client, job.job_id)
            assert state is not None and state["status"] == "completed" and state["attempts"] == 2
            assert "error" not in state and "retry_at" not in state
            # ... but the history keeps why the first attempt failed.
            (event,) = state["history"]
            assert (event["event"], event["attempt"], event["error"]["code"]) == ("retry", 1, "image_unreachable")
            assert await all_settled(client)

    run(scenario())


def test_transient_error_on_the_last_attempt_is_dead_lettered_with_its_code(redis_url: str) -> None:
    job = make_job()
    config = replace(CONFIG, max_attempts=2, retry_base_s=0.1)

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a", config) as queue:
            await enqueue(client, QUEUE, to_queue_message(job))
            outcomes = []
            for _ in range(2):
                claim = await claim_until(queue, decided)
                outcomes.append(await queue.fail(claim, TransientError("storage_unavailable", "HTTP 503")))
            assert outcomes == ["retry_scheduled", "dead_lettered"]
            letters = await dead_letters(client)
            assert len(letters) == 1 and (letters[0].info or {})["error"]["code"] == "storage_unavailable"
            assert (await get_job_state(client, job.job_id) or {})["status"] == "failed"
            assert await all_settled(client)

    run(scenario())


def test_unexpected_exception_becomes_internal_error_without_its_message(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            await enqueue(client, QUEUE, to_queue_message(job))
            claim = await claim_until(queue, decided)
            assert await queue.fail(claim, KeyError("https://x.example/?token=SECRET")) == "dead_lettered"
            state = await get_job_state(client, job.job_id)
            assert state is not None and state["error"]["code"] == "internal_error"
            assert "SECRET" not in json.dumps(state)

    run(scenario())


# ----- idempotency and locks --------------------------------------------------------------------------

def test_same_job_pushed_twice_is_processed_once(redis_url: str) -> None:
    job = make_job()
    app = Celery("shop3d-test-producer", broker=redis_url, set_as_current=False)
    try:   # a real Celery copy too: different bytes, same job_id
        app.send_task("generate_3d_model", kwargs=job.model_dump(mode="json", exclude_none=True))
    finally:
        app.close()
    runs: list[str] = []

    async def handle(work: Job) -> JobResult:
        runs.append(work.job_id)
        return RESULT

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            await enqueue(client, QUEUE, to_queue_message(job))
            await enqueue(client, QUEUE, to_queue_message(job))
            assert await queue_depth(client, QUEUE) == 3
            await drain(queue, handle, lambda: all_settled(client))
            assert runs == [job.job_id]
            assert await dead_letter_count(client) == 0
            assert (await get_job_state(client, job.job_id) or {})["status"] == "completed"

    run(scenario())


def test_lock_held_by_another_consumer_blocks_a_second_concurrent_run(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as first, \
                consumer(redis_url, "worker-b") as second:
            await enqueue(client, QUEUE, readme_envelope(job))
            await enqueue(client, QUEUE, readme_envelope(job))
            running = await claim_until(first, decided)
            copy = await claim_until(second, lambda claim: True)
            assert running.runnable and copy.job == job
            assert not copy.lock_obtained and not copy.runnable
            assert await client.get(lock_key(job.job_id)) == b"worker-a"
            assert await delayed_count(client) == 1 and await queue_depth(client, QUEUE) == 0
            await asyncio.sleep(CONFIG.heartbeat_ttl_s * 1.5)   # the lock outlives its TTL while renewed
            assert await client.get(lock_key(job.job_id)) == b"worker-a"
            await first.complete(running, RESULT)
            duplicate = await claim_until(second, lambda claim: claim.duplicate)
            assert duplicate.job == job and not duplicate.runnable
            assert await all_settled(client)

    run(scenario())


# ----- shutdown ---------------------------------------------------------------------------------------

def test_graceful_stop_hands_an_unstarted_job_back(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client:
            async with consumer(redis_url, "worker-a") as leaving:
                await enqueue(client, QUEUE, to_queue_message(job))
                claim = await claim_until(leaving, decided)
                await leaving.stop()
                assert await leaving.claim() is None
                with pytest.raises(ClaimLost):
                    await leaving.complete(claim, RESULT)
            assert await client.lrange(QUEUE, 0, -1) == [claim.raw]
            assert await processing_count(client) == 0
            assert await client.exists(lock_key(job.job_id)) == 0
            assert not await claims_counted(client, job)   # a hand-back is not an attempt
            state = await get_job_state(client, job.job_id)
            assert state is not None and state["status"] == "queued" and state["stage"] == "requeued"
            async with consumer(redis_url, "worker-b") as staying:
                again = await claim_until(staying, decided)
                assert again.job == job and again.attempt == 1

    run(scenario())


def test_stop_interrupts_a_blocked_claim_without_keeping_what_it_took(redis_url: str) -> None:
    config = replace(CONFIG, block_s=1.0)

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a", config) as queue:
            waiting = asyncio.create_task(queue.claim())
            await asyncio.sleep(0.2)   # blocked in BLMOVE
            stopping = asyncio.create_task(queue.stop())
            await asyncio.sleep(0.05)
            await enqueue(client, QUEUE, to_queue_message(make_job()))   # the blocked BLMOVE takes it
            await stopping
            assert await waiting is None
            assert await queue_depth(client, QUEUE) == 1 and await processing_count(client) == 0

    run(scenario())


def test_explicit_release_keeps_the_job_first_in_line(redis_url: str) -> None:
    first_job, second_job = make_job(), make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            await enqueue(client, QUEUE, to_queue_message(first_job))
            await enqueue(client, QUEUE, to_queue_message(second_job))
            claim = await claim_until(queue, decided)
            await queue.release(claim)
            again = await claim_until(queue, decided)
            assert again.job == first_job and again.attempt == 1
            await queue.complete(again, RESULT)

    run(scenario())


# ----- Redis going away ---------------------------------------------------------------------------------

@pytest.mark.parametrize("outage_s", [0.0, 2.5], ids=["restart", "outage-longer-than-heartbeat-ttl"])
def test_redis_restart_mid_run_loses_nothing(tmp_path: Path, outage_s: float) -> None:
    """Our own server (not the session's), made to save on shutdown like a production Redis with RDB.

    An outage longer than the heartbeat TTL fences the in-flight claim: it is handed back and redone.
    """
    server = RedisServer(tmp_path)
    server.start()
    config = replace(CONFIG, heartbeat_ttl_s=2.0)
    jobs = [make_job() for _ in range(6)]
    done: list[str] = []
    done_before_restart: list[int] = []
    try:
        sync = redis.Redis.from_url(server.url)
        sync.config_set("save", "3600 1")
        sync.close()

        async def handle(job: Job) -> JobResult:
            await asyncio.sleep(0.05)
            done.append(job.job_id)
            return RESULT

        async def restart_after_two() -> None:
            deadline = time.monotonic() + 15
            while len(done) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the handler's list
                await asyncio.sleep(0.02)
            done_before_restart.append(len(done))
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(outage_s)
            await asyncio.to_thread(server.start)

        async def all_completed(client: aioredis.Redis) -> bool:
            try:
                states = [await get_job_state(client, job.job_id) for job in jobs]
                # .get: between the claim script and the claimed-state write a hash holds only `claims`
                return all(state and state.get("status") == "completed" for state in states) \
                    and await all_settled(client)
            except redis.ConnectionError:
                return False

        async def scenario() -> None:
            async with plain_client(server.url) as client, consumer(server.url, "worker-a", config) as queue:
                for job in jobs:
                    await enqueue(client, QUEUE, to_queue_message(job))
                restarter = asyncio.create_task(restart_after_two())
                await drain(queue, handle, lambda: all_completed(client), timeout_s=40)
                await restarter
                queue.check_health()   # the background loops survived the outage
                assert await dead_letter_count(client) == 0

        run(scenario(), timeout_s=60)
        assert done_before_restart and done_before_restart[0] < len(jobs)   # it really was mid-run
        assert set(done) == {job.job_id for job in jobs}
    finally:
        server.stop()


def test_reaper_survives_an_oserror_and_keeps_reaping(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_DOWN counts a bare OSError as an outage; the reaper loop must outlive one, not die of it."""
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            upkeep = queue._upkeep
            reap = upkeep.reap_dead_consumers
            raised: list[OSError] = []

            async def reap_with_one_reset() -> int:
                if not raised:
                    raised.append(ConnectionResetError(104, "Connection reset by peer"))
                    raise raised[0]
                return await reap()

            monkeypatch.setattr(upkeep, "reap_dead_consumers", reap_with_one_reset)
            await eventually(lambda: _true(bool(raised)), "the reaper to meet the OSError")
            await asyncio.sleep(CONFIG.reap_interval_s * 3)
            queue.check_health()   # the loop is still alive
            await client.zadd(DELAYED_KEY, {to_queue_message(job): time.time()})
            await eventually(lambda: _has_depth(client, 1), "the next passes to promote a due retry")
            queue.check_health()

    run(scenario())


async def _true(value: bool) -> bool:
    return value


# ----- job state outside the queue ------------------------------------------------------------------------

def test_job_state_helpers(redis_url: str) -> None:
    job = make_job()

    async def scenario() -> None:
        async with plain_client(redis_url) as client, consumer(redis_url, "worker-a") as queue:
            assert await get_job_state(client, job.job_id) is None
            raw = await submit_job(client, QUEUE, job)
            assert await client.lrange(QUEUE, 0, -1) == [raw]
            state = await get_job_state(client, job.job_id)
            assert state is not None and state["status"] == "queued" and state["shop"] == job.shop
            with pytest.raises(ValueError):
                await record_progress(client, job.job_id, stage="mesh", progress=101)
            await queue.complete(await claim_until(queue, decided), RESULT)
            await record_queued(client, job)   # resubmitting must not undo a completion
            assert (await get_job_state(client, job.job_id) or {})["status"] == "completed"
            # Progress for a job with no hash (expired, or never recorded) must not create an immortal one.
            await record_progress(client, "job-without-state", stage="mesh", progress=50)
            assert 0 < await client.ttl(job_key("job-without-state")) <= CONFIG.state_ttl_s

    run(scenario())


def test_a_claim_whose_reply_was_lost_is_handed_back_while_the_loop_waits_in_blmove(redis_url: str) -> None:
    """A BLMOVE whose reply an outage lost leaves the raw in our list, known to no claim. An idle consumer is
    always inside the next BLMOVE, so the orphan sweep must not wait for a moment with no claim in flight:
    the raw goes back after the client's socket timeout and is claimed again."""
    job = make_job()

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=1.0)   # orphan grace: 2 s
        queue = ReliableQueue(client, QUEUE, "idle-0", CONFIG)
        await queue.start()
        claimed: asyncio.Queue[Claim] = asyncio.Queue()

        done = asyncio.Event()

        async def claim_until_done() -> None:   # an Event, not cancel(): redis-py can swallow a cancellation
            while not done.is_set():
                claim = await queue.claim()
                if claim is not None:
                    claimed.put_nowait(claim)

        loop = asyncio.create_task(claim_until_done())
        try:
            await asyncio.sleep(0.5)   # the loop is waiting in BLMOVE on the empty queue
            await client.lpush(processing_key("idle-0"), to_queue_message(job))   # the lost reply's raw
            claim = await claimed.get()
            assert claim.job == job and claim.runnable
            await queue.complete(claim, RESULT)
        finally:
            done.set()
            await loop
            await queue.stop()
            await client.aclose()

    run(scenario(), timeout_s=20)
