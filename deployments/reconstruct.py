"""GPU stage: framed photo -> native-frame mesh, batched across jobs, on a fractional GPU (or the CPU).

`@serve.batch` gathers concurrent requests into one TripoSR forward (max_ongoing_requests must be at
least the batch size, or batches stay at 1); batch size, wait, chunk size and extraction method are
live-tunable through `user_config`. Each replica also reports the Redis backlog as a custom
autoscaling metric, which `deployments.autoscaling.backlog_policy` turns into a replica count.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from ray import serve
from redis.exceptions import RedisError

from deployments.autoscaling import BACKLOG_METRIC
from deployments.metrics import StageTimer
from deployments.progress import ProgressRecorder
from deployments.settings import replica_settings
from pipeline.errors import Shop3dError
from pipeline.intake import SelectedImage
from pipeline.model import load_pretrained
from pipeline.reconstruct import Reconstruction, reconstruct_meshes

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4


@dataclass(frozen=True)
class Reconstructed:
    """What publish needs: the mesh with its costs, and which image it came from (no pixels)."""

    reconstruction: Reconstruction
    image: dict[str, Any]


@serve.deployment(ray_actor_options={"num_gpus": 0.25, "num_cpus": 1}, max_ongoing_requests=8,
                  user_config={"max_batch_size": DEFAULT_BATCH_SIZE, "batch_wait_timeout_s": 0.1})
class Reconstruct:
    """One TripoSR per replica, loaded once; `reconstruct` is batched."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        settings = replica_settings(overrides)
        self.model = load_pretrained(settings.tsr_model, settings.device, chunk_size=settings.chunk_size,
                                     num_threads=settings.torch_threads)
        self.queue_name = settings.queue_name
        self.backlog_redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0,
                                                     socket_connect_timeout=2.0)
        self.progress = ProgressRecorder(settings.redis_url)
        self.timer = StageTimer()
        self.chunk_size = settings.chunk_size
        self.extraction = "fast"

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live knobs: max_batch_size, batch_wait_timeout_s, chunk_size, extraction ("fast" | "dense")."""
        self._reconstruct_batch.set_max_batch_size(int(user_config.get("max_batch_size", DEFAULT_BATCH_SIZE)))
        self._reconstruct_batch.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.1)))
        self.chunk_size = int(user_config.get("chunk_size", self.chunk_size))
        self.model.chunk_size = self.chunk_size
        self.extraction = user_config.get("extraction", self.extraction)

    async def reconstruct(self, selected: SelectedImage, resolution: int, job_id: str,
                          color_field: bool = False) -> Reconstructed:
        """One job's mesh (and its colour field when a texture will be baked); raises its Shop3dError."""
        await self.progress.record(job_id, "reconstruct", 20)
        result = await self._reconstruct_batch(selected, resolution, color_field)
        if isinstance(result, Shop3dError):
            raise result
        self.timer.observe("forward", result.forward_s)
        self.timer.observe("extract", result.extract_s)
        image = {"url": selected.url, "index": selected.index, "skipped": list(selected.skipped)}
        return Reconstructed(result, image)

    @serve.batch(max_batch_size=DEFAULT_BATCH_SIZE, batch_wait_timeout_s=0.1)
    async def _reconstruct_batch(self, selected: list[SelectedImage], resolutions: list[int],
                                 color_fields: list[bool]) -> list[Reconstruction | Shop3dError]:
        logger.info("reconstructing a batch of %d", len(selected))
        return await asyncio.to_thread(reconstruct_meshes, self.model, [s.framed for s in selected], resolutions,
                                       method=self.extraction, chunk_size=self.chunk_size, color_fields=color_fields)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The backlog in Redis (jobs nobody has claimed yet), for `backlog_policy`."""
        try:
            return {BACKLOG_METRIC: float(await self.backlog_redis.llen(self.queue_name))}
        except (RedisError, OSError):
            return {}

    def ready(self) -> dict[str, Any]:
        return {"device": str(self.model.device), "autocast": str(self.model.autocast_dtype)}

    async def __del__(self) -> None:
        await self.backlog_redis.aclose()
        await self.progress.aclose()
