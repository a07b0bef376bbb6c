"""CPU stage: a job's image URLs -> the framed picture the model sees (`pipeline.run.stages.prepare`)."""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.logs import send_project_logs_to_replica_log
from deployments.metrics import StageTimer
from deployments.settings import replica_settings
from pipeline.jobs.envelopes import Job
from pipeline.jobs.log_context import job_logging
from pipeline.run import stages
from pipeline.run.progress import ProgressRecorder
from pipeline.run.runner import Intake


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2})
class Matting:
    """One rembg session and one SSRF-safe HTTP client per replica."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        send_project_logs_to_replica_log()
        self.settings = replica_settings(overrides)
        self.intake = Intake.from_settings(self.settings)
        self.progress = ProgressRecorder(self.settings.redis_url)
        self.timer = StageTimer()

    async def prepare(self, job: Job) -> stages.Prepared:
        with job_logging(job.job_id):
            prepared = await stages.prepare(job, self.intake.select, self.progress.for_job(job.job_id))
        self.timer.observe("prepare", prepared.seconds)
        return prepared

    def ready(self) -> dict[str, Any]:
        return {"rembg_model": self.settings.rembg_model}

    def settings_in_effect(self) -> dict[str, Any]:
        """This replica's non-secret settings, as operators (and the settings test) see them."""
        return self.settings.replica_overrides()

    async def __del__(self) -> None:
        await self.intake.aclose()
        await self.progress.aclose()
