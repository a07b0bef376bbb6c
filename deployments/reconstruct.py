"""GPU stage: framed photo -> native-frame mesh, batched across jobs, on a fractional GPU (or the CPU).

`@serve.batch` gathers concurrent requests into one TripoSR forward (max_ongoing_requests must be at
least the batch size, or batches stay at 1); batch size, wait, chunk size and extraction method are
live-tunable through `user_config`, validated whole before any is applied (a bad one is
refused). Each replica also reports the Redis backlog as a custom autoscaling metric, which
`deployments.autoscaling.backlog_policy` turns into a replica count.

At start a replica caps its CUDA allocator at its `num_gpus` share less headroom and warms up
(`pipeline.reconstruct.warm_start`); `check_health` fails once a CUDA fault has poisoned its device, so
Serve replaces it (pipeline.model.device_faults).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import ray
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from redis.exceptions import RedisError

from deployments.autoscaling import BACKLOG_METRIC
from deployments.logs import send_project_logs_to_replica_log
from deployments.metrics import StageTimer
from deployments.settings import replica_settings
from pipeline.errors import Shop3dError
from pipeline.isosurface.extraction import ExtractionMethod
from pipeline.jobs.envelopes import Job
from pipeline.jobs.log_context import job_logging
from pipeline.model import load_pretrained
from pipeline.model.device_faults import DeviceHealth
from pipeline.presets import DEFAULT_CHUNK_SIZE
from pipeline.reconstruct import Reconstruction, warm_start
from pipeline.run import stages
from pipeline.run.progress import ProgressRecorder

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4
DEFAULT_BATCH_WAIT_S = 0.1


class LiveKnobs(BaseModel):
    """Reconstruct's `user_config`; an unknown key or a bad value refuses the whole config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_S, ge=0)
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=0, description="points per decoder call; 0 = unchunked")
    extraction: ExtractionMethod = "auto"   # auto: "gpu" on CUDA where Warp imports, else "fast"


def assigned_gpus() -> float:
    """This replica's GPU share as Ray assigned it from `ray_actor_options.num_gpus` (0.25; 0 without a GPU)."""
    resources: dict[str, float] = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
    return float(resources.get("GPU", 0.0))


@serve.deployment(ray_actor_options={"num_gpus": 0.25, "num_cpus": 1}, max_ongoing_requests=8,
                  # Serve replaces a replica after 3 failed checks in a row; until then a poisoned one refuses
                  # jobs (each refusal costs its job an attempt), so check often: the probe is one tiny op.
                  health_check_period_s=2,
                  user_config={"max_batch_size": DEFAULT_BATCH_SIZE, "batch_wait_timeout_s": DEFAULT_BATCH_WAIT_S})
class Reconstruct:
    """One TripoSR per replica, loaded once; `reconstruct` is batched."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        send_project_logs_to_replica_log()
        self.settings = settings = replica_settings(overrides)
        self.model = load_pretrained(settings.tsr_model, settings.device, chunk_size=settings.chunk_size,
                                     num_threads=settings.torch_threads)
        self.health = DeviceHealth(self.model.device)
        self.warm = warm_start(self.model, assigned_gpus())
        self.backlog_redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0,
                                                     socket_connect_timeout=2.0)
        self.progress = ProgressRecorder(settings.redis_url)
        self.timer = StageTimer()
        self.knobs = LiveKnobs(chunk_size=settings.chunk_size)
        self.refused: str | None = None   # why the last user_config was refused, if it was

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply live knobs (chunk_size defaults to the CHUNK_SIZE setting), validated whole first.

        A bad config is refused and never raises: Serve would stop the replica (and fail its jobs) or a new
        replica would not start. The replica keeps its knobs, logs the refusal and reports it in `ready()`
        (so /health shows it); `serve_config.yaml`'s knobs are checked against LiveKnobs by the tests.
        """
        try:
            knobs = LiveKnobs(**{"chunk_size": self.settings.chunk_size, **user_config})
        except ValidationError as exc:
            self.refused = f"user_config {user_config!r} refused: {exc.errors(include_url=False)}"
            logger.error("Reconstruct keeps %s; %s", self.knobs.model_dump(), self.refused)
            return
        batcher: Any = self._reconstruct_batch   # serve.batch's wrapper; its stub is the wrapped coroutine
        batcher.set_max_batch_size(knobs.max_batch_size)
        batcher.set_batch_wait_timeout_s(knobs.batch_wait_timeout_s)
        self.model.chunk_size = knobs.chunk_size
        self.knobs, self.refused = knobs, None

    async def reconstruct(self, job: Job, prepared: stages.Prepared) -> stages.Reconstructed:
        """One job's mesh (and its colour field when a texture will be baked); raises its Shop3dError."""
        with job_logging(job.job_id):
            reconstructed = await stages.reconstruct(job, prepared, self._reconstruct_batch,
                                                     self.progress.for_job(job.job_id))
        self.timer.observe("forward", reconstructed.reconstruction.forward_s)
        self.timer.observe("extract", reconstructed.reconstruction.extract_s)
        return reconstructed

    @serve.batch(max_batch_size=DEFAULT_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _reconstruct_batch(self, requests: list[stages.ReconstructRequest]
                                 ) -> list[Reconstruction | Shop3dError]:
        # The batch runs in Serve's batching task, outside any one request: its lines name all its jobs.
        with job_logging(",".join(r.job_id for r in requests)):
            logger.info("reconstructing a batch of %d (jobs %s)", len(requests),
                        ", ".join(r.job_id for r in requests))
            knobs = self.knobs
            run = functools.partial(stages.reconstruct_batch, self.model, requests, method=knobs.extraction,
                                    chunk_size=knobs.chunk_size, health=self.health)
            return await asyncio.to_thread(run)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The backlog in Redis (jobs nobody has claimed yet), for `backlog_policy`."""
        try:
            return {BACKLOG_METRIC: float(await self.backlog_redis.llen(self.settings.queue_name))}
        except (RedisError, OSError):
            return {}

    async def check_health(self) -> None:
        """Raises (Serve then replaces the replica) once a CUDA fault marked the device faulty, or when a tiny
        op on it fails; in a thread, since its sync waits for the running batch's queued kernels."""
        await asyncio.to_thread(self.health.probe)

    def ready(self) -> dict[str, Any]:
        return {"device": str(self.model.device), "autocast": str(self.model.autocast_dtype),
                "knobs": self.knobs.model_dump(), "knobs_refused": self.refused,
                "memory_fraction": self.warm.memory_fraction, "warmup_s": round(self.warm.warmup_s, 3),
                "device_fault": self.health.fault}

    def settings_in_effect(self) -> dict[str, Any]:
        """This replica's non-secret settings, as operators (and the settings test) see them."""
        return self.settings.replica_overrides()

    async def __del__(self) -> None:
        await self.backlog_redis.aclose()
        await self.progress.aclose()
