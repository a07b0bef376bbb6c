"""CPU stage: a job's image URLs -> the framed picture the model sees (download, rembg, framing)."""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.metrics import StageTimer
from deployments.progress import ProgressRecorder
from deployments.settings import replica_settings
from pipeline.download import DownloadPolicy, make_http_client
from pipeline.intake import SelectedImage, select_image
from pipeline.job import Job
from pipeline.matting import BackgroundRemover


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2})
class Matting:
    """One rembg session and one SSRF-safe HTTP client per replica."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        settings = replica_settings(overrides)
        self.remover = BackgroundRemover(settings.rembg_model)
        self.policy = DownloadPolicy.from_settings(settings)
        self.http = make_http_client(self.policy)
        self.max_pixels = settings.max_image_pixels
        self.progress = ProgressRecorder(settings.redis_url)
        self.timer = StageTimer()

    async def prepare(self, job: Job) -> SelectedImage:
        await self.progress.record(job.job_id, "prepare", 5)
        with self.timer.timing("prepare"):
            return await select_image(self.http, job.image_urls, self.policy, self.remover,
                                      max_pixels=self.max_pixels, job_id=job.job_id)

    def ready(self) -> dict[str, Any]:
        return {"rembg_model": self.remover.model}

    async def __del__(self) -> None:
        await self.http.aclose()
        await self.progress.aclose()

