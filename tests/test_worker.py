"""The consumer loop without Ray: a real redis-server, real producers (the earlier README's message,
real Celery `send_task`, a bare job), the tiny TripoSR and matting models in-process, a real local HTTP
server as both the image host and the backend receiving webhooks.

Includes the bad-input suite: 30+ bad messages and bad photos pushed onto the queue of ONE running
worker; each is dead-lettered with its documented code and a `failed` webhook, and the same worker then
still completes a good job.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from celery import Celery

from pipeline.delivery.reporting import JobReporter
from pipeline.delivery.webhooks import WebhookSender
from pipeline.jobs.envelopes import Job
from pipeline.jobs.keys import job_key
from pipeline.jobs.state import JobResult, get_job_state
from pipeline.queue.consumer import QueueConfig, ReliableQueue, connect, dead_letters
from pipeline.run.runner import Services, process_job
from pipeline.run.worker import JobWorker
from pipeline.testing.http_server import LocalHTTPServer, Response
from pipeline.testing.matting_model import make_product_photo
from tests.support.services import make_services
from tests.test_images import raw_png

QUEUE = "celery"
FAST = QueueConfig(block_s=0.2, heartbeat_ttl_s=3.0, reap_interval_s=0.5, retry_base_s=0.1, retry_max_s=0.2,
                   lock_retry_s=0.5, max_attempts=2)


def job_fields(job_id: str, urls: list[str], **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "shop": "demo.myshopify.com", "product_id": "gid://shopify/Product/1",
            "product_handle": "red-mug", "image_urls": urls, "metadata": {"productTitle": "Mug"},
            "quality": "fast", **extra}


def readme_message(fields: dict[str, Any]) -> bytes:
    return json.dumps({"task": "generate_3d_model", "id": "celery-" + str(fields.get("job_id")),
                       "args": [], "kwargs": fields}).encode()


class Backend:
    """Records the webhooks the real local HTTP server receives on /hooks."""

    def __init__(self, server: LocalHTTPServer) -> None:
        self.server = server
        server.route("/hooks", lambda _req: Response(200, b"ok"))
        self.url = server.url("/hooks")

    def events(self, job_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        bodies = [json.loads(r.body) for r in self.server.requests if r.path == "/hooks"]
        return [b for b in bodies if (job_id is None or b["job_id"] == job_id)
                and (status is None or b["status"] == status)]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 90.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def status_of(client: aioredis.Redis, job_id: str) -> str | None:
    state = await get_job_state(client, job_id)
    return None if state is None else state.get("status")


class Harness:
    """One worker over the session redis-server, executing jobs with process_job in-process."""

    def __init__(self, redis_url: str, services: Services, backend: Backend) -> None:
        self.redis = connect(redis_url, FAST)
        self.services = services
        self.executed: list[str] = []
        queue = ReliableQueue(self.redis, QUEUE, "worker-test-1", FAST)
        sender = WebhookSender(backend.url, None, max_attempts=2, base_delay_s=0.01, timeout=5.0)
        self.worker = JobWorker(queue, self.execute, JobReporter(self.redis, sender), max_inflight=2)

    async def execute(self, job: Job) -> JobResult:
        self.executed.append(job.job_id)
        return await process_job(job, self.services)

    async def __aenter__(self) -> Harness:
        await self.worker.queue.start()
        self.worker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.worker.stop(drain_timeout_s=10)
        await self.services.aclose()
        await self.redis.aclose()


def run_with_worker(redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, server: LocalHTTPServer,
                    scenario: Callable[[Harness, Backend], Awaitable[None]], timeout_s: float = 300) -> None:
    async def main() -> None:
        backend = Backend(server)
        services = make_services(tiny_fixture_dir, tmp_path, server.port)
        async with Harness(redis_url, services, backend) as harness:
            await scenario(harness, backend)
            harness.worker.check_health()   # the loop survived everything the scenario threw at it
    asyncio.run(asyncio.wait_for(main(), timeout_s))


def test_readme_celery_and_bare_messages_complete_with_one_webhook_each(
        redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer) -> None:
    photo = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    Celery(broker=redis_url).send_task("generate_3d_model", kwargs=job_fields("job-celery", [photo]))
    bare = json.dumps(job_fields("job-bare", [photo])).encode()

    async def scenario(harness: Harness, backend: Backend) -> None:
        await harness.redis.lpush(QUEUE, readme_message(job_fields("job-readme", [photo])), bare)
        for job_id in ("job-celery", "job-readme", "job-bare"):
            await eventually(lambda job_id=job_id: _is(harness.redis, job_id, "completed"), f"{job_id} completed")
        for job_id in ("job-celery", "job-readme", "job-bare"):
            (done,) = backend.events(job_id, "completed")
            glb_url = done["assets"]["glb"]
            assert glb_url.startswith("file://")
            assert (await asyncio.to_thread(Path(glb_url[7:]).read_bytes))[:4] == b"glTF"
            assert done["stats"]["faces"] > 0 and done["error"] is None
            assert (await get_job_state(harness.redis, job_id))["assets"]["glb"] == glb_url
        assert sorted(harness.executed) == ["job-bare", "job-celery", "job-readme"]
        assert await harness.redis.llen(QUEUE) == 0

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, scenario)


async def _is(client: aioredis.Redis, job_id: str, status: str) -> bool:
    return await status_of(client, job_id) == status


def test_same_job_twice_runs_once_and_a_recorded_result_is_not_recomputed(
        redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer) -> None:
    photo = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")

    async def scenario(harness: Harness, backend: Backend) -> None:
        twice = readme_message(job_fields("job-twice", [photo]))
        await harness.redis.lpush(QUEUE, twice, twice)
        await eventually(lambda: _is(harness.redis, "job-twice", "completed"), "job-twice completed")
        await eventually(lambda: _queue_empty(harness.redis), "duplicate consumed")
        # A crash after the result was recorded but before the ack: the re-delivery only reports.
        await harness.redis.hset(job_key("job-crashed"), mapping={
            "result": json.dumps({"assets": {"glb": "file:///recorded.glb"}, "stats": {"faces": 7}})})
        await harness.redis.lpush(QUEUE, readme_message(job_fields("job-crashed", [photo])))
        await eventually(lambda: _is(harness.redis, "job-crashed", "completed"), "job-crashed completed")
        assert harness.executed == ["job-twice"]
        assert len(backend.events("job-twice", "completed")) == 1
        (done,) = backend.events("job-crashed", "completed")
        assert done["assets"]["glb"] == "file:///recorded.glb"

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, scenario)


async def _queue_empty(client: aioredis.Redis) -> bool:
    return await client.llen(QUEUE) == 0 and not [k async for k in client.scan_iter("shop3d:processing:*")
                                                 if await client.llen(k)]


def _bad_messages() -> list[tuple[str, bytes, str]]:
    """(case, raw message, expected code) for message-level rejections."""
    good = job_fields("job-msg", ["https://cdn.example.com/a.jpg"])
    celery_pickle = {"body": base64.b64encode(pickle.dumps(((), good, {}))).decode(), "content-type":
                     "application/x-python-serialize", "content-encoding": "binary",
                     "headers": {"task": "generate_3d_model", "id": "c-1"}, "properties": {"body_encoding": "base64"}}
    cases = [
        ("bad_json", b'{"task": "generate_3d_model", ', "malformed_message"),
        ("not_utf8", b"\xff\xfe\x00garbage", "malformed_message"),
        ("json_list", b"[1, 2, 3]", "malformed_message"),
        ("unknown_task", readme_message(good).replace(b"generate_3d_model", b"delete_everything"), "unknown_task"),
        ("pickle_body", json.dumps(celery_pickle).encode(), "unsupported_encoding"),
        ("bad_base64", json.dumps({**celery_pickle, "content-type": "application/json", "content-encoding": "utf-8",
                                   "body": "!!!not base64!!!"}).encode(), "malformed_message"),
        # A bare job has no envelope id to fall back on.
        ("missing_job_id_bare", json.dumps({k: v for k, v in good.items() if k != "job_id"}).encode(),
         "invalid_job"),
    ]
    for field in ("shop", "product_id", "product_handle", "image_urls"):
        missing = {k: v for k, v in good.items() if k != field}
        cases.append((f"missing_{field}", readme_message(missing), "invalid_job"))
    for field, value in (("image_urls", "https://x/a.jpg"), ("quality", "ultra"), ("metadata", [1]),
                         ("image_urls", []), ("product_handle", "../../etc"), ("job_id", 12.5)):
        cases.append((f"bad_{field}_{type(value).__name__}", readme_message({**good, field: value}), "invalid_job"))
    return cases


def _bad_photos(server: LocalHTTPServer) -> list[tuple[str, list[str], str]]:
    """(case, image_urls, expected code) for rejections while fetching, decoding or matting."""
    port = server.port
    serve = server.serve_bytes
    photo = make_product_photo()
    server.route("/redirect-private", lambda _r: Response(302, b"", {"Location": "http://169.254.169.254/latest"}))
    server.route("/redirect-loop", lambda _r: Response(302, b"", {"Location": server.url("/redirect-loop")}))
    return [
        ("file_scheme", ["file:///etc/passwd"], "url_not_allowed"),
        ("ftp_scheme", ["ftp://cdn.example.com/a.jpg"], "url_not_allowed"),
        ("data_url", ["data:image/png;base64,iVBORw0KGgo="], "url_not_allowed"),
        ("private_10", ["http://10.0.0.1/a.jpg"], "url_blocked"),
        ("metadata_ip", ["http://169.254.169.254/latest/meta-data"], "url_blocked"),
        ("loopback_other_port", ["http://127.0.0.1:1/a.jpg"], "url_blocked"),
        ("ipv6_loopback", ["http://[::1]/a.jpg"], "url_blocked"),
        ("ipv6_unique_local", ["http://[fd00::1]/a.jpg"], "url_blocked"),
        ("ipv4_mapped_ipv6", ["http://[::ffff:127.0.0.1]/a.jpg"], "url_blocked"),
        ("integer_ip", ["http://2130706433/a.jpg"], "url_blocked"),
        ("name_resolving_to_loopback", [f"http://localhost:{port}/mug.jpg"], "url_blocked"),
        ("redirect_to_private", [server.url("/redirect-private")], "url_blocked"),
        ("redirect_loop", [server.url("/redirect-loop")], "too_many_redirects"),
        ("not_found", [server.url("/missing.jpg")], "image_http_error"),
        ("empty_body", [serve("/empty.jpg", b"", "image/jpeg")], "empty_image"),
        ("html_as_image", [serve("/page.jpg", b"<html><body>hi</body></html>", "text/html")],
         "content_type_not_allowed"),
        ("html_labelled_jpeg", [serve("/lies.jpg", b"<html><body>hi</body></html>", "image/jpeg")],
         "image_undecodable"),
        ("truncated_jpeg", [serve("/trunc.jpg", photo[:len(photo) // 3], "image/jpeg")], "image_undecodable"),
        ("decompression_bomb", [serve("/bomb.png", raw_png(30000, 30000), "image/png")], "image_too_many_pixels"),
        ("one_pixel", [serve("/dot.png", raw_png(1, 1, rows=b"\x00\x80"), "image/png")], "image_too_small"),
        ("all_background", [serve("/blank.jpg", make_product_photo(with_object=False), "image/jpeg")],
         "no_foreground"),
        ("two_bad_urls", [server.url("/missing.jpg"), "file:///x.jpg"], "no_usable_image"),
    ]


def test_bad_input_suite_dead_letters_each_with_its_code_and_the_worker_keeps_running(
        redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer) -> None:
    messages = _bad_messages()
    photos = _bad_photos(http_server)
    assert len(messages) + len(photos) >= 30
    good_photo = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")

    async def scenario(harness: Harness, backend: Backend) -> None:
        for _, raw, _ in messages:
            await harness.redis.lpush(QUEUE, raw)
        for index, (case, urls, _) in enumerate(photos):
            await harness.redis.lpush(QUEUE, readme_message(job_fields(f"bad-{index}-{case}", urls)))
        await harness.redis.lpush(QUEUE, readme_message(job_fields("job-after-bad", [good_photo])))
        await eventually(lambda: _is(harness.redis, "job-after-bad", "completed"), "good job after the bad ones")
        await eventually(lambda: _dead_count(harness.redis, len(messages) + len(photos)), "all dead-lettered")
        # A job's state turns `failed` when it is dead-lettered; its webhook follows.
        expected_webhooks = {f"bad-{index}-{case}" for index, (case, _, _) in enumerate(photos)} | {"job-msg"}
        await eventually(lambda: _received(backend, expected_webhooks), "every failed webhook")

        letters = await dead_letters(harness.redis, limit=100)
        codes_by_raw = {letter.raw: letter.info["error"]["code"] for letter in letters if letter.info}
        for case, raw, code in messages:
            assert codes_by_raw.get(raw) == code, case
        for index, (case, _, code) in enumerate(photos):
            job_id = f"bad-{index}-{case}"
            state = await get_job_state(harness.redis, job_id)
            assert state is not None and state["status"] == "failed" and state["error"]["code"] == code, case
            (failed,) = backend.events(job_id, "failed")
            assert failed["error"]["code"] == code and failed["shop"] == "demo.myshopify.com", case
        # Rejected messages that still name their job get a failed webhook too.
        assert backend.events("job-msg", "failed")
        assert harness.executed[-1] == "job-after-bad"

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, scenario, timeout_s=400)


async def _received(backend: Backend, job_ids: set[str]) -> bool:
    return job_ids <= {event["job_id"] for event in backend.events(status="failed")}


async def _dead_count(client: aioredis.Redis, count: int) -> bool:
    return await client.llen("shop3d:dead") >= count


def test_unreachable_image_is_retried_then_dead_lettered_with_a_failed_webhook(
        redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer) -> None:
    async def scenario(harness: Harness, backend: Backend) -> None:
        http_server.route("/flaky.jpg", lambda _r: Response(503, b"down"))
        await harness.redis.lpush(QUEUE, readme_message(job_fields("job-down", [http_server.url("/flaky.jpg")])))
        await eventually(lambda: _is(harness.redis, "job-down", "failed"), "job-down failed")
        await eventually(lambda: _received(backend, {"job-down"}), "the failed webhook")
        state = await get_job_state(harness.redis, "job-down")
        assert state["error"]["code"] == "image_unreachable" and state["attempts"] == FAST.max_attempts
        (failed,) = backend.events("job-down", "failed")
        assert failed["error"]["code"] == "image_unreachable"
        assert await harness.redis.llen("shop3d:dead") == 1

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, scenario)
