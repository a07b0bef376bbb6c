"""Undelivered webhooks, listed and replayed for an operator once the backend is reachable again.

A terminal webhook that finally failed sits in `shop3d:webhooks:undelivered` as JSON {payload, error,
recorded_at} (delivery.reporting). Replay sends the stored payload unchanged: its `webhook-id` is derived
from the job id, status and stage, so it is the original id and a receiver that got the first try after
all drops the copy. An entry leaves the list only once delivered (LREM of its exact bytes, so entries
pushed meanwhile are untouched), and the job's record of that delivery turns `delivered`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from pipeline.delivery.reporting import DELIVERY_FIELD
from pipeline.delivery.webhooks import WebhookSender, webhook_id
from pipeline.jobs.keys import UNDELIVERED_WEBHOOKS_KEY
from pipeline.jobs.state import update_job
from pipeline.queue.config import reply_bytes


@dataclass(frozen=True)
class UndeliveredWebhook:
    """One kept entry: its exact bytes (the LREM handle) and what they say."""

    entry: bytes
    payload: dict[str, Any]
    error: str | None
    recorded_at: str | None

    @property
    def webhook_id(self) -> str:
        return webhook_id(str(self.payload["job_id"]), str(self.payload["status"]), str(self.payload["stage"]))

    def summary(self) -> dict[str, Any]:
        """What the API and CLI list (the payload itself stays in Redis)."""
        return {"webhook_id": self.webhook_id, "job_id": self.payload["job_id"], "status": self.payload["status"],
                "error": self.error, "recorded_at": self.recorded_at}

    @classmethod
    def decode(cls, entry: bytes) -> UndeliveredWebhook:
        data = json.loads(entry)
        return cls(entry, data["payload"], data.get("error"), data.get("recorded_at"))


@dataclass(frozen=True)
class ReplayOutcome:
    replayed: int
    delivered: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        return {"replayed": self.replayed, "delivered": self.delivered, "failed": self.failed}


async def undelivered_webhooks(redis: aioredis.Redis, limit: int = 100) -> list[UndeliveredWebhook]:
    """The newest `limit` undelivered webhooks, newest first."""
    if limit < 1:
        return []
    return [UndeliveredWebhook.decode(reply_bytes(entry)) for entry in
            await redis.lrange(UNDELIVERED_WEBHOOKS_KEY, 0, limit - 1)]


async def replay_webhooks(redis: aioredis.Redis, sender: WebhookSender, limit: int = 1000) -> ReplayOutcome:
    """Send up to `limit` kept webhooks again, oldest first, each with the sender's usual retries and
    deadline; delivered ones leave the list. The first failure ends the replay (the backend is still
    down: trying the rest would only hold the caller for a deadline each); it and the rest stay."""
    entries = [reply_bytes(entry) for entry in await redis.lrange(UNDELIVERED_WEBHOOKS_KEY, -limit, -1)]
    delivered = failed = 0
    for entry in reversed(entries):
        webhook = UndeliveredWebhook.decode(entry)
        result = await sender.deliver(webhook.payload)
        if not result.delivered:
            failed += 1
            break
        delivered += 1
        await redis.lrem(UNDELIVERED_WEBHOOKS_KEY, 1, entry)  # type: ignore[arg-type]  # redis-py sends bytes as is
        status = str(webhook.payload["status"])
        await update_job(redis, str(webhook.payload["job_id"]), {DELIVERY_FIELD.format(status=status): "delivered"},
                         delete=(f"webhook_{status}_error",))
    return ReplayOutcome(delivered + failed, delivered, failed)
