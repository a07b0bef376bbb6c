"""CPU stage: native mesh -> AR-ready files -> storage; returns what the webhook and job state report."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from deployments.metrics import StageTimer
from deployments.progress import ProgressRecorder
from deployments.reconstruct import Reconstructed
from deployments.settings import replica_settings
from pipeline.job import Job
from pipeline.job_state import JobResult
from pipeline.publish import publish_mesh
from pipeline.storage import make_object_store


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2})
class Publish:
    """One object store client per replica; the bucket is created (idempotently) at start-up."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        settings = replica_settings(overrides)
        self.store = make_object_store(settings)
        self.store.ensure_ready()
        self.default_formats = settings.default_formats
        self.progress = ProgressRecorder(settings.redis_url)
        self.timer = StageTimer()

    async def publish(self, job: Job, reconstructed: Reconstructed) -> JobResult:
        await self.progress.record(job.job_id, "export", 80)
        recon = reconstructed.reconstruction
        earlier = {"forward": recon.forward_s, "extract": recon.extract_s}
        published = await asyncio.to_thread(publish_mesh, job, recon.mesh, self.store, color_fn=recon.color_field,
                                            default_formats=self.default_formats, stage_timings=earlier)
        for stage, seconds in published.timings.items():
            self.timer.observe(stage, seconds)
        timings = {**earlier, **published.timings}
        stats = {**published.stats, "timings_s": {k: round(v, 3) for k, v in timings.items()},
                 "image": reconstructed.image}
        return JobResult(assets=published.asset_urls, stats=stats)

    def ready(self) -> dict[str, Any]:
        return {"store": type(self.store).__name__}

    async def __del__(self) -> None:
        self.store.close()
        await self.progress.aclose()
