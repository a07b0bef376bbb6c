"""CPU stage: native mesh -> AR-ready files -> storage (`pipeline.run.stages.publish`)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from deployments.logs import send_project_logs_to_replica_log
from deployments.metrics import StageTimer
from deployments.settings import replica_settings
from pipeline.delivery.storage import StoreReadiness, make_object_store
from pipeline.jobs.envelopes import Job
from pipeline.jobs.log_context import job_logging
from pipeline.jobs.state import JobResult
from pipeline.run import stages
from pipeline.run.progress import ProgressRecorder


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2})
class Publish:
    """One object store client per replica; the bucket is created or checked at start-up. A failed set-up
    (a misconfigured bucket, storage down) keeps the replica up so that ready(), hence /health, says why."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        send_project_logs_to_replica_log()
        self.settings = replica_settings(overrides)
        self.store = make_object_store(self.settings)
        self.storage = StoreReadiness(self.store)
        self.storage.check()
        self.progress = ProgressRecorder(self.settings.redis_url)
        self.timer = StageTimer()

    async def publish(self, job: Job, reconstructed: stages.Reconstructed) -> JobResult:
        with job_logging(job.job_id):
            await asyncio.to_thread(self.storage.require)
            result = await stages.publish(job, reconstructed, self.store, self.progress.for_job(job.job_id))
        timings = result.stats.get("timings_s", {})
        for stage in ("export", "upload"):
            self.timer.observe(stage, timings.get(stage, 0.0))
        return result

    async def ready(self) -> dict[str, Any]:
        return {"store": type(self.store).__name__, **await asyncio.to_thread(self.storage.report)}

    def settings_in_effect(self) -> dict[str, Any]:
        """This replica's non-secret settings, as operators (and the settings test) see them."""
        return self.settings.replica_overrides()

    async def __del__(self) -> None:
        self.store.close()
        await self.progress.aclose()
