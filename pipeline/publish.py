"""Native-frame mesh -> AR-ready files in storage: export (CPU) then upload under the job's keys.

Keys are `{shop}/{product_handle}/{job_id}/{file}` (pipeline.storage.object_key), so a re-run of the
same job overwrites its objects instead of adding new ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.export import ExportedModel, export_model
from pipeline.job import Job
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import get_preset
from pipeline.storage import ObjectStore, StoredObject, object_key

logger = logging.getLogger(__name__)

GLB_CONTENT_TYPE = "model/gltf-binary"


@dataclass(frozen=True)
class PublishedModel:
    """Where each asset went (name -> StoredObject), the model's stats and the stage timings (s)."""

    objects: Mapping[str, StoredObject]
    stats: Mapping[str, Any]
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def asset_urls(self) -> dict[str, str]:
        return {name: stored.url for name, stored in self.objects.items()}


def export_for_job(job: Job, mesh_native: MeshArrays) -> ExportedModel:
    """The job's preset and metadata applied to its mesh (pure CPU work; no I/O)."""
    return export_model(mesh_native, get_preset(job.quality), job.metadata, job_id=job.job_id)


def upload_exported(job: Job, exported: ExportedModel, store: ObjectStore) -> dict[str, StoredObject]:
    """Upload every file of `exported`; raises the store's TransientError / JobRejected."""
    stored = store.put(object_key(job, "model.glb"), exported.glb, GLB_CONTENT_TYPE)
    logger.info("job %s: uploaded %s (%d bytes)", job.job_id, stored.key, stored.size)
    return {"glb": stored}


def publish_mesh(job: Job, mesh_native: MeshArrays, store: ObjectStore) -> PublishedModel:
    """Export then upload, timing both; blocking (callers on an event loop use asyncio.to_thread)."""
    started = time.perf_counter()
    exported = export_for_job(job, mesh_native)
    exported_at = time.perf_counter()
    objects = upload_exported(job, exported, store)
    return PublishedModel(objects=objects, stats=exported.stats.to_dict(),
                          timings={"export": exported_at - started, "upload": time.perf_counter() - exported_at})
