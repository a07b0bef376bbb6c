"""The three stages of one job, shared by the in-process runner and the Ray Serve graph.

    prepare(job, select)                    image URLs -> Prepared (the framed picture)   CPU: download, rembg
    reconstruct(job, prepared, run_batch)   -> Reconstructed (native-frame mesh)          GPU: batched TripoSR
    publish(job, reconstructed, store)      mesh -> files -> storage -> JobResult         CPU: export, upload

Both paths call these functions, so a job fails with the same `error.code` and reports the same
(stage, progress) sequence whichever way it runs: one error mapping (`stage_errors`: an unexpected
exception becomes its stage's code) and one progress table (`STAGE_PROGRESS`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipeline.assets.bundle import ExportedAssets, export_assets
from pipeline.assets.formats import OutputFormat
from pipeline.delivery.storage import ObjectStore, StoredObject, object_key
from pipeline.errors import JobRejected, Shop3dError
from pipeline.intake.selection import SelectedImage
from pipeline.jobs.envelopes import Job
from pipeline.jobs.state import JobResult
from pipeline.model import TripoSR
from pipeline.model.device_faults import DeviceHealth, gpu_fault
from pipeline.presets import Preset, get_preset
from pipeline.reconstruct import DEFAULT_THRESHOLD, ExtractionMethod, Reconstruction, reconstruct_meshes
from pipeline.run import failpoints
from pipeline.settings import Quality, Settings

logger = logging.getLogger(__name__)

Stage = Literal["prepare", "reconstruct", "export", "upload"]
# Where each stage starts on the job's 0-100 progress scale (reconstruct dominates on a CPU); `done` is 100.
STAGE_PROGRESS: dict[Stage, int] = {"prepare": 5, "reconstruct": 20, "export": 80, "upload": 90}
DONE = ("done", 100)  # what a completed job's state says (jobs.state.completed_fields)
# The code of an exception a stage did not expect (Shop3dErrors keep their own code).
UNEXPECTED_CODE: dict[Stage, str] = {"prepare": "internal_error", "reconstruct": "model_failed",
                                     "export": "export_failed", "upload": "storage_failed"}

ProgressSink = Callable[[str, int], Awaitable[None]]
"""(stage, percent) -> awaitable; the graph writes Redis job state, the CLI moves a progress bar."""


async def no_progress(stage: str, percent: int) -> None:
    """A ProgressSink for callers that do not report progress."""


def stage_error(stage: Stage, exc: BaseException, job_id: str) -> Shop3dError:
    """`exc` as this stage's Shop3dError; the message of an unknown exception names its type only (no secrets)."""
    if isinstance(exc, Shop3dError):
        return exc
    logger.error("job %s: unexpected %s in stage %s", job_id, type(exc).__name__, stage, exc_info=exc)
    return JobRejected(UNEXPECTED_CODE[stage], f"{stage} failed: unexpected {type(exc).__name__}")


@contextmanager
def stage_errors(stage: Stage, job_id: str) -> Iterator[None]:
    """Let Shop3dErrors through; raise anything else as the stage's code, chained to the original."""
    try:
        yield
    except Shop3dError:
        raise
    except Exception as exc:
        raise stage_error(stage, exc, job_id) from exc


async def enter_stage(progress: ProgressSink, stage: Stage) -> None:
    await progress(stage, STAGE_PROGRESS[stage])


@dataclass(frozen=True)
class JobDefaults:
    """What a job that names no quality or formats gets (DEFAULT_QUALITY, DEFAULT_FORMATS); applied once,
    where a job enters the job path, so every stage sees a complete job."""

    quality: Quality
    formats: tuple[OutputFormat, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> JobDefaults:
        return cls(settings.default_quality, tuple(settings.default_formats))

    def apply(self, job: Job) -> Job:
        return job.model_copy(update={"quality": job.quality or self.quality, "formats": job.formats or self.formats})


def preset_of(job: Job) -> Preset:
    """The job's preset; a job must have passed JobDefaults.apply first."""
    if job.quality is None:
        raise ValueError(f"job {job.job_id}: no quality; JobDefaults.apply was skipped")
    return get_preset(job.quality)


# ----- prepare ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """The chosen picture and the prepare stage's seconds."""

    image: SelectedImage
    seconds: float

    def image_record(self) -> dict[str, Any]:
        """Which URL was used and why earlier ones were skipped (no pixels): the result's `image` stat."""
        return {"url": self.image.url, "index": self.image.index, "skipped": list(self.image.skipped)}


SelectImage = Callable[[Job], Awaitable[SelectedImage]]


async def prepare(job: Job, select: SelectImage, progress: ProgressSink = no_progress) -> Prepared:
    """Download, matte and frame the job's first usable image (`select` is intake.select_image, bound)."""
    await enter_stage(progress, "prepare")
    started = time.perf_counter()
    with stage_errors("prepare", job.job_id):
        image = await select(job)
    return Prepared(image, time.perf_counter() - started)


# ----- reconstruct -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReconstructRequest:
    """One image of a reconstruct batch: the framed pixels, its preset's resolution, whether a texture bake
    will need the colour field, and the job it belongs to (for logs and failpoints)."""

    job_id: str
    framed: np.ndarray
    resolution: int
    color_field: bool

    @classmethod
    def of(cls, job: Job, prepared: Prepared) -> ReconstructRequest:
        preset = preset_of(job)
        return cls(job.job_id, prepared.image.framed, preset.mc_resolution, preset.texture_size > 0)


@dataclass(frozen=True)
class Reconstructed:
    """What publish needs: the mesh with its colour field and costs, and the stage timings so far."""

    reconstruction: Reconstruction
    image: dict[str, Any]
    timings: Mapping[str, float] = field(default_factory=dict)


def reconstruct_batch(model: TripoSR, requests: Sequence[ReconstructRequest], *, method: ExtractionMethod,
                      chunk_size: int, health: DeviceHealth | None = None) -> list[Reconstruction | Shop3dError]:
    """One batched forward and an extraction per request; every failure is returned as its job's error,
    never raised (pipeline.reconstruct.reconstruct_meshes says which). A replica whose `health` a CUDA fault
    marked refuses the batch with retried `gpu_fault`s without touching its device."""
    if not requests:
        return []
    if health is not None and not health.healthy:
        logger.warning("refusing a batch of %d on a faulty device (jobs %s)", len(requests),
                       ", ".join(r.job_id for r in requests))
        return [gpu_fault("an earlier batch on this replica") for _ in requests]
    try:
        for request in requests:
            failpoints.hit("reconstruct.forward", request.job_id)
            failpoints.hit_cuda_fault(request.job_id)
        thresholds = [failpoints.threshold_for(request.job_id, DEFAULT_THRESHOLD) for request in requests]
        return reconstruct_meshes(model, [r.framed for r in requests], [r.resolution for r in requests],
                                  method=method, chunk_size=chunk_size, thresholds=thresholds,
                                  color_fields=[r.color_field for r in requests], health=health,
                                  job_ids=[r.job_id for r in requests])
    except Exception as exc:
        logger.error("a reconstruct batch of %d failed (jobs %s)", len(requests),
                     ", ".join(r.job_id for r in requests))
        health = health if health is not None else DeviceHealth(model.device)
        return [health.note(exc, "the batch") or stage_error("reconstruct", exc, request.job_id)
                for request in requests]


RunBatch = Callable[[ReconstructRequest], Awaitable["Reconstruction | Shop3dError"]]


async def reconstruct(job: Job, prepared: Prepared, run_batch: RunBatch,
                      progress: ProgressSink = no_progress) -> Reconstructed:
    """The job's mesh through `run_batch` (the Serve batcher, or `reconstruct_batch` of one in-process)."""
    await enter_stage(progress, "reconstruct")
    with stage_errors("reconstruct", job.job_id):
        outcome = await run_batch(ReconstructRequest.of(job, prepared))
    if isinstance(outcome, Shop3dError):
        raise outcome
    logger.info("job %s: %d faces (forward %.2fs, extract %.2fs, %d points queried)", job.job_id,
                outcome.mesh.n_faces, outcome.forward_s, outcome.extract_s, outcome.points_queried)
    timings = {"prepare": prepared.seconds, "forward": outcome.forward_s, "extract": outcome.extract_s}
    return Reconstructed(outcome, prepared.image_record(), timings)


# ----- publish ---------------------------------------------------------------------------------------

def export_for_job(job: Job, reconstructed: Reconstructed) -> ExportedAssets:
    """The job's preset, metadata and formats applied to its mesh (CPU work; no I/O)."""
    failpoints.hit("export.write", job.job_id)
    preset = preset_of(job)
    if failpoints.active("export.budget", job.job_id):
        preset = failpoints.unreachable_budget(preset)
    recon = reconstructed.reconstruction
    return export_assets(recon.mesh, preset, job.metadata, job.formats,
                         color_fn=recon.color_field, job_id=job.job_id, stage_timings=reconstructed.timings)


def upload_exported(job: Job, exported: ExportedAssets, store: ObjectStore) -> dict[str, StoredObject]:
    """Upload every file of `exported` under the job's keys (a re-run overwrites); raises the store's errors."""
    stored = {}
    for name, asset in exported.files.items():
        stored[name] = store.put(object_key(job, asset.filename), asset.data, asset.content_type)
        logger.info("job %s: uploaded %s (%d bytes)", job.job_id, stored[name].key, stored[name].size)
    return stored


async def publish(job: Job, reconstructed: Reconstructed, store: ObjectStore,
                  progress: ProgressSink = no_progress) -> JobResult:
    """Export then upload; the result carries asset URLs, mesh and QA stats, timings and the image used."""
    await enter_stage(progress, "export")
    started = time.perf_counter()
    with stage_errors("export", job.job_id):
        exported = await asyncio.to_thread(export_for_job, job, reconstructed)
    export_s = time.perf_counter() - started

    await enter_stage(progress, "upload")
    started = time.perf_counter()
    with stage_errors("upload", job.job_id):
        objects = await asyncio.to_thread(upload_exported, job, exported, store)
    timings = {**reconstructed.timings, "export": export_s, "upload": time.perf_counter() - started}
    logger.info("job %s: done in %.2fs (%s)", job.job_id, sum(timings.values()),
                ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    stats = {"quality": job.quality, "formats": list(job.formats or ()), **exported.stats.to_dict(), **exported.summary,
             "timings_s": {k: round(v, 3) for k, v in timings.items()}, "image": reconstructed.image}
    return JobResult(assets={name: stored.url for name, stored in objects.items()}, stats=stats)
