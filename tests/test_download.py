"""SSRF-safe download (pipeline.intake.download) against a real local HTTP server on 127.0.0.1.

The production policy must refuse that server (it is loopback); the tests reach it with a policy
whose allowlist admits exactly 127.0.0.1:<its port>, so every other private address stays blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from pipeline.errors import JobRejected, Shop3dError, TransientError
from pipeline.intake.download import DownloadPolicy, allow_only_addresses, fetch_image, make_http_client
from pipeline.testing.http_server import LocalHTTPServer, Response
from pipeline.testing.redis_server import free_port

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_policy(server: LocalHTTPServer, **overrides: object) -> DownloadPolicy:
    """Allowlist exactly the test server; fast retries so failure cases stay quick."""
    fields: dict[str, object] = {"address_validator": allow_only_addresses(("127.0.0.1", server.port)),
                                 "attempts": 2, "retry_delay_s": 0.01, "timeout_s": 5.0}
    fields.update(overrides)
    return DownloadPolicy(**fields)  # type: ignore[arg-type]


test_policy.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def fetch(url: str, policy: DownloadPolicy) -> bytes:
    async def run() -> bytes:
        async with make_http_client(policy) as client:
            return await fetch_image(client, url, policy, job_id="job-1")
    return asyncio.run(run())


def fetch_error(url: str, policy: DownloadPolicy) -> Shop3dError:
    with pytest.raises(Shop3dError) as caught:
        fetch(url, policy)
    return caught.value


# --- happy paths -------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "IMAGE/WEBP", "image/png; charset=binary"])
def test_fetch_returns_the_exact_body_for_allowed_image_types(http_server: LocalHTTPServer,
                                                              content_type: str) -> None:
    url = http_server.serve_bytes("/mug.png", PNG_BYTES, content_type)
    assert fetch(url + "?v=3&token=abc", test_policy(http_server)) == PNG_BYTES
    (request,) = http_server.requests
    assert request.method == "GET" and request.query == "v=3&token=abc"
    assert request.headers["accept-encoding"] == "identity"


def test_chunked_body_under_the_cap_is_read_whole(http_server: LocalHTTPServer) -> None:
    body = bytes(range(256)) * 1000
    http_server.route("/chunked.png", lambda _r: Response(200, body, {"Content-Type": "image/png"}, chunked=True))
    assert fetch(http_server.url("/chunked.png"), test_policy(http_server, max_bytes=len(body))) == body


def test_redirect_within_the_allowlist_is_followed(http_server: LocalHTTPServer) -> None:
    http_server.serve_bytes("/final.png", PNG_BYTES)
    http_server.route("/moved", lambda _r: Response(301, b"", {"Location": "/final.png"}))
    assert fetch(http_server.url("/moved"), test_policy(http_server)) == PNG_BYTES


def test_server_error_then_success_is_retried_within_the_call(http_server: LocalHTTPServer) -> None:
    answers = iter([Response(503, b"busy"), Response(200, PNG_BYTES, {"Content-Type": "image/png"})])
    http_server.route("/flaky.png", lambda _r: next(answers))
    assert fetch(http_server.url("/flaky.png"), test_policy(http_server)) == PNG_BYTES
    assert len(http_server.requests) == 2


# --- address checks ----------------------------------------------------------------------------

def test_production_policy_blocks_the_loopback_test_server(http_server: LocalHTTPServer) -> None:
    url = http_server.serve_bytes("/mug.png", PNG_BYTES)
    error = fetch_error(url, DownloadPolicy())
    assert isinstance(error, JobRejected) and error.code == "url_blocked"
    assert http_server.requests == []


@pytest.mark.parametrize("host", ["169.254.169.254", "10.0.0.1", "192.168.0.10", "[::1]", "[fe80::1]",
                                  "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_private_literals_stay_blocked_under_the_test_allowlist(http_server: LocalHTTPServer, host: str) -> None:
    error = fetch_error(f"http://{host}:{http_server.port}/mug.png", test_policy(http_server))
    assert error.code == "url_blocked"


@pytest.mark.parametrize("policy_kind", ["production", "test-allowlist"])
def test_hostname_resolving_to_loopback_is_blocked_at_connect(http_server: LocalHTTPServer,
                                                              policy_kind: str) -> None:
    """`localhost` passes the URL check (it is a name); httpx-secure refuses the IP it resolves to."""
    http_server.serve_bytes("/mug.png", PNG_BYTES)
    policy = DownloadPolicy() if policy_kind == "production" else test_policy(http_server)
    error = fetch_error(f"http://localhost:{http_server.port}/mug.png", policy)
    assert error.code == "url_blocked"
    assert http_server.requests == []  # at most a TCP probe; no HTTP request was sent


def test_machine_hostname_resolving_to_loopback_is_blocked(http_server: LocalHTTPServer) -> None:
    name = socket.gethostname()
    if socket.getaddrinfo(name, None)[0][4][0] not in ("127.0.0.1", "::1"):
        pytest.skip("this machine's hostname does not resolve to loopback")
    error = fetch_error(f"http://{name}:{http_server.port}/mug.png", DownloadPolicy())
    assert error.code == "url_blocked" and http_server.requests == []


@pytest.mark.parametrize("location", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png",
                                      "http://[::1]/x.png", "http://localhost:{port}/mug.png"])
def test_redirect_to_a_private_address_is_blocked(http_server: LocalHTTPServer, location: str) -> None:
    http_server.serve_bytes("/mug.png", PNG_BYTES)
    target = location.format(port=http_server.port)
    http_server.route("/redirect", lambda _r: Response(302, b"", {"Location": target}))
    error = fetch_error(http_server.url("/redirect"), test_policy(http_server))
    assert error.code == "url_blocked"
    assert [r.path for r in http_server.requests] == ["/redirect"]


def test_redirect_to_file_scheme_is_url_not_allowed(http_server: LocalHTTPServer) -> None:
    http_server.route("/redirect", lambda _r: Response(302, b"", {"Location": "file:///etc/passwd"}))
    assert fetch_error(http_server.url("/redirect"), test_policy(http_server)).code == "url_not_allowed"


def test_redirect_loop_is_too_many_redirects(http_server: LocalHTTPServer) -> None:
    http_server.route("/loop", lambda _r: Response(302, b"", {"Location": "/loop"}))
    error = fetch_error(http_server.url("/loop"), test_policy(http_server))
    assert isinstance(error, JobRejected) and error.code == "too_many_redirects"
    assert len(http_server.requests) == 4  # the first request and max_redirects=3 hops


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/mug.png", "gopher://127.0.0.1:70/x",
                                 "data:image/png;base64,iVBORw0KGgo="])
def test_other_schemes_are_refused_before_connecting(http_server: LocalHTTPServer, url: str) -> None:
    assert fetch_error(url, test_policy(http_server)).code == "url_not_allowed"
    assert http_server.requests == []


def test_integer_host_is_blocked_before_connecting(http_server: LocalHTTPServer) -> None:
    assert fetch_error(f"http://2130706433:{http_server.port}/mug.png", DownloadPolicy()).code == "url_blocked"


# --- status, transport and time ----------------------------------------------------------------

@pytest.mark.parametrize("status", [404, 403, 410, 204])
def test_client_error_status_is_image_http_error_without_retry(http_server: LocalHTTPServer, status: int) -> None:
    http_server.serve_bytes("/gone.png", b"nope", "text/plain", status=status)
    error = fetch_error(http_server.url("/gone.png"), test_policy(http_server))
    assert isinstance(error, JobRejected) and error.code == "image_http_error"
    assert error.details["status"] == status and len(http_server.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 429])
def test_server_error_is_retried_then_image_unreachable(http_server: LocalHTTPServer, status: int) -> None:
    http_server.serve_bytes("/broken.png", b"oops", "text/plain", status=status)
    error = fetch_error(http_server.url("/broken.png"), test_policy(http_server, attempts=3))
    assert isinstance(error, TransientError) and error.code == "image_unreachable"
    assert len(http_server.requests) == 3


def test_connection_refused_is_image_unreachable(http_server: LocalHTTPServer) -> None:
    closed = free_port()
    policy = DownloadPolicy(address_validator=allow_only_addresses(("127.0.0.1", closed)), attempts=2,
                            retry_delay_s=0.01)
    error = fetch_error(f"http://127.0.0.1:{closed}/mug.png", policy)
    assert isinstance(error, TransientError) and error.code == "image_unreachable"


def test_dns_failure_is_image_unreachable() -> None:
    error = fetch_error("http://no-such-host.invalid/mug.png", DownloadPolicy(attempts=1))
    assert isinstance(error, TransientError) and error.code == "image_unreachable"


@contextmanager
def raw_server(reply: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection raw socket server on 127.0.0.1: reads the request, then runs `reply`."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            with contextlib.suppress(OSError):   # the client gave up, as it should
                reply(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(timeout=15)


def never_answer(conn: socket.socket) -> None:
    conn.settimeout(10)
    conn.recv(1)  # returns when the client closes the connection


def drip_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n")
    for _ in range(100):
        conn.sendall(b"x")
        time.sleep(0.1)


def raw_policy(port: int, timeout_s: float) -> DownloadPolicy:
    return DownloadPolicy(address_validator=allow_only_addresses(("127.0.0.1", port)), attempts=1,
                          timeout_s=timeout_s)


def test_server_that_never_answers_hits_the_timeout() -> None:
    with raw_server(never_answer) as port:
        error = fetch_error(f"http://127.0.0.1:{port}/mug.png", raw_policy(port, timeout_s=0.5))
    assert isinstance(error, TransientError) and error.code == "image_unreachable"


def test_trickling_body_hits_the_overall_deadline() -> None:
    """Each byte arrives well within httpx's per-read timeout; only the overall deadline stops it."""
    with raw_server(drip_body) as port:
        started = time.monotonic()
        error = fetch_error(f"http://127.0.0.1:{port}/mug.png", raw_policy(port, timeout_s=1.0))
        elapsed = time.monotonic() - started
    assert error.code == "image_unreachable" and elapsed < 5


# --- what comes back ---------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "image/svg+xml", "image/gif",
                                          "application/octet-stream"])
def test_disallowed_content_type_is_refused(http_server: LocalHTTPServer, content_type: str) -> None:
    url = http_server.serve_bytes("/page.png", b"<html><body>not an image</body></html>", content_type)
    assert fetch_error(url, test_policy(http_server)).code == "content_type_not_allowed"


def test_missing_content_type_is_refused(http_server: LocalHTTPServer) -> None:
    http_server.route("/bare.png", lambda _r: Response(200, PNG_BYTES, {}))
    assert fetch_error(http_server.url("/bare.png"), test_policy(http_server)).code == "content_type_not_allowed"


def test_content_length_over_the_cap_is_image_too_large(http_server: LocalHTTPServer) -> None:
    url = http_server.serve_bytes("/big.png", b"x" * 5000)
    error = fetch_error(url, test_policy(http_server, max_bytes=4096))
    assert isinstance(error, JobRejected) and error.code == "image_too_large"


def test_chunked_body_over_the_cap_is_cut_off(http_server: LocalHTTPServer) -> None:
    body = b"y" * (3 * 1024 * 1024)
    http_server.route("/endless.png", lambda _r: Response(200, body, {"Content-Type": "image/png"}, chunked=True))
    error = fetch_error(http_server.url("/endless.png"), test_policy(http_server, max_bytes=2 * 1024 * 1024))
    assert error.code == "image_too_large"


def test_empty_body_is_empty_image(http_server: LocalHTTPServer) -> None:
    url = http_server.serve_bytes("/empty.png", b"", "image/png")
    assert fetch_error(url, test_policy(http_server)).code == "empty_image"


def test_query_strings_stay_out_of_errors_and_logs(http_server: LocalHTTPServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    http_server.serve_bytes("/broken.png", b"oops", "text/plain", status=500)
    http_server.serve_bytes("/gone.png", b"nope", "text/plain", status=404)
    caplog.set_level(logging.DEBUG, logger="pipeline")
    for path in ("/broken.png", "/gone.png"):
        error = fetch_error(http_server.url(path) + "?token=SECRET123", test_policy(http_server))
        assert "SECRET123" not in str(error.to_dict())
    assert "job-1" in caplog.text and "SECRET123" not in caplog.text


def test_policy_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        DownloadPolicy(max_bytes=0)
    with pytest.raises(ValueError):
        DownloadPolicy(attempts=0)
