"""pipeline.delivery.reporting against a real redis-server and a real local HTTP server as the backend:
the order of one job's events, the time bound of a terminal delivery, and what is kept when it fails."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from pipeline.delivery.reporting import JobIdentity, JobReporter
from pipeline.delivery.webhooks import WebhookSender
from pipeline.errors import JobRejected
from pipeline.jobs.envelopes import validate_job
from pipeline.jobs.keys import UNDELIVERED_WEBHOOKS_KEY, job_key
from pipeline.jobs.state import STATE_TTL_S, JobResult
from pipeline.testing.http_server import LocalHTTPServer, Request, Response

JOB = validate_job({"job_id": "job-order-1", "shop": "demo.myshopify.com", "product_id": "gid://shopify/Product/1",
                    "product_handle": "red-mug", "image_urls": ["https://cdn.example/a.jpg"]})
RESULT = JobResult(assets={"glb": "https://cdn.example/red-mug/model.glb"}, stats={"faces": 10})
Answer = Callable[[str, int], tuple[float, Response]]   # (status, how many of it came before) -> (stall s, reply)


class Receiver:
    """The backend's webhook endpoint. `handled` lists events as their handler finishes, i.e. in the
    order the backend acts on them; `arrived` in the order their requests came in."""

    def __init__(self, server: LocalHTTPServer, answer: Answer) -> None:
        self.server, self.answer = server, answer
        self.handled: list[str] = []
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        server.route("/hooks", self._handle)
        self.url = server.url("/hooks")

    @property
    def arrived(self) -> list[str]:
        return [json.loads(request.body)["status"] for request in self.server.requests]

    def _handle(self, request: Request) -> Response:
        status = json.loads(request.body)["status"]
        with self._lock:
            index = self._seen.get(status, 0)
            self._seen[status] = index + 1
        stall_s, response = self.answer(status, index)
        time.sleep(stall_s)
        with self._lock:
            self.handled.append(status)
        return response


def first_processing(stall_s: float, response: Response) -> Answer:
    """The first `processing` gets `response` after `stall_s`; everything else 204 at once."""
    return lambda status, index: (stall_s, response) if (status, index) == ("processing", 0) else (0.0, Response(204))


@asynccontextmanager
async def reporter_for(redis_url: str, sender: WebhookSender, **options: Any) -> AsyncIterator[JobReporter]:
    client = aioredis.Redis.from_url(redis_url)
    reporter = JobReporter(client, sender, **options)
    try:
        yield reporter
    finally:
        await reporter.aclose()
        await client.aclose()


def fast_sender(url: str, **options: Any) -> WebhookSender:
    options = {"max_attempts": 4, "base_delay_s": 0.05, "max_delay_s": 0.1, "timeout": 5.0, **options}
    return WebhookSender(url, None, **options)


def run(scenario: Coroutine[Any, Any, None], timeout_s: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout_s))


async def finish_job(reporter: JobReporter, work_s: float) -> None:
    """What the worker does for one attempt: `processing`, the work, the result, `completed`."""
    reporter.processing(JOB, 1)
    await asyncio.sleep(work_s)
    await reporter.record_result(JOB.job_id, RESULT)
    await reporter.completed(JOB, RESULT, 1)


async def undelivered(client: aioredis.Redis) -> list[dict[str, Any]]:
    return [json.loads(entry) for entry in await client.lrange(UNDELIVERED_WEBHOOKS_KEY, 0, -1)]


# ----- one job's events in order ---------------------------------------------------------------------------

def test_a_processing_retry_never_follows_completed(redis_url: str, http_server: LocalHTTPServer) -> None:
    # The first `processing` is told to come back in a second; the job finishes before that second is up.
    receiver = Receiver(http_server, first_processing(0.0, Response(503, headers={"Retry-After": "1"})))

    async def scenario() -> None:
        async with reporter_for(redis_url, fast_sender(receiver.url)) as reporter:
            await finish_job(reporter, work_s=0.2)
            await asyncio.sleep(1.5)   # past the Retry-After: a stale retry would arrive now
            assert await undelivered(reporter.redis) == []

    run(scenario())
    assert receiver.arrived == ["processing", "completed"]


def test_a_slow_processing_is_answered_before_completed_leaves(redis_url: str,
                                                               http_server: LocalHTTPServer) -> None:
    # The backend takes a second over the first `processing` (then answers 500); the work takes 0.1 s.
    receiver = Receiver(http_server, first_processing(1.0, Response(500)))

    async def scenario() -> None:
        async with reporter_for(redis_url, fast_sender(receiver.url)) as reporter:
            await finish_job(reporter, work_s=0.1)
            await asyncio.sleep(0.5)

    run(scenario())
    assert receiver.handled == ["processing", "completed"]   # completed did not overtake it
    assert receiver.arrived == ["processing", "completed"]   # and the 500 was not retried after it


def test_a_processing_that_fails_for_good_is_not_kept_for_replay(redis_url: str,
                                                                 http_server: LocalHTTPServer) -> None:
    receiver = Receiver(http_server, first_processing(0.0, Response(400)))

    async def scenario() -> None:
        async with reporter_for(redis_url, fast_sender(receiver.url)) as reporter:
            await finish_job(reporter, work_s=0.1)
            assert await undelivered(reporter.redis) == []   # replayed later, it would be stale
            assert await reporter.redis.hget(job_key(JOB.job_id), "webhook_completed") == b"delivered"

    run(scenario())
    assert receiver.arrived == ["processing", "completed"]


# ----- terminal deliveries: bounded in time, kept when they fail --------------------------------------------

def test_completed_delivery_ends_at_once_when_retry_after_is_past_the_deadline(
        redis_url: str, http_server: LocalHTTPServer) -> None:
    http_server.route("/hooks", lambda _request: Response(503, headers={"Retry-After": "3600"}))
    sender = WebhookSender(http_server.url("/hooks"), None)   # the production defaults (deadline 60 s)

    async def scenario() -> None:
        async with reporter_for(redis_url, sender) as reporter:
            started = time.monotonic()
            await reporter.completed(JOB, RESULT, 1)
            assert time.monotonic() - started < 5.0   # not an hour, nor the old 25 minutes
            (entry,) = await undelivered(reporter.redis)
            assert entry["payload"]["status"] == "completed" and entry["payload"]["job_id"] == JOB.job_id
            assert entry["payload"]["assets"]["glb"] == RESULT.assets["glb"] and entry["error"] == "HTTP 503"
            state = await reporter.redis.hgetall(job_key(JOB.job_id))
            assert state[b"webhook_completed"] == b"failed" and state[b"webhook_completed_error"] == b"HTTP 503"

    run(scenario())


def test_completed_delivery_gives_up_at_its_deadline(redis_url: str, http_server: LocalHTTPServer) -> None:
    http_server.route("/hooks", lambda _request: Response(503))
    sender = fast_sender(http_server.url("/hooks"), max_attempts=1000, deadline_s=1.5)

    async def scenario() -> None:
        async with reporter_for(redis_url, sender) as reporter:
            started = time.monotonic()
            await reporter.completed(JOB, RESULT, 1)
            assert time.monotonic() - started < 2.5
            (entry,) = await undelivered(reporter.redis)
            assert entry["payload"]["status"] == "completed"

    run(scenario())
    assert 3 <= len(http_server.requests) < 1000   # it did retry, within the deadline


def test_undelivered_list_keeps_the_newest_entries(redis_url: str, http_server: LocalHTTPServer) -> None:
    http_server.route("/hooks", lambda _request: Response(400))

    async def scenario() -> None:
        async with reporter_for(redis_url, fast_sender(http_server.url("/hooks")), undelivered_kept=2) as reporter:
            for index in range(4):
                await reporter.failed(JobIdentity(f"job-{index}"), JobRejected("invalid_job", "bad"), 1)
            assert [entry["payload"]["job_id"] for entry in await undelivered(reporter.redis)] == ["job-3", "job-2"]

    run(scenario())


def test_failed_webhook_of_a_nameless_message_leaves_an_expiring_record(redis_url: str) -> None:
    async def scenario() -> None:
        async with reporter_for(redis_url, None) as reporter:
            who = JobIdentity("unknown-0123456789abcdef")   # the worker's id for a message with no job id
            await reporter.failed(who, JobRejected("malformed_message", "not JSON"), 1)
            assert await reporter.redis.hget(job_key(who.job_id), "webhook_failed") == b"disabled"
            assert 0 < await reporter.redis.ttl(job_key(who.job_id)) <= STATE_TTL_S

    run(scenario())


def test_reporter_refuses_a_zero_cap() -> None:
    with pytest.raises(ValueError):
        JobReporter(aioredis.Redis(), None, undelivered_kept=0)
