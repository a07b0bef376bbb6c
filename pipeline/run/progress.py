"""Best-effort stage/progress writes to the job's Redis state, from wherever a stage runs (the stage knows
how far it got while the ingress only waits for the hop's answer).

Progress is informative: a Redis hiccup here is logged and ignored, never fails the job.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline.jobs.state import record_progress
from pipeline.run.stages import ProgressSink

logger = logging.getLogger(__name__)


class ProgressRecorder:
    """Writes `stage` and `progress` on the job's state hash; the client is made lazily on the replica's loop."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
        return self._client

    async def record(self, job_id: str, stage: str, progress: int) -> None:
        try:
            await record_progress(self.client, job_id, stage=stage, progress=progress)
        except (RedisError, OSError) as exc:
            logger.warning("job %s: progress %s/%d not recorded (%s)", job_id, stage, progress, type(exc).__name__)

    def for_job(self, job_id: str) -> ProgressSink:
        """A stages.ProgressSink that records this job's stage and percent."""

        async def sink(stage: str, percent: int) -> None:
            await self.record(job_id, stage, percent)

        return sink

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
