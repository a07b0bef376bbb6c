"""SSRF-safe image download: one shared httpx client per replica, one `fetch_image` per URL.

Three layers, each needed (integrations.md §5):
1. `check_url` on the URL and on every redirect hop (a request event hook): scheme, userinfo, literal
   private IPs, numeric hosts; refused before any connection.
2. httpx-secure on the client's transport: checks the IP actually connected to, so DNS names that
   resolve to private addresses (and DNS rebinding) are refused too.
3. Limits on the response: status, content type, a byte cap counted while streaming, a deadline.
Failures map to the error tree: the outside world failing is `TransientError("image_unreachable")`
after a quick in-call retry; anything about the URL or the answer is a `JobRejected` with its code.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from httpx_secure import SSRFProtectionError, httpx_ssrf_protection
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_incrementing

from pipeline.errors import JobRejected, TransientError, is_retryable_status
from pipeline.intake.urls import AddressValidator, IPAddress, check_url, is_public_address

if TYPE_CHECKING:
    from pipeline.settings import Settings

log = logging.getLogger(__name__)

IMAGE_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})


@dataclass(frozen=True)
class DownloadPolicy:
    """Limits of one image download; `timeout_s` is the deadline of one whole attempt (connect to last byte).

    `address_validator(host, ip, port)` replaces the public-address rule with an allowlist (tests and
    local development); `allow_private` switches the address checks off altogether.
    """

    allow_private: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 20.0
    connect_timeout_s: float = 5.0
    max_redirects: int = 3
    content_types: frozenset[str] = IMAGE_CONTENT_TYPES
    attempts: int = 3
    retry_delay_s: float = 0.25
    address_validator: AddressValidator | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("max_bytes, timeout_s and connect_timeout_s must be positive")
        if self.attempts < 1 or self.max_redirects < 0 or self.retry_delay_s < 0:
            raise ValueError("attempts must be >= 1, max_redirects and retry_delay_s >= 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadPolicy:
        """The policy of a running service (ALLOW_PRIVATE_URLS, MAX_IMAGE_BYTES, DOWNLOAD_TIMEOUT_S)."""
        return cls(allow_private=settings.allow_private_urls, max_bytes=settings.max_image_bytes,
                   timeout_s=settings.download_timeout_s)


def allow_only_addresses(*addresses: tuple[str, int]) -> AddressValidator:
    """A validator admitting exactly these (literal IP, port) pairs; hostnames never match.

    Requiring the URL's host to be the literal IP keeps `localhost` and other names that resolve to an
    allowed address blocked, so a test server can be reached without opening loopback to everything.
    """
    allowed = {(str(ip_text), int(port)) for ip_text, port in addresses}

    def validate(host: str, ip: IPAddress, port: int) -> bool:
        return host.strip("[]") == str(ip) and (str(ip), port) in allowed

    return validate


def _public_only(_host: str, ip: IPAddress, _port: int) -> bool:
    # Runs after httpx-secure's own is_global check, which lets multicast and 6to4 forms through.
    return is_public_address(ip)


def make_http_client(policy: DownloadPolicy) -> httpx.AsyncClient:
    """The shared download client: redirects capped, proxies/env ignored, every hop checked.

    Unless `policy.allow_private`, httpx-secure refuses connections to non-public IPs (or to
    addresses outside `policy.address_validator`). Close it with `await client.aclose()`.
    """
    async def check_hop(request: httpx.Request) -> None:
        check_url(str(request.url), allow_private=policy.allow_private,
                  allow_address=policy.address_validator)

    client = httpx.AsyncClient(
        trust_env=False,  # an HTTP(S)_PROXY from the environment would bypass the address checks
        follow_redirects=True,
        max_redirects=policy.max_redirects,
        timeout=httpx.Timeout(policy.timeout_s, connect=policy.connect_timeout_s),
        # identity: a gzip-encoded body could inflate far past max_bytes inside one chunk
        headers={"Accept": ", ".join(sorted(policy.content_types)), "Accept-Encoding": "identity",
                 "User-Agent": "shop3d-image-fetcher/0.1"},
        event_hooks={"request": [check_hop]},
    )
    if not policy.allow_private:
        validator = policy.address_validator or _public_only
        httpx_ssrf_protection(client, check_globally_reachable=policy.address_validator is None,
                              custom_validator=validator)
    return client


async def fetch_image(client: httpx.AsyncClient, url: str, policy: DownloadPolicy, *,
                      job_id: str = "-") -> bytes:
    """Download the image at `url` within `policy`; returns the body bytes.

    Raises JobRejected (url_not_allowed, url_blocked, too_many_redirects, image_http_error,
    content_type_not_allowed, image_too_large, empty_image, image_undecodable) or, after
    `policy.attempts` tries, TransientError("image_unreachable").
    """
    target = check_url(url, allow_private=policy.allow_private, allow_address=policy.address_validator)
    safe = target.redacted

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.info("job %s: image %s attempt %d failed (%s); retrying", job_id, safe, state.attempt_number,
                 getattr(error, "message", type(error).__name__))

    # Quick in-call retries, retry_delay_s * attempt apart; a longer outage is the queue's delayed retry.
    retrying = AsyncRetrying(retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(policy.attempts),
                             wait=wait_incrementing(start=policy.retry_delay_s, increment=policy.retry_delay_s),
                             before_sleep=log_retry, reraise=True)
    try:
        body: bytes = await retrying(_fetch_once, client, target.url, safe, policy)
    except TransientError as exc:
        log.warning("job %s: image %s unreachable after %d attempts: %s", job_id, safe, policy.attempts,
                    exc.message)
        raise
    return body


async def _fetch_once(client: httpx.AsyncClient, url: str, safe: str, policy: DownloadPolicy) -> bytes:
    """One attempt under the overall deadline, with httpx's exceptions mapped onto the error tree."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            async with client.stream("GET", url) as response:
                _check_response(response, safe, policy)
                return await _read_capped(response, safe, policy.max_bytes)
    except TimeoutError:
        raise TransientError("image_unreachable", f"image download timed out after {policy.timeout_s:g} s: "
                             f"{safe}", url=safe) from None
    except SSRFProtectionError:
        # Caught before the transport errors: it subclasses httpx.RequestError.
        raise JobRejected("url_blocked", f"image URL (or a redirect) resolves to a non-public address: {safe}",
                          url=safe) from None
    except httpx.TooManyRedirects:
        raise JobRejected("too_many_redirects", f"image URL redirected more than {policy.max_redirects} "
                          f"times: {safe}", url=safe) from None
    except httpx.UnsupportedProtocol:
        raise JobRejected("url_not_allowed", f"image URL redirected to a non-http(s) URL: {safe}",
                          url=safe) from None
    except httpx.DecodingError:
        raise JobRejected("image_undecodable", f"image body has a broken content encoding: {safe}",
                          url=safe) from None
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        # Connection refused, DNS failure, reset, protocol garbage: the outside world, maybe briefly.
        raise TransientError("image_unreachable", f"image server unreachable ({type(exc).__name__}): {safe}",
                             url=safe) from None


def _check_response(response: httpx.Response, safe: str, policy: DownloadPolicy) -> None:
    """Refuse by status, content type and announced length before reading the body."""
    status = response.status_code
    if is_retryable_status(status):
        raise TransientError("image_unreachable", f"image server answered HTTP {status}: {safe}",
                             url=safe, status=status)
    if status != 200:
        raise JobRejected("image_http_error", f"image server answered HTTP {status}: {safe}",
                          url=safe, status=status)
    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in policy.content_types:
        raise JobRejected("content_type_not_allowed", f"image server sent content type "
                          f"{media_type or '(none)'!r}, not one of {sorted(policy.content_types)}: {safe}",
                          url=safe, content_type=media_type)
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise JobRejected("image_too_large", f"image is {int(declared)} bytes, over the {policy.max_bytes} "
                          f"byte limit: {safe}", url=safe, max_bytes=policy.max_bytes)


async def _read_capped(response: httpx.Response, safe: str, max_bytes: int) -> bytes:
    """The body, counted as it streams: a chunked or lying server cannot push past `max_bytes`."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise JobRejected("image_too_large", f"image body exceeds the {max_bytes} byte limit: {safe}",
                              url=safe, max_bytes=max_bytes)
        chunks.append(chunk)
    if total == 0:
        raise JobRejected("empty_image", f"image body is empty: {safe}", url=safe)
    return b"".join(chunks)
