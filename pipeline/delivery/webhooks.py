"""Job-status webhooks to the backend, signed per Standard Webhooks 1.0 (integrations.md §4).

`build_payload` makes the JSON object (ARCHITECTURE.md "Webhook"), `encode_payload` its exact bytes,
`sign` the `webhook-signature` over `"{id}.{timestamp}.{body}"`. `WebhookSender.deliver` POSTs with
retries (exponential backoff, full jitter; 5xx, 408, 425, 429 and network errors; Retry-After
honoured up to the cap), follows no redirects, and returns a `DeliveryResult` instead of raising, so
the caller records a delivery that finally failed. The secret is never logged or put in a result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from pipeline.assets.formats import ASSET_FORMATS
from pipeline.errors import Shop3dError

logger = logging.getLogger(__name__)

EVENT_TYPES = {"processing": "job.processing", "completed": "job.completed", "failed": "job.failed"}
RETRYABLE_STATUSES = frozenset({408, 425, 429})  # plus every 5xx
SECRET_PREFIX = "whsec_"
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
    when = occurred_at or datetime.now(timezone.utc)
    return {
        "type": EVENT_TYPES[status], "job_id": job_id, "status": status, "stage": stage, "progress": progress,
        "shop": shop, "product_id": product_id, "variant_id": variant_id,
        "assets": {name: (assets or {}).get(name) for name in ASSET_FORMATS},
        "stats": dict(stats) if stats is not None else None,
        "error": None if error_dict is None else {"code": error_dict["code"], "message": error_dict["message"]},
        "attempt": attempt,
        "occurred_at": when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
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


def verify_signature(secret: str | bytes, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """True when any `v1,` entry of a `webhook-signature` header matches (constant-time compare)."""
    expected = sign(secret, msg_id, timestamp, body).encode()
    return any(hmac.compare_digest(expected, entry.encode())
               for entry in header.split() if entry.startswith("v1,"))


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


class WebhookSender:
    """Delivers webhooks to one URL. `sleep` and `rng` are injectable so tests see the delays without waiting."""

    def __init__(self, url: str, secret: SecretStr | None, *, max_attempts: int = 6, base_delay_s: float = 5.0,
                 max_delay_s: float = 300.0, timeout: float = 10.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("webhook URL must be http(s)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url, self.max_attempts = url, max_attempts
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.timeout = httpx.Timeout(timeout, connect=min(3.0, timeout))
        self._key = signing_key(secret.get_secret_value()) if secret is not None else None
        self._sleep, self._rng = sleep, rng or random.Random()

    def __repr__(self) -> str:
        return f"WebhookSender(url={_safe_url(self.url)!r}, signed={self._key is not None})"

    def headers_for(self, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """Request headers; signed (fresh timestamp per attempt) when a secret is configured."""
        headers = {"content-type": "application/json", "user-agent": USER_AGENT,
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        return headers

    def backoff_s(self, attempt: int, retry_after: float | None) -> float:
        """Delay before attempt `attempt + 1`: Retry-After (capped) if given, else full jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_delay_s)
        return self._rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))

    async def deliver(self, payload: Mapping[str, Any]) -> DeliveryResult:
        """POST `payload` until a 2xx, a non-retryable answer, or `max_attempts`; never raises for delivery."""
        body = encode_payload(payload)
        msg_id = webhook_id(str(payload["job_id"]), str(payload["status"]), str(payload["stage"]))
        job_id = payload["job_id"]
        status_code: int | None = None
        error: str | None = None
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            for attempt in range(1, self.max_attempts + 1):
                retry_after = None
                try:
                    response = await client.post(self.url, content=body,
                                                 headers=self.headers_for(msg_id, body, int(time.time())))
                except httpx.TransportError as exc:  # connection refused/reset, DNS, every timeout
                    status_code, error = None, type(exc).__name__
                else:
                    status_code = response.status_code
                    if 200 <= status_code < 300:
                        logger.info("job %s: webhook %s delivered to %s (HTTP %d, attempt %d)", job_id, msg_id,
                                    _safe_url(self.url), status_code, attempt)
                        return DeliveryResult(True, attempt, status_code, None)
                    error = f"HTTP {status_code}"
                    if not (status_code >= 500 or status_code in RETRYABLE_STATUSES):
                        logger.warning("job %s: webhook %s refused by %s with %s; not retrying", job_id, msg_id,
                                       _safe_url(self.url), error)
                        return DeliveryResult(False, attempt, status_code, error)
                    retry_after = retry_after_seconds(response.headers.get("retry-after"), time.time())
                if attempt < self.max_attempts:
                    delay = self.backoff_s(attempt, retry_after)
                    logger.info("job %s: webhook %s attempt %d failed (%s); retrying in %.1f s", job_id, msg_id,
                                attempt, error, delay)
                    await self._sleep(delay)
        logger.warning("job %s: webhook %s to %s failed after %d attempts (%s)", job_id, msg_id,
                       _safe_url(self.url), self.max_attempts, error)
        return DeliveryResult(False, self.max_attempts, status_code, error)
