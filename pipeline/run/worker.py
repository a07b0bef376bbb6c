"""The consumer loop: claim jobs from the reliable queue, run them with bounded concurrency, report.

`JobWorker` is what the Ray Serve ingress runs in the background (deployments/ingress.py) and what the
tests drive without Ray. How a job is executed is injected: in-process (`process_job`) or through the
deployment graph (`deployments/ingress.py` chains DeploymentHandles). Every claim ends in exactly one
of: complete (after the result and webhook are recorded), retry later, dead-letter (+ `failed`
webhook), or hand-back on shutdown; the queue decides retry vs dead-letter (`ReliableQueue.fail`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.delivery.reporting import JobIdentity, JobReporter
from pipeline.errors import error_from_exception
from pipeline.jobs.envelopes import Job
from pipeline.jobs.log_context import job_logging
from pipeline.jobs.state import JobResult
from pipeline.queue.consumer import Claim, ClaimLost, ReliableQueue

logger = logging.getLogger(__name__)

Execute = Callable[[Job], Awaitable[JobResult]]


class WorkerMetrics(Protocol):
    """What the worker reports (deployments/metrics.py implements it with ray.serve.metrics)."""

    def job_finished(self, outcome: str, seconds: float) -> None: ...
    def inflight_changed(self, inflight: int) -> None: ...


class _NoMetrics:
    def job_finished(self, outcome: str, seconds: float) -> None:
        pass

    def inflight_changed(self, inflight: int) -> None:
        pass


@dataclass
class JobWorker:
    """Runs `execute` on claimed jobs, at most `max_inflight` at once (the claim waits for a free slot,
    so the Redis backlog, not this process, holds the excess)."""

    queue: ReliableQueue
    execute: Execute
    reporter: JobReporter
    max_inflight: int = 4
    metrics: WorkerMetrics = field(default_factory=_NoMetrics)

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._slots = asyncio.Semaphore(self.max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def start(self) -> None:
        """Start claiming in the background (the queue must be started)."""
        self._loop_task = asyncio.create_task(self._claim_loop(), name="shop3d-claim-loop")

    def check_health(self) -> None:
        """Raise when the claim loop or a queue background loop has died (Serve then restarts us)."""
        if self._loop_task is None or self._loop_task.done():
            cause = None if self._loop_task is None or self._loop_task.cancelled() else self._loop_task.exception()
            raise RuntimeError(f"claim loop is not running ({type(cause).__name__ if cause else 'stopped'})")
        self.queue.check_health()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop claiming, let running jobs finish for `drain_timeout_s`, cancel the rest, hand them back."""
        self._stopping.set()
        if self._loop_task is not None:
            await asyncio.wait({self._loop_task}, timeout=self.queue.config.block_s + 5.0)
            self._loop_task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        await self.queue.stop()        # hands back every claim that did not settle
        await self.reporter.aclose()

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                claim = await self.queue.claim()
            except BaseException:
                self._slots.release()
                raise
            if claim is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._handle(claim), name=f"job-{claim.job_id}")
            self._tasks.add(task)
            self.metrics.inflight_changed(len(self._tasks))
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        self.metrics.inflight_changed(len(self._tasks))

    async def _handle(self, claim: Claim) -> None:
        with job_logging(claim.job_id or "unknown"):
            await self._settle(claim)

    async def _settle(self, claim: Claim) -> None:
        started = time.perf_counter()
        outcome = "skipped"
        try:
            if claim.rejection is not None:       # already dead-lettered by the queue
                outcome = "dead_lettered"
                await self.reporter.failed(_identity(claim), claim.rejection, claim.attempt)
            elif claim.runnable and claim.job is not None:
                outcome = await self._run(claim, claim.job)
        except ClaimLost:
            outcome = "lost"
            logger.warning("job %s: claim lost (heartbeat lapsed); another consumer will run it", claim.job_id)
        except asyncio.CancelledError:
            outcome = "handed_back"
            raise
        except Exception:
            outcome = "error"
            logger.exception("job %s: could not settle; the reaper will hand it back", claim.job_id)
        finally:
            self.metrics.job_finished(outcome, time.perf_counter() - started)

    async def _run(self, claim: Claim, job: Job) -> str:
        """One attempt; however it ends (a retry, a lost claim, a hand-back too) its `processing` news is stale."""
        try:
            return await self._attempt(claim, job)
        finally:
            self.reporter.supersede_processing(job.job_id)

    async def _attempt(self, claim: Claim, job: Job) -> str:
        """Execute (unless a previous attempt already did), report, ack; failures go to `queue.fail`."""
        try:
            result = await self.reporter.recorded_result(job.job_id)
            if result is None:
                self.reporter.processing(job, claim.attempt)
                result = await self.execute(job)
                await self.reporter.record_result(job.job_id, result)
            else:
                logger.info("job %s: result recorded by an earlier attempt; only reporting it", job.job_id)
            await self.reporter.completed(job, result, claim.attempt)
        except (ClaimLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            error = error_from_exception(exc)
            if await self.queue.fail(claim, exc) == "retry_scheduled":
                return "retry_scheduled"
            await self.reporter.failed(JobIdentity.of(job), error, claim.attempt)
            return f"failed:{error.code}"
        await self.queue.complete(claim, result)
        return "completed"


def _identity(claim: Claim) -> JobIdentity:
    """The best identity of a rejected claim: its job, else its recovered id, else a digest of the bytes."""
    if claim.job is not None:
        return JobIdentity.of(claim.job)
    return JobIdentity(claim.job_id or "unknown-" + hashlib.sha256(claim.raw).hexdigest()[:16])
