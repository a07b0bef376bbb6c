"""One job in this process, through the same stage functions the Ray Serve graph calls (`pipeline.run.stages`):
prepare -> reconstruct (a batch of one) -> publish. The CLI, the benchmarks and the in-process worker use it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

import httpx

from pipeline.delivery.storage import ObjectStore
from pipeline.errors import Shop3dError
from pipeline.intake.download import DownloadPolicy, make_http_client
from pipeline.intake.selection import BackgroundRemoval, Fetcher, SelectedImage, select_image
from pipeline.jobs.envelopes import Job
from pipeline.jobs.state import JobResult
from pipeline.model import TripoSR
from pipeline.presets import DEFAULT_CHUNK_SIZE
from pipeline.reconstruct import ExtractionMethod, Reconstruction
from pipeline.run import stages
from pipeline.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Intake:
    """What the prepare stage needs, built once per worker: the SSRF-safe client, the matting session and
    limits; `fetch` replaces the downloader (the CLI reads local files through it)."""

    remover: BackgroundRemoval
    http: httpx.AsyncClient
    policy: DownloadPolicy
    max_pixels: int
    fetch: Fetcher | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Intake:
        """Open the matting session named by REMBG_MODEL and an HTTP client with the download policy."""
        from pipeline.intake.matting import BackgroundRemover  # imports rembg (numba): only when really needed

        policy = DownloadPolicy.from_settings(settings)
        return cls(BackgroundRemover(settings.rembg_model), make_http_client(policy), policy,
                   settings.max_image_pixels)

    async def select(self, job: Job) -> SelectedImage:
        """The job's first usable image, framed (stages.SelectImage)."""
        return await select_image(self.http, job.image_urls, self.policy, self.remover, max_pixels=self.max_pixels,
                                  job_id=job.job_id, fetch=self.fetch)

    async def aclose(self) -> None:
        await self.http.aclose()


@dataclass
class Services:
    """The expensive things an in-process worker builds once and hands to every job."""

    model: TripoSR
    intake: Intake
    store: ObjectStore
    defaults: stages.JobDefaults
    chunk_size: int = DEFAULT_CHUNK_SIZE
    extraction: ExtractionMethod = "auto"

    @classmethod
    def from_settings(cls, settings: Settings, *, store: ObjectStore | None = None) -> Services:
        """Load the model and matting session named by the settings (slow: seconds to minutes); `store`
        replaces the one the settings name (the CLI writes into its output directory)."""
        from pipeline.delivery.storage import make_object_store
        from pipeline.model import load_pretrained

        model = load_pretrained(settings.tsr_model, settings.device, chunk_size=settings.chunk_size,
                                num_threads=settings.torch_threads)
        store = store if store is not None else make_object_store(settings)
        store.ensure_ready()
        return cls(model=model, intake=Intake.from_settings(settings), store=store,
                   defaults=stages.JobDefaults.from_settings(settings), chunk_size=settings.chunk_size)

    async def run_batch_of_one(self, request: stages.ReconstructRequest) -> Reconstruction | Shop3dError:
        """stages.RunBatch without Serve: the batched code path with a batch of one, off the event loop."""
        run = functools.partial(stages.reconstruct_batch, self.model, [request], method=self.extraction,
                                chunk_size=self.chunk_size)
        (outcome,) = await asyncio.to_thread(run)
        return outcome

    async def aclose(self) -> None:
        await self.intake.aclose()
        self.store.close()


async def process_job(job: Job, services: Services, progress: stages.ProgressSink = stages.no_progress) -> JobResult:
    """Run `job` through every stage in this process; raises the failing stage's Shop3dError."""
    job = services.defaults.apply(job)
    prepared = await stages.prepare(job, services.intake.select, progress)
    reconstructed = await stages.reconstruct(job, prepared, services.run_batch_of_one, progress)
    result = await stages.publish(job, reconstructed, services.store, progress)
    await progress(*stages.DONE)   # in the graph, the queue's `complete` writes the same stage and percent
    return result
