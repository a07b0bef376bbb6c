"""The service's own series on Ray's metrics endpoint (exported with a `ray_` prefix), e.g.
`ray_shop3d_jobs_total{outcome="completed"}`, `ray_shop3d_stage_seconds_bucket{stage="extract"}`,
`ray_shop3d_queue_depth`. Serve adds application/deployment/replica tags itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from ray.serve import metrics

STAGE_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]


class StageTimer:
    """One histogram of seconds per pipeline stage (prepare, forward, extract, export, upload, job)."""

    def __init__(self) -> None:
        self._seconds = metrics.Histogram("shop3d_stage_seconds", description="seconds spent per pipeline stage",
                                          boundaries=STAGE_BOUNDARIES_S, tag_keys=("stage",))

    def observe(self, stage: str, seconds: float) -> None:
        self._seconds.observe(seconds, tags={"stage": stage})

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        """Observe the duration of the `with` block, also when it raises."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - started)


class IngressMetrics:
    """Jobs by outcome, whole-job latency, in-flight jobs, queue depth and dead letters (WorkerMetrics)."""

    def __init__(self) -> None:
        self.stages = StageTimer()
        self._jobs = metrics.Counter("shop3d_jobs_total", description="claims handled, by outcome",
                                     tag_keys=("outcome",))
        self._inflight = metrics.Gauge("shop3d_inflight", description="jobs this ingress replica is running")
        self._queue_depth = metrics.Gauge("shop3d_queue_depth", description="messages waiting in QUEUE_NAME")
        self._dead = metrics.Gauge("shop3d_dead_letters", description="messages on the dead-letter list")

    def job_finished(self, outcome: str, seconds: float) -> None:
        self._jobs.inc(tags={"outcome": outcome.split(":", 1)[0]})
        if outcome in ("completed",) or outcome.startswith("failed"):
            self.stages.observe("job", seconds)

    def inflight_changed(self, inflight: int) -> None:
        self._inflight.set(inflight)

    def queue_observed(self, depth: int, dead_letters: int) -> None:
        self._queue_depth.set(depth)
        self._dead.set(dead_letters)
