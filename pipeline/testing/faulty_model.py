"""Device faults injected at the device boundary, for CPU tests: a TripoSR that is the real model (its
modules and weights shared, its own forward and query code) except that the two calls which allocate on
the device raise what CUDA would: torch.OutOfMemoryError past a size, or torch.AcceleratorError once.

    model = FaultyModel(tiny, Faults(forward_oom_from_batch=2))   # every forward of 2+ images runs out
    reconstruct_meshes(model, images, [64] * 4)                   # -> split down to single-image forwards
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from pipeline.model import TripoSR

FaultSite = Literal["forward", "query"]


@dataclass(frozen=True)
class Faults:
    """What fails. None disables a fault; `forward_oom_from_batch=1` makes every forward run out of memory."""

    forward_oom_from_batch: int | None = None   # a forward of this many images or more raises OOM
    query_oom_above: int | None = None          # a point query of more points than this raises OOM
    cuda_fault_once: FaultSite | None = None    # the first call at this site raises a CUDA error


@dataclass
class FaultLog:
    """What the model was asked to do (including the calls that failed), for the tests' assertions."""

    forward_batches: list[int] = field(default_factory=list)
    largest_query: int = 0
    ooms: int = 0
    cuda_faults: int = 0


class FaultyModel(TripoSR):
    """`model`'s own modules (not copies) behind TripoSR's forward and query, with `faults` injected."""

    def __init__(self, model: TripoSR, faults: Faults) -> None:
        nn.Module.__init__(self)   # not TripoSR.__init__: it would build new layers; these are the model's
        self.config = model.config
        self.chunk_size = model.chunk_size
        self.renderer_radius = model.renderer_radius
        self.density_bias = model.density_bias
        self.autocast_dtype = model.autocast_dtype
        self.stored_half = model.stored_half
        for name, module in model.named_children():
            self.add_module(name, module)
        self.train(model.training)
        self.faults = faults
        self.log = FaultLog()
        self._cuda_fault_pending = faults.cuda_fault_once is not None

    def forward(self, images: Tensor) -> Tensor:
        batch = int(images.shape[0])
        self.log.forward_batches.append(batch)
        self._maybe_cuda_fault("forward")
        limit = self.faults.forward_oom_from_batch
        if limit is not None and batch >= limit:
            self.log.ooms += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a forward of {batch} images "
                                         f"(injected: limit {limit})")
        scene_codes: Tensor = super().forward(images)
        return scene_codes

    def query(self, scene_code: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        count = int(points.shape[0])
        self.log.largest_query = max(self.log.largest_query, count)
        self._maybe_cuda_fault("query")
        limit = self.faults.query_oom_above
        if limit is not None and count > limit:
            self.log.ooms += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a query of {count} points "
                                         f"(injected: limit {limit})")
        return super().query(scene_code, points)

    def _maybe_cuda_fault(self, site: FaultSite) -> None:
        if self._cuda_fault_pending and self.faults.cuda_fault_once == site:
            self._cuda_fault_pending = False
            self.log.cuda_faults += 1
            raise torch.AcceleratorError(f"CUDA error: an illegal memory access was encountered (injected at {site})")
