"""Failpoints: named places in the job path that fail on purpose for chosen jobs, so tests can drive the same
failure through the in-process runner and through Ray replicas (like etcd's gofail, in a few lines).

    SHOP3D_FAILPOINTS="reconstruct.forward=job-a,job-b;export.budget=job-c"

Read from the environment on every check, so a replica's `runtime_env.env_vars` arms it. Unset (production),
a check is one dict lookup. Points:

    reconstruct.forward   the batched TripoSR forward raises RuntimeError (a model failure)
    reconstruct.surface   extraction runs at an unreachable density threshold (a field with no surface)
    reconstruct.cuda_fault  the batch raises a CUDA-style torch.AcceleratorError (an illegal memory access),
                          once per job on this machine: a marker file in the temp directory records that it
                          fired, so the job's retry, on the replica that replaces the faulty one, succeeds
    export.write          writing the job's files raises RuntimeError (an unexpected export failure)
    export.budget         the preset's byte budgets shrink to 1 byte (a budget the exporter cannot meet)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

import torch

from pipeline.presets import Preset

ENV = "SHOP3D_FAILPOINTS"
POINTS = frozenset({"reconstruct.forward", "reconstruct.surface", "reconstruct.cuda_fault", "export.write",
                    "export.budget"})
NO_SURFACE_THRESHOLD = 1e30   # above any density_act = exp(raw - 1) a float32 field can hold


class InjectedFailure(RuntimeError):
    """Raised at an armed failpoint; deliberately not a Shop3dError, so it takes the unexpected-error path."""


def armed() -> dict[str, frozenset[str]]:
    """point -> job ids, parsed from SHOP3D_FAILPOINTS; ValueError names an unknown point."""
    spec = os.environ.get(ENV, "").strip()
    points: dict[str, frozenset[str]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        name, _, jobs = entry.partition("=")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown failpoint {name!r}; known: {sorted(POINTS)}")
        points[name] = frozenset(job.strip() for job in jobs.split(",") if job.strip())
    return points


def active(point: str, job_id: str) -> bool:
    return job_id in armed().get(point, frozenset())


def hit(point: str, job_id: str) -> None:
    """Raise InjectedFailure when `point` is armed for `job_id`."""
    if active(point, job_id):
        raise InjectedFailure(f"failpoint {point} armed for job {job_id}")


def hit_cuda_fault(job_id: str) -> None:
    """Raise torch.AcceleratorError, as a poisoned CUDA context does, the first time `reconstruct.cuda_fault`
    is checked for `job_id` on this machine (any process); later checks pass."""
    if not active("reconstruct.cuda_fault", job_id):
        return
    marker = Path(tempfile.gettempdir()) / "shop3d-failpoints" / hashlib.sha256(job_id.encode()).hexdigest()[:32]
    marker.parent.mkdir(exist_ok=True)
    try:
        marker.touch(exist_ok=False)   # atomic: exactly one process fires
    except FileExistsError:
        return
    raise torch.AcceleratorError(f"CUDA error: an illegal memory access was encountered "
                                 f"(failpoint reconstruct.cuda_fault armed for job {job_id})")


def threshold_for(job_id: str, threshold: float) -> float:
    """The extraction threshold of this job: `threshold` (the caller's default), or one no field reaches when
    `reconstruct.surface` is armed."""
    return NO_SURFACE_THRESHOLD if active("reconstruct.surface", job_id) else threshold


def unreachable_budget(preset: Preset) -> Preset:
    """`preset` with 1-byte file budgets, for `export.budget`."""
    return dataclasses.replace(preset, max_glb_bytes=1, max_usdz_bytes=1)
