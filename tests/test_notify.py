"""pipeline.delivery.webhooks: payloads, Standard Webhooks signatures (checked with the `standardwebhooks` library)
and WebhookSender's retry rules against a real local HTTP server. Delays are recorded by an injected
sleep, never waited for, except in the deadline tests, which time real waits."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from pipeline.delivery import webhooks as notify
from pipeline.errors import JobRejected, is_retryable_status
from pipeline.testing.http_server import LocalHTTPServer, Request, Response
from pipeline.testing.redis_server import free_port

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
JOB_ID = "5f1c2a9e-3b7d-4c1e-9a0f-2d6b8e4c1a77"


def payload(status: str = "completed", stage: str = "done", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        job_id=JOB_ID, status=status, stage=stage, progress=100 if status == "completed" else 40,
        shop="demo.myshopify.com", product_id="gid://shopify/Product/1", variant_id=None,
        assets={"glb": "https://cdn.example/a.glb"}, stats={"faces": 123}, attempt=1,
        occurred_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    fields.update(overrides)
    return notify.build_payload(**fields)


class Replies:
    """A route handler answering with the given responses in turn (the last one repeats)."""

    def __init__(self, *responses: Response, stall_first_s: float = 0.0) -> None:
        self.responses = list(responses)
        self.stall_first_s = stall_first_s
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        with self._lock:
            index = self.calls
            self.calls += 1
        if index == 0 and self.stall_first_s:
            time.sleep(self.stall_first_s)
        return self.responses[min(index, len(self.responses) - 1)]


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def sender(url: str, sleep: RecordedSleep, secret: str | None = SECRET, **options: Any) -> notify.WebhookSender:
    options.setdefault("max_attempts", 4)
    options.setdefault("base_delay_s", 2.0)
    options.setdefault("max_delay_s", 30.0)
    return notify.WebhookSender(url, SecretStr(secret) if secret else None, sleep=sleep, **options)


def test_build_payload_fields_and_encoding() -> None:
    error = JobRejected("no_foreground", "nothing left after background removal", image=0)
    built = payload(status="failed", stage="matting", progress=30, error=error, shop="café.example")
    assert built["type"] == "job.failed" and built["status"] == "failed"
    assert built["assets"] == {"glb": "https://cdn.example/a.glb", "usdz": None, "poster": None, "report": None}
    assert built["error"] == {"code": "no_foreground", "message": "nothing left after background removal"}
    assert built["occurred_at"] == "2025-01-02T03:04:05Z"
    body = notify.encode_payload(built)
    assert b", " not in body and b": " not in body and "café".encode() in body
    assert json.loads(body) == built
    with pytest.raises(ValueError):
        payload(status="queued")
    with pytest.raises(ValueError):
        payload(progress=101)
    with pytest.raises(ValueError):
        payload(assets={"fbx": "x"})


def test_webhook_id_is_deterministic_per_status_and_processing_stage() -> None:
    assert notify.webhook_id(JOB_ID, "completed", "done") == f"msg_{JOB_ID}_completed"
    assert notify.webhook_id(JOB_ID, "completed", "upload") == notify.webhook_id(JOB_ID, "completed", "done")
    assert notify.webhook_id(JOB_ID, "processing", "matting") != notify.webhook_id(JOB_ID, "processing", "mesh")
    assert notify.webhook_id("a b/c", "failed", "x") == "msg_a-b-c_failed"


def test_sign_matches_the_standardwebhooks_library() -> None:
    body = notify.encode_payload(payload())
    when = datetime.fromtimestamp(1_700_000_000, tz=UTC)
    expected = Webhook(SECRET).sign("msg_1", when, body.decode())
    assert notify.sign(SECRET, "msg_1", 1_700_000_000, body) == expected
    assert notify.sign("raw-secret", "msg_1", 1, body) == Webhook(b"raw-secret").sign(
        "msg_1", datetime.fromtimestamp(1, tz=UTC), body.decode())


def test_receiver_rejects_a_tampered_body_or_timestamp() -> None:
    body = notify.encode_payload(payload())
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": f"v1,bm90LWl0 {notify.sign(SECRET, 'msg_1', now, body)}"}  # rotation: 2 entries
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"demo", b"evil"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, {**headers, "webhook-timestamp": str(now + 1)})


def test_one_retryable_status_rule() -> None:
    assert [code for code in (200, 302, 400, 404, 408, 425, 429, 500, 503, 599, 600) if is_retryable_status(code)] \
        == [408, 425, 429, 500, 503, 599]
    assert is_retryable_status("503") and is_retryable_status("429") and not is_retryable_status("409")
    assert not is_retryable_status("not a status")


def test_delivery_is_signed_and_verifies_at_the_receiver(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(204)))
    sent = payload()
    result = asyncio.run(sender(http_server.url("/hook"), RecordedSleep()).deliver(sent))
    assert result == notify.DeliveryResult(True, 1, 204, None)
    (request,) = http_server.requests
    assert request.body == notify.encode_payload(sent)
    assert request.headers["content-type"] == "application/json" and request.headers["user-agent"]
    assert request.headers["webhook-id"] == f"msg_{JOB_ID}_completed"
    assert Webhook(SECRET).verify(request.body, request.headers) == sent  # raises if the signature is wrong


def test_unsigned_when_no_secret(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(200)))
    asyncio.run(sender(http_server.url("/hook"), RecordedSleep(), secret=None).deliver(payload()))
    assert "webhook-signature" not in http_server.requests[0].headers
    assert http_server.requests[0].headers["webhook-id"]


def test_retries_on_500_then_succeeds_with_jittered_backoff(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(500), Response(502), Response(200)))
    sleep = RecordedSleep()
    result = asyncio.run(sender(http_server.url("/hook"), sleep).deliver(payload()))
    assert (result.delivered, result.attempts, result.status_code) == (True, 3, 200)
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] <= 2.0 and 0 <= sleep.delays[1] <= 4.0  # full jitter under base * 2^(n-1)
    ids = {r.headers["webhook-id"] for r in http_server.requests}
    assert len(ids) == 1  # every retry reuses the webhook-id


def test_retry_after_is_honoured_within_the_deadline(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(429, headers={"Retry-After": "7"}),
                                       Response(503, headers={"Retry-After": "45"}), Response(200)))
    sleep = RecordedSleep()
    result = asyncio.run(sender(http_server.url("/hook"), sleep, deadline_s=60.0).deliver(payload()))
    assert result.delivered and result.attempts == 3
    assert sleep.delays == [7.0, 45.0]   # the server's wish, beyond max_delay_s, since it fits the deadline


def test_retry_after_beyond_the_deadline_ends_the_delivery_at_once(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(503, headers={"Retry-After": "3600"}), Response(200)))
    hook = notify.WebhookSender(http_server.url("/hook"), SecretStr(SECRET), max_attempts=6, deadline_s=2.0)
    started = time.monotonic()
    result = asyncio.run(hook.deliver(payload()))
    assert time.monotonic() - started < 1.5   # not waited for at all
    assert result == notify.DeliveryResult(False, 1, 503, "HTTP 503")
    assert len(http_server.requests) == 1


def test_a_stalled_receiver_is_cut_off_at_the_deadline(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(200), stall_first_s=3.0))
    hook = notify.WebhookSender(http_server.url("/hook"), None, max_attempts=6, deadline_s=1.0, timeout=10.0)
    started = time.monotonic()
    result = asyncio.run(hook.deliver(payload()))
    assert time.monotonic() - started < 2.0   # the 10 s request timeout did not apply; the deadline did
    assert (result.delivered, result.attempts, result.error) == (False, 1, "DeadlineExceeded")


def test_the_deadline_bounds_the_sum_of_jittered_waits(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(500)))
    hook = notify.WebhookSender(http_server.url("/hook"), None, max_attempts=50, deadline_s=1.0,
                                base_delay_s=0.05, max_delay_s=0.2)
    started = time.monotonic()
    result = asyncio.run(hook.deliver(payload()))
    assert time.monotonic() - started < 1.5
    assert not result.delivered and 2 <= result.attempts < 50
    assert result.error in ("HTTP 500", "DeadlineExceeded")   # the last try may be the one cut off


def test_no_retry_on_400(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(400, b"bad")))
    sleep = RecordedSleep()
    result = asyncio.run(sender(http_server.url("/hook"), sleep).deliver(payload()))
    assert result == notify.DeliveryResult(False, 1, 400, "HTTP 400")
    assert len(http_server.requests) == 1 and sleep.delays == []


def test_redirect_is_not_followed(http_server: LocalHTTPServer) -> None:
    target = Replies(Response(200))
    http_server.route("/elsewhere", target)
    http_server.route("/hook", Replies(Response(302, headers={"Location": http_server.url("/elsewhere")})))
    result = asyncio.run(sender(http_server.url("/hook"), RecordedSleep()).deliver(payload()))
    assert (result.delivered, result.status_code, result.attempts) == (False, 302, 1)
    assert target.calls == 0


def test_network_error_is_retried_then_returned_as_failure() -> None:
    sleep = RecordedSleep()
    hook = sender(f"http://127.0.0.1:{free_port()}/hook", sleep, max_attempts=3)
    result = asyncio.run(hook.deliver(payload()))
    assert (result.delivered, result.attempts, result.status_code) == (False, 3, None)
    assert result.error == "ConnectError"
    assert len(sleep.delays) == 2


def test_timeout_is_retried(http_server: LocalHTTPServer) -> None:
    replies = Replies(Response(200), stall_first_s=1.0)
    http_server.route("/hook", replies)
    sleep = RecordedSleep()
    result = asyncio.run(sender(http_server.url("/hook"), sleep, timeout=0.3).deliver(payload()))
    assert result.delivered and result.attempts == 2 and len(sleep.delays) == 1


def test_final_5xx_failure_is_returned(http_server: LocalHTTPServer) -> None:
    http_server.route("/hook", Replies(Response(503)))
    result = asyncio.run(sender(http_server.url("/hook"), RecordedSleep(), max_attempts=2).deliver(payload()))
    assert result == notify.DeliveryResult(False, 2, 503, "HTTP 503")
    assert len(http_server.requests) == 2


def test_secret_never_logged(http_server: LocalHTTPServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    http_server.route("/hook", Replies(Response(500), Response(401)))
    hook = sender(http_server.url("/hook?token=query-secret"), RecordedSleep())
    result = asyncio.run(hook.deliver(payload()))
    texts = [repr(hook), repr(result)] + [record.getMessage() for record in caplog.records]
    assert caplog.records and all(SECRET not in t and SECRET[6:] not in t for t in texts)
    assert all("query-secret" not in record.getMessage() for record in caplog.records
               if record.name.startswith("pipeline"))
