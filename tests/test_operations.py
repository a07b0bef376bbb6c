"""The operator side without Ray: the job index, the admin API (the console router mounted on a bare
FastAPI app, called in-process through httpx's ASGI transport), its auth, and the round trips an
operator makes: requeue a job dead-lettered while its image host was down (over HTTP and with the CLI),
and replay a `completed` webhook the backend missed. Everything real: redis-server, the worker with the
tiny models, a local HTTP server as image host and backend.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from pydantic import SecretStr

from pipeline.cli.main import main as shop3d
from pipeline.console.api import ConsoleContext, install, router
from pipeline.console.auth import SESSION_COOKIE, Access, check_access, session_value
from pipeline.delivery.webhooks import WebhookSender
from pipeline.jobs.index import INDEX_KEYS
from pipeline.jobs.keys import JOBS_RECENT_KEY, jobs_by_status_key
from pipeline.jobs.state import get_job_state, list_jobs, update_job
from pipeline.queue.admin import find_dead_letter
from pipeline.queue.consumer import connect
from pipeline.queue.overview import percentile, stage_percentiles
from pipeline.testing.http_server import LocalHTTPServer, Response
from pipeline.testing.matting_model import make_product_photo
from tests.test_worker import FAST, QUEUE, Backend, Harness, eventually, job_fields, readme_message, run_with_worker

TOKEN = "op-token-4f1c9a"   # a test credential


@asynccontextmanager
async def console(redis_url: str, *, token: str | None = TOKEN,
                  sender: WebhookSender | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The console router on a bare app, with its own Redis client, as the ingress installs it."""
    redis = connect(redis_url, FAST)
    app = FastAPI()
    app.include_router(router)
    install(ConsoleContext(redis, QUEUE, SecretStr(token) if token else None, sender))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as client:
            yield client
    finally:
        await redis.aclose()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----- pure parts ---------------------------------------------------------------------------------------

def test_percentiles_are_nearest_rank_per_stage() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0
    stages = stage_percentiles([{"prepare": 0.3, "export": 2.0}, {"prepare": 0.1}, {"prepare": 0.2}])
    assert stages == {"prepare": {"p50_s": 0.2, "p95_s": 0.3}, "export": {"p50_s": 2.0, "p95_s": 2.0}}


def test_access_is_granted_only_for_the_token_or_its_session() -> None:
    token = SecretStr(TOKEN)
    assert check_access(None, authorization=f"Bearer {TOKEN}", session=None) is Access.DISABLED
    assert check_access(SecretStr(""), authorization="Bearer ", session=None) is Access.DISABLED
    assert check_access(token, authorization=None, session=None) is Access.MISSING
    assert check_access(token, authorization=f"Bearer {TOKEN}x", session=None) is Access.WRONG
    assert check_access(token, authorization=f"Basic {TOKEN}", session=None) is Access.MISSING   # not a bearer
    assert check_access(token, authorization=f"bearer {TOKEN}", session=None) is Access.GRANTED
    assert check_access(token, authorization=None, session=session_value(token)) is Access.GRANTED
    assert check_access(token, authorization=None, session=TOKEN) is Access.WRONG   # the cookie is not the token
    assert TOKEN not in session_value(token)
    assert check_access(token, authorization="Bearer é", session=None) is Access.WRONG   # non-ASCII: no TypeError


# ----- the index ------------------------------------------------------------------------------------------

def test_the_index_follows_each_status_change_and_forgets_expired_jobs(redis_url: str) -> None:
    async def scenario() -> None:
        redis = connect(redis_url, FAST)
        try:
            for job_id, status in (("a", "queued"), ("b", "processing"), ("c", "queued")):
                await update_job(redis, job_id, {"status": status})
            await update_job(redis, "a", {"status": "completed"})
            assert [job["job_id"] for job in await list_jobs(redis)] == ["a", "c", "b"]
            assert [job["job_id"] for job in await list_jobs(redis, status="queued")] == ["c"]
            assert [job["job_id"] for job in await list_jobs(redis, status="completed")] == ["a"]
            assert [job["job_id"] for job in await list_jobs(redis, limit=1)] == ["a"]
            for key in INDEX_KEYS:
                assert await redis.ttl(key) in (-2, *range(1, 31 * 24 * 3600))   # absent or expiring
            await redis.delete("shop3d:job:c")   # a hash gone before its index entry: skipped, not an error
            assert [job["job_id"] for job in await list_jobs(redis, status="queued")] == []
            # A write trims entries older than the state TTL it is given.
            await update_job(redis, "old", {"status": "failed"}, ttl_s=1)
            await asyncio.sleep(1.2)
            await update_job(redis, "new", {"status": "failed"}, ttl_s=1)
            assert await redis.zrange(jobs_by_status_key("failed"), 0, -1) == [b"new"]
            assert b"old" not in await redis.zrange(JOBS_RECENT_KEY, 0, -1)
            with pytest.raises(ValueError, match="status must be one of"):
                await list_jobs(redis, status="lost")
        finally:
            await redis.aclose()

    asyncio.run(scenario())


# ----- auth over HTTP ------------------------------------------------------------------------------------

ADMIN_ROUTES = [("GET", "/jobs"), ("GET", "/queue"), ("GET", "/dead"), ("POST", "/dead/x/requeue"),
                ("GET", "/webhooks"), ("POST", "/webhooks/replay"), ("GET", "/ui"), ("GET", "/ui/static/console.js")]


def test_without_a_token_configured_every_operator_route_is_disabled(redis_url: str) -> None:
    async def scenario() -> None:
        async with console(redis_url, token=None) as client:
            for method, path in ADMIN_ROUTES:
                answer = await client.request(method, path, headers=bearer())
                assert answer.status_code == 404, (method, path, answer.text)
            assert (await client.post("/ui/session", json={"token": TOKEN})).status_code == 404
            refused = await client.post("/jobs", json=job_fields("j", ["https://cdn.example.com/a.jpg"]),
                                        headers=bearer())
            assert refused.status_code == 403 and "OPERATOR_TOKEN" in refused.text

    asyncio.run(scenario())


def test_a_missing_or_wrong_token_gets_401_and_the_right_one_or_its_session_works(redis_url: str) -> None:
    async def scenario() -> None:
        async with console(redis_url) as client:
            for method, path in ADMIN_ROUTES[:6]:
                for headers in ({}, bearer("wrong-token-value")):
                    answer = await client.request(method, path, headers=headers)
                    assert answer.status_code == 401, (method, path, answer.text)
                    assert answer.headers["www-authenticate"] == "Bearer"
                    assert "wrong-token-value" not in answer.text and TOKEN not in answer.text
            assert (await client.get("/jobs", headers=bearer())).json() == {"jobs": []}
            fields = job_fields("posted", ["https://cdn.example.com/a.jpg"])
            for headers in ({}, bearer("wrong-token-value")):
                assert (await client.post("/jobs", json=fields, headers=headers)).status_code == 401
            accepted = await client.post("/jobs", json=fields, headers=bearer())
            assert accepted.status_code == 202 and accepted.json() == {"job_id": "posted", "status": "queued"}
            (listed,) = (await client.get("/jobs", params={"status": "queued"}, headers=bearer())).json()["jobs"]
            assert listed["job_id"] == "posted" and listed["shop"] == fields["shop"]
            assert (await client.get("/queue", headers=bearer())).json()["depth"] == 1
            assert (await client.post("/dead/nobody/requeue", headers=bearer())).status_code == 404
            assert (await client.post("/webhooks/replay", headers=bearer())).status_code == 409   # no backend
            # The console: 401 with its login page, then a session cookie instead of the token.
            page = await client.get("/ui")
            assert page.status_code == 401 and "<html" in page.text.lower()
            assert (await client.get("/ui/static/console.js")).status_code == 200   # no data in it
            assert (await client.get("/ui/static/../api.py")).status_code == 404
            refused = await client.post("/ui/session", json={"token": "nope"})
            assert refused.status_code == 401 and SESSION_COOKIE not in refused.cookies
            opened = await client.post("/ui/session", json={"token": TOKEN})
            assert opened.status_code == 204
            cookie = opened.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
            assert (await client.get("/ui")).status_code == 200
            assert (await client.get("/jobs")).status_code == 200
            await client.post("/ui/logout")
            assert (await client.get("/jobs")).status_code == 401

    asyncio.run(scenario())


# ----- round trips ---------------------------------------------------------------------------------------

def test_a_job_dead_lettered_while_its_image_host_was_down_is_requeued_over_http_and_the_cli_and_completes(
        redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    photo = make_product_photo()
    http_server.route("/down.jpg", lambda _request: Response(503, b"maintenance"))
    url = http_server.url("/down.jpg")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("QUEUE_NAME", QUEUE)

    async def scenario(harness: Harness, backend: Backend) -> None:
        for job_id in ("via-http", "via-cli"):
            await harness.redis.lpush(QUEUE, readme_message(job_fields(job_id, [url])))
        for job_id in ("via-http", "via-cli"):
            await eventually(lambda job_id=job_id: _has_dead_letter(harness.redis, job_id), f"{job_id} dead")
        dead = await get_job_state(harness.redis, "via-http")
        assert dead is not None and dead["status"] == "failed" and dead["error"]["code"] == "image_unreachable"
        async with console(redis_url) as client:
            listed = (await client.get("/dead", headers=bearer())).json()["dead"]
            assert {letter["job_id"] for letter in listed} == {"via-http", "via-cli"}
            assert {letter["error"]["code"] for letter in listed} == {"image_unreachable"}
            failed = (await client.get("/jobs", params={"status": "failed"}, headers=bearer())).json()["jobs"]
            assert {job["job_id"] for job in failed} == {"via-http", "via-cli"}

            http_server.route("/down.jpg", lambda _request: Response(200, photo, {"Content-Type": "image/jpeg"}))
            answer = await client.post("/dead/via-http/requeue", headers=bearer())
            assert answer.status_code == 200 and answer.json() == {"job_id": "via-http", "status": "queued"}
            assert (await client.post("/dead/via-http/requeue", headers=bearer())).status_code == 404   # once
            assert await asyncio.to_thread(shop3d, ["dead", "requeue", "via-cli"]) == 0
            for job_id in ("via-http", "via-cli"):
                await eventually(lambda job_id=job_id: _status_is(harness.redis, job_id, "completed"),
                                 f"{job_id} completed")
            overview = (await client.get("/queue", headers=bearer())).json()
            assert overview["dead"] == 0 and overview["jobs_sampled"] == 2
            assert set(overview["stages"]) >= {"prepare", "forward", "extract", "export", "upload"}
        for job_id, by in (("via-http", "api"), ("via-cli", "cli")):
            state = await get_job_state(harness.redis, job_id)
            assert state is not None and state["attempts"] == 1 and "error" not in state
            *retries, requeued = state["history"]   # the transient failures first, one per retried attempt
            assert [(e["event"], e["attempt"]) for e in retries] == [("retry", n) for n in range(1, FAST.max_attempts)]
            assert all(e["error"]["code"] == "image_unreachable" for e in retries)
            assert requeued["event"] == "requeued" and requeued["by"] == by
            assert requeued["previous_attempts"] == FAST.max_attempts
            assert requeued["previous_error"]["code"] == "image_unreachable"
            assert len(backend.events(job_id, "completed")) == 1 and len(backend.events(job_id, "failed")) == 1
        assert await asyncio.to_thread(shop3d, ["dead", "requeue", "via-cli"]) == 1   # not dead any more

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, scenario)


def test_an_undelivered_completed_webhook_is_replayed_with_its_original_webhook_id(
        redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer) -> None:
    photo = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")

    async def scenario(harness: Harness, backend: Backend) -> None:
        http_server.route("/hooks", lambda _request: Response(503, b"backend down"))
        await harness.redis.lpush(QUEUE, readme_message(job_fields("missed", [photo])))
        await eventually(lambda: _status_is(harness.redis, "missed", "completed"), "missed completed")
        first_tries = [r for r in http_server.requests if r.path == "/hooks" and b'"completed"' in r.body]
        assert first_tries and {r.headers["webhook-id"] for r in first_tries} == {"msg_missed_completed"}
        state = await get_job_state(harness.redis, "missed")
        assert state is not None and state["webhook_completed"] == "failed"

        http_server.route("/hooks", lambda _request: Response(200, b"ok"))
        seen = len(http_server.requests)
        sender = WebhookSender(backend.url, None, max_attempts=2, base_delay_s=0.01, timeout=5.0)
        async with console(redis_url, sender=sender) as client:
            (kept,) = (await client.get("/webhooks", headers=bearer())).json()["undelivered"]
            assert kept["webhook_id"] == "msg_missed_completed" and kept["job_id"] == "missed"
            answer = await client.post("/webhooks/replay", headers=bearer())
            assert answer.json() == {"replayed": 1, "delivered": 1, "failed": 0}
            assert (await client.get("/webhooks", headers=bearer())).json()["undelivered"] == []
        (delivered,) = [r for r in http_server.requests[seen:]
                        if r.path == "/hooks" and b'"completed"' in r.body]
        assert delivered.headers["webhook-id"] == "msg_missed_completed"
        assert json.loads(delivered.body)["assets"]["glb"] == state["assets"]["glb"]
        state = await get_job_state(harness.redis, "missed")
        assert state is not None and state["webhook_completed"] == "delivered"

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, scenario)


async def _has_dead_letter(redis: aioredis.Redis, job_id: str) -> bool:
    return await find_dead_letter(redis, job_id) is not None


async def _status_is(redis: aioredis.Redis, job_id: str, status: str) -> bool:
    state = await get_job_state(redis, job_id)
    return state is not None and state.get("status") == status


def test_the_admin_cli_lists_shows_requeues_purges_and_replays(
        redis_url: str, tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    missing = http_server.url("/missing.jpg")   # 404: a terminal image_http_error, dead at once
    for name, value in (("REDIS_URL", redis_url), ("QUEUE_NAME", QUEUE), ("WEBHOOK_MAX_ATTEMPTS", "1"),
                        ("BACKEND_URL", http_server.url("/")), ("WEBHOOK_PATH", "/hooks")):
        monkeypatch.setenv(name, value)

    async def scenario(harness: Harness, backend: Backend) -> None:
        http_server.route("/hooks", lambda _request: Response(503, b"backend down"))
        for job_id in ("cli-1", "cli-2", "cli-3"):
            await harness.redis.lpush(QUEUE, readme_message(job_fields(job_id, [missing])))
        for job_id in ("cli-1", "cli-2", "cli-3"):
            await eventually(lambda job_id=job_id: _has_dead_letter(harness.redis, job_id), f"{job_id} dead")
        await eventually(lambda: _undelivered(harness.redis, 3), "three failed webhooks kept")

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, scenario)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        status = shop3d(list(argv))
        return status, capsys.readouterr().out

    status, out = run("jobs", "--status", "failed", "--json")
    listed = json.loads(out)   # newest write first; two jobs ran at once, so their last writes interleave
    assert status == 0 and sorted(job["job_id"] for job in listed) == ["cli-1", "cli-2", "cli-3"]
    status, out = run("jobs")
    assert status == 0 and out.splitlines()[0].split() == ["job_id", "status", "stage", "progress", "attempts",
                                                           "quality", "updated_at"]
    assert len(out.splitlines()) == 4 and "failed" in out.splitlines()[1]
    status, out = run("dead", "list", "--json")
    assert status == 0 and {letter["error"]["code"] for letter in json.loads(out)} == {"image_http_error"}
    status, out = run("dead", "show", "cli-2")
    assert status == 0 and json.loads(out)["info"]["job_id"] == "cli-2" and "cli-2" in json.loads(out)["message"]
    assert run("dead", "show", "nobody")[0] == 1
    status, out = run("webhooks", "list", "--json")
    assert status == 0 and {hook["webhook_id"] for hook in json.loads(out)} == {
        "msg_cli-1_failed", "msg_cli-2_failed", "msg_cli-3_failed"}

    http_server.route("/hooks", lambda _request: Response(200, b"ok"))
    status, out = run("webhooks", "replay")
    assert status == 0 and json.loads(out) == {"replayed": 3, "delivered": 3, "failed": 0}
    assert json.loads(run("webhooks", "list", "--json")[1]) == []

    status, out = run("dead", "requeue", "cli-1")
    assert status == 0 and out.strip() == "requeued cli-1"
    status, out = run("dead", "requeue", "--all")
    assert status == 0 and out.strip() == "requeued 2 job(s)"
    queued = json.loads(run("jobs", "--status", "queued", "--json")[1])
    assert {job["job_id"] for job in queued} == {"cli-1", "cli-2", "cli-3"}
    assert all(job["attempts"] == 0 and job["history"][0]["by"] == "cli" for job in queued)

    async def again(harness: Harness, backend: Backend) -> None:   # the image is still missing: dead again
        for job_id in ("cli-1", "cli-2", "cli-3"):
            await eventually(lambda job_id=job_id: _has_dead_letter(harness.redis, job_id), f"{job_id} dead again")
            await eventually(lambda job_id=job_id: _status_is(harness.redis, job_id, "failed"), f"{job_id} failed")

    run_with_worker(redis_url, tiny_fixture_dir, tmp_path, http_server, again)
    assert run("dead", "purge", "--yes") == (0, "purged 3 dead letter(s)\n")
    assert json.loads(run("dead", "list", "--json")[1]) == []
    failed = json.loads(run("jobs", "--status", "failed", "--json")[1])
    assert {job["job_id"] for job in failed} == {"cli-1", "cli-2", "cli-3"}   # states stay after a purge


async def _undelivered(redis: aioredis.Redis, count: int) -> bool:
    return int(await redis.llen("shop3d:webhooks:undelivered")) == count
