"""Native-frame mesh -> the job's files (GLB, poster, QA report, USDZ on request) in storage.

Keys are `{shop}/{product_handle}/{job_id}/{file}` (pipeline.storage.object_key), so a re-run of the
same job overwrites its objects instead of adding new ones. The files follow the job's `formats`, else
the service default (DEFAULT_FORMATS setting).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.assets import DEFAULT_FORMATS, ExportedAssets, export_assets
from pipeline.job import Job
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import get_preset
from pipeline.storage import ObjectStore, StoredObject, object_key
from pipeline.texture import ColorFunction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedModel:
    """Where each asset went (name -> StoredObject), the webhook stats and the stage timings (s)."""

    objects: Mapping[str, StoredObject]
    stats: Mapping[str, Any]
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def asset_urls(self) -> dict[str, str]:
        return {name: stored.url for name, stored in self.objects.items()}


def export_for_job(job: Job, mesh_native: MeshArrays, *, color_fn: ColorFunction | None = None,
                   default_formats: Sequence[str] = DEFAULT_FORMATS,
                   stage_timings: Mapping[str, float] | None = None) -> ExportedAssets:
    """The job's preset, metadata and formats applied to its mesh (CPU work; no I/O)."""
    return export_assets(mesh_native, get_preset(job.quality), job.metadata, job.formats or default_formats,
                         color_fn=color_fn, job_id=job.job_id, stage_timings=stage_timings)


def upload_exported(job: Job, exported: ExportedAssets, store: ObjectStore) -> dict[str, StoredObject]:
    """Upload every file of `exported`; raises the store's TransientError / JobRejected."""
    stored = {}
    for name, asset in exported.files.items():
        stored[name] = store.put(object_key(job, asset.filename), asset.data, asset.content_type)
        logger.info("job %s: uploaded %s (%d bytes)", job.job_id, stored[name].key, stored[name].size)
    return stored


def webhook_stats(exported: ExportedAssets) -> dict[str, Any]:
    """Model stats (faces, glb_bytes, bbox in metres) plus the QA report's summary."""
    return {**exported.stats.to_dict(), **exported.summary}


def publish_mesh(job: Job, mesh_native: MeshArrays, store: ObjectStore, *, color_fn: ColorFunction | None = None,
                 default_formats: Sequence[str] = DEFAULT_FORMATS,
                 stage_timings: Mapping[str, float] | None = None) -> PublishedModel:
    """Export then upload, timing both; blocking (callers on an event loop use asyncio.to_thread)."""
    started = time.perf_counter()
    exported = export_for_job(job, mesh_native, color_fn=color_fn, default_formats=default_formats,
                              stage_timings=stage_timings)
    exported_at = time.perf_counter()
    objects = upload_exported(job, exported, store)
    return PublishedModel(objects=objects, stats=webhook_stats(exported),
                          timings={"export": exported_at - started, "upload": time.perf_counter() - exported_at})
