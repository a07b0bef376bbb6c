"""Job-status webhooks to the backend, signed per Standard Webhooks 1.0 (integrations.md §4).

`build_payload` makes the JSON object (ARCHITECTURE.md "Webhook"), `encode_payload` its exact bytes,
`sign` the `webhook-signature` over `"{id}.{timestamp}.{body}"`. `WebhookSender.deliver` POSTs with
tenacity retries (full-jitter exponential backoff; the statuses of `is_retryable_status` and network
errors; Retry-After honoured) inside one deadline for the whole delivery, follows no redirects, and
returns a `DeliveryResult` instead of raising, so the caller records a delivery that finally failed.
The secret is never logged or put in a result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from pipeline.assets.formats import ASSET_FORMATS
from pipeline.errors import Shop3dError, is_retryable_status

logger = logging.getLogger(__name__)

EVENT_TYPES = {"processing": "job.processing", "completed": "job.completed", "failed": "job.failed"}
DELIVERY_DEADLINE_S = 60.0   # one whole delivery, retries and waits included: how long it may hold a job's slot
SECRET_PREFIX = "whsec_"   # noqa: S105 - the marker of an encoded secret, not one
USER_AGENT = "shop3d-webhooks/1"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def build_payload(*, job_id: str, status: str, stage: str, progress: int, shop: str | None,
                  product_id: str | None,
                  variant_id: str | None = None, assets: Mapping[str, str | None] | None = None,
                  stats: Mapping[str, Any] | None = None, error: Shop3dError | Mapping[str, Any] | None = None,
                  attempt: int = 1, occurred_at: datetime | None = None) -> dict[str, Any]:
    """The webhook object for one status change; `progress` is a percentage 0-100. `shop` and
    `product_id` are None only for a dead-lettered message too malformed to name them.

    `assets` maps glb/usdz/poster/report to URLs (missing ones are null); `error` keeps only
    {code, message}. `occurred_at` defaults to now (UTC). ValueError on an unknown status or asset.
    """
    if status not in EVENT_TYPES:
        raise ValueError(f"webhooks are sent for {sorted(EVENT_TYPES)}, not {status!r}")
    if not 0 <= progress <= 100:
        raise ValueError(f"progress must be 0-100, got {progress}")
    unknown = set(assets or {}) - set(ASSET_FORMATS)
    if unknown:
        raise ValueError(f"unknown asset names {sorted(unknown)}; expected {list(ASSET_FORMATS)}")
    error_dict = error.to_dict() if isinstance(error, Shop3dError) else error
    when = occurred_at or datetime.now(UTC)
    return {
        "type": EVENT_TYPES[status], "job_id": job_id, "status": status, "stage": stage, "progress": progress,
        "shop": shop, "product_id": product_id, "variant_id": variant_id,
        "assets": {name: (assets or {}).get(name) for name in ASSET_FORMATS},
        "stats": dict(stats) if stats is not None else None,
        "error": None if error_dict is None else {"code": error_dict["code"], "message": error_dict["message"]},
        "attempt": attempt,
        "occurred_at": when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def webhook_id(job_id: str, status: str, stage: str) -> str:
    """Deterministic `webhook-id`, so retries and re-runs reuse it and the receiver can dedupe.

    Terminal events are one per job and status; each processing stage is its own event.
    """
    parts = [job_id, status] + ([stage] if status == "processing" else [])
    return "msg_" + "_".join(_ID_UNSAFE.sub("-", part) for part in parts)


def signing_key(secret: str | bytes) -> bytes:
    """`whsec_<base64>` -> the decoded key; any other str is the raw key (UTF-8); bytes are used as is."""
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX):] + "==")  # tolerate missing padding
        except binascii.Error:
            raise ValueError("webhook secret starts with whsec_ but is not base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `"{msg_id}.{timestamp}.{body}"`, the Standard Webhooks signature."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(signing_key(secret), signed, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class DeliveryResult:
    """How a delivery ended: `error` is a short reason ("HTTP 503", "ConnectTimeout") or None."""

    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unparsable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _safe_url(url: str) -> str:
    # Receivers often put a token in the query string; logs get scheme, host and path only.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class _Try:
    """One POST's outcome: `error` None means delivered; `retry_after` is the server's wish, in seconds."""

    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def worth_retrying(self) -> bool:
        return self.error is not None and (self.status_code is None or is_retryable_status(self.status_code))


class _Superseded(Exception):
    """A newer event of the same job made this delivery stale: stop before the next attempt."""


def _last_try(state: RetryCallState) -> _Try:
    """What the last attempt returned (attempts return their failures, so there is always a value)."""
    if state.outcome is None:
        raise RuntimeError("no attempt has finished yet")
    tried: _Try = state.outcome.result()
    return tried


class WebhookSender:
    """Delivers webhooks to one URL, each delivery within `deadline_s`. `sleep` is injectable so tests
    see the delays without waiting (the deadline counts real time only)."""

    def __init__(self, url: str, secret: SecretStr | None, *, max_attempts: int = 6,
                 deadline_s: float = DELIVERY_DEADLINE_S, base_delay_s: float = 5.0, max_delay_s: float = 30.0,
                 timeout: float = 10.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("webhook URL must be http(s)")
        if max_attempts < 1 or deadline_s <= 0:
            raise ValueError("max_attempts must be at least 1 and deadline_s positive")
        self.url, self.max_attempts, self.deadline_s = url, max_attempts, deadline_s
        self.timeout = httpx.Timeout(timeout, connect=min(3.0, timeout))
        self._key = signing_key(secret.get_secret_value()) if secret is not None else None
        self._sleep = sleep
        self._jitter = wait_random_exponential(multiplier=base_delay_s, max=max_delay_s)

    def __repr__(self) -> str:
        return f"WebhookSender(url={_safe_url(self.url)!r}, signed={self._key is not None})"

    def headers_for(self, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """Request headers; signed (fresh timestamp per attempt) when a secret is configured."""
        headers = {"content-type": "application/json", "user-agent": USER_AGENT,
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        return headers

    def _wait_s(self, state: RetryCallState) -> float:
        """The server's Retry-After when it sent one, else full jitter under base * 2**(attempt-1), capped."""
        retry_after = _last_try(state).retry_after
        return retry_after if retry_after is not None else self._jitter(state)

    async def deliver(self, payload: Mapping[str, Any], *, deadline_s: float | None = None,
                      superseded: asyncio.Event | None = None) -> DeliveryResult:
        """POST `payload` until a 2xx, a non-retryable answer, `max_attempts`, or the deadline (default
        `self.deadline_s`) would pass; a Retry-After beyond the deadline ends it at once. Once `superseded`
        is set (a newer event of the job made this one stale), no further attempt starts; one in flight
        finishes. Never raises for delivery: a failure comes back as the result."""
        body = encode_payload(payload)
        msg_id = webhook_id(str(payload["job_id"]), str(payload["status"]), str(payload["stage"]))
        job_id = payload["job_id"]
        budget_s = self.deadline_s if deadline_s is None else deadline_s
        ends_at = time.monotonic() + budget_s
        tries: list[_Try] = []

        async def attempt(client: httpx.AsyncClient) -> _Try:
            if superseded is not None and superseded.is_set():
                raise _Superseded
            tries.append(await self._post(client, body, msg_id, ends_at))
            return tries[-1]

        def log_retry(state: RetryCallState) -> None:
            logger.info("job %s: webhook %s attempt %d failed (%s); retrying in %.1f s", job_id, msg_id,
                        state.attempt_number, _last_try(state).error, state.upcoming_sleep)

        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_attempts) | stop_before_delay(budget_s),
                                 wait=self._wait_s, retry=retry_if_result(lambda tried: tried.worth_retrying),
                                 sleep=partial(self._pause, superseded=superseded), before_sleep=log_retry,
                                 retry_error_callback=_last_try)
        try:
            async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
                await retrying(attempt, client)
        except _Superseded:
            logger.info("job %s: webhook %s dropped after %d attempt(s): superseded by a newer event", job_id,
                        msg_id, len(tries))
            return DeliveryResult(False, len(tries), tries[-1].status_code if tries else None, "superseded")
        return self._result(str(job_id), msg_id, tries, budget_s)

    def _result(self, job_id: str, msg_id: str, tries: list[_Try], budget_s: float) -> DeliveryResult:
        """The outcome of the last try, logged once."""
        last, where = tries[-1], _safe_url(self.url)
        if last.error is None:
            logger.info("job %s: webhook %s delivered to %s (HTTP %s, attempt %d)", job_id, msg_id, where,
                        last.status_code, len(tries))
        elif not last.worth_retrying:
            logger.warning("job %s: webhook %s refused by %s with %s; not retrying", job_id, msg_id, where,
                           last.error)
        else:
            logger.warning("job %s: webhook %s to %s failed after %d attempts within %.0f s (%s)", job_id, msg_id,
                           where, len(tries), budget_s, last.error)
        return DeliveryResult(last.error is None, len(tries), last.status_code, last.error)

    async def _pause(self, seconds: float, *, superseded: asyncio.Event | None) -> None:
        """The wait between attempts; it ends early, and ends the delivery, once `superseded` is set."""
        if superseded is None:
            await self._sleep(seconds)
            return
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        waiting = asyncio.ensure_future(superseded.wait())
        try:
            await asyncio.wait({sleeping, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            waiting.cancel()
        if superseded.is_set():
            raise _Superseded

    async def _post(self, client: httpx.AsyncClient, body: bytes, msg_id: str, ends_at: float) -> _Try:
        """One POST, cut off at the delivery's deadline; network failures are returned, not raised."""
        try:
            async with asyncio.timeout(max(0.0, ends_at - time.monotonic())):
                response = await client.post(self.url, content=body,
                                             headers=self.headers_for(msg_id, body, int(time.time())))
        except httpx.TransportError as exc:  # connection refused/reset, DNS, every timeout
            return _Try(None, type(exc).__name__)
        except TimeoutError:
            return _Try(None, "DeadlineExceeded")
        if 200 <= response.status_code < 300:
            return _Try(response.status_code, None)
        retry_after = retry_after_seconds(response.headers.get("retry-after"), time.time())
        return _Try(response.status_code, f"HTTP {response.status_code}", retry_after)
