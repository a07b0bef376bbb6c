"""One job, in-process, through every stage: prepare (download, matting, framing) -> reconstruct ->
export -> upload. The CLI and the benchmarks call it; the Ray Serve graph runs the same stage
functions in separate deployments.

Progress is reported as (stage, percent) through an optional callback; per-stage timings are returned
and every failure leaves as a Shop3dError whose code names what went wrong (unexpected exceptions are
mapped per stage: reconstruct -> model_failed, export -> export_failed, upload -> storage_failed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.download import DownloadPolicy, make_http_client
from pipeline.errors import JobRejected, Shop3dError
from pipeline.intake import BackgroundRemoval, Fetcher, SelectedImage, select_image
from pipeline.job import Job
from pipeline.mesh import ExtractionMethod
from pipeline.model import TripoSR
from pipeline.presets import get_preset
from pipeline.publish import PublishedModel, export_for_job, upload_exported, webhook_stats
from pipeline.reconstruct import Reconstruction, reconstruct_mesh
from pipeline.settings import Settings
from pipeline.storage import ObjectStore

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int], Awaitable[None] | None]

# Where each stage starts on the 0-100 progress scale (reconstruct dominates on a CPU).
STAGE_START = {"prepare": 0, "reconstruct": 20, "export": 80, "upload": 90, "done": 100}
_UNEXPECTED_CODE = {"prepare": "internal_error", "reconstruct": "model_failed", "export": "export_failed",
                    "upload": "storage_failed"}


@dataclass
class Services:
    """The expensive things a worker builds once (model, matting session, HTTP client, store) and
    hands to every job."""

    model: TripoSR
    remover: BackgroundRemoval
    http: httpx.AsyncClient
    download_policy: DownloadPolicy
    store: ObjectStore
    max_pixels: int = 40_000_000
    chunk_size: int = 65536
    extraction: ExtractionMethod = "fast"
    fetch: Fetcher | None = None  # None: the SSRF-safe downloader; the CLI adds local files
    default_formats: tuple[str, ...] = ("glb", "poster", "report")

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        """Load the model and the matting session named by the settings (slow: seconds to minutes)."""
        from pipeline.matting import BackgroundRemover  # imports rembg (numba): only when really needed
        from pipeline.model import load_pretrained
        from pipeline.storage import make_object_store

        model = load_pretrained(settings.tsr_model, settings.device, chunk_size=settings.chunk_size,
                                num_threads=settings.torch_threads)
        policy = DownloadPolicy.from_settings(settings)
        store = make_object_store(settings)
        store.ensure_ready()
        return cls(model=model, remover=BackgroundRemover(settings.rembg_model), http=make_http_client(policy),
                   download_policy=policy, store=store, max_pixels=settings.max_image_pixels,
                   chunk_size=settings.chunk_size, default_formats=settings.default_formats)

    async def aclose(self) -> None:
        await self.http.aclose()
        self.store.close()


@dataclass(frozen=True)
class JobOutput:
    """What one job produced: the stored assets and stats, the image used (and why others were
    skipped), and seconds per stage."""

    published: PublishedModel
    image: SelectedImage
    timings: Mapping[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: assets, stats, timings, image used / skipped (the CLI's summary.json)."""
        return {"assets": self.published.asset_urls, "stats": dict(self.published.stats),
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
                "image": {"url": self.image.url, "index": self.image.index, "skipped": list(self.image.skipped)}}


@contextmanager
def stage_errors(stage: str, job_id: str) -> Iterator[None]:
    """Let Shop3dErrors through; turn anything else into the stage's code (message names the type only)."""
    try:
        yield
    except Shop3dError:
        raise
    except Exception as exc:
        logger.exception("job %s: unexpected failure in stage %s", job_id, stage)
        raise JobRejected(_UNEXPECTED_CODE[stage], f"{stage} failed: unexpected {type(exc).__name__}") from exc


async def _report(on_progress: ProgressCallback | None, stage: str, percent: int | None = None) -> None:
    if on_progress is None:
        return
    outcome = on_progress(stage, STAGE_START[stage] if percent is None else percent)
    if outcome is not None:
        await outcome


async def process_job(job: Job, services: Services, *, on_progress: ProgressCallback | None = None) -> JobOutput:
    """Run `job` through all stages in this process; raises a Shop3dError with the failing stage's code."""
    timings: dict[str, float] = {}
    preset = get_preset(job.quality)

    await _report(on_progress, "prepare")
    started = time.perf_counter()
    with stage_errors("prepare", job.job_id):
        image = await select_image(services.http, job.image_urls, services.download_policy, services.remover,
                                   max_pixels=services.max_pixels, job_id=job.job_id, fetch=services.fetch)
    timings["prepare"] = time.perf_counter() - started

    await _report(on_progress, "reconstruct")
    with stage_errors("reconstruct", job.job_id):
        reconstruction: Reconstruction = await asyncio.to_thread(
            reconstruct_mesh, services.model, image.framed, preset.mc_resolution,
            method=services.extraction, chunk_size=services.chunk_size, color_field=preset.texture_size > 0)
    timings["forward"], timings["extract"] = reconstruction.forward_s, reconstruction.extract_s
    logger.info("job %s: %d faces at %d^3 (forward %.2fs, extract %.2fs, %d points queried)", job.job_id,
                reconstruction.mesh.n_faces, preset.mc_resolution, reconstruction.forward_s, reconstruction.extract_s,
                reconstruction.points_queried)

    await _report(on_progress, "export")
    started = time.perf_counter()
    with stage_errors("export", job.job_id):
        exported = await asyncio.to_thread(export_for_job, job, reconstruction.mesh,
                                           color_fn=reconstruction.color_field,
                                           default_formats=services.default_formats, stage_timings=dict(timings))
    timings["export"] = time.perf_counter() - started

    await _report(on_progress, "upload")
    started = time.perf_counter()
    with stage_errors("upload", job.job_id):
        objects = await asyncio.to_thread(upload_exported, job, exported, services.store)
    timings["upload"] = time.perf_counter() - started

    await _report(on_progress, "done")
    published = PublishedModel(objects=objects, stats=webhook_stats(exported), timings=dict(timings))
    logger.info("job %s: done in %.2fs (%s)", job.job_id, sum(timings.values()),
                ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return JobOutput(published=published, image=image, timings=timings)
