"""The ingress: polls the backend's Redis list in the background and drives each job through the
graph (matting -> reconstruct -> publish, each hop awaited, so a lost replica fails its own hop); HTTP
routes for health, job state; the operator API (enqueueing too) and console come from pipeline.console.api.

The claim loop is `pipeline.run.worker.JobWorker`; this file only wires it to DeploymentHandles, Ray
metrics and FastAPI. Redis being down at start-up is not a constructor failure (Serve would give up
after a few retries): the loop connects with backoff, and /health reports it.
"""

# No `from __future__ import annotations`: FastAPI must see real types on the routes.
import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from redis.exceptions import RedisError

from deployments.logs import send_project_logs_to_replica_log
from deployments.metrics import IngressMetrics
from deployments.remote_errors import raise_sorted
from deployments.settings import replica_settings
from pipeline.console.api import ConsoleContext, install
from pipeline.console.api import router as console_router
from pipeline.delivery.reporting import JobReporter
from pipeline.delivery.webhooks import WebhookSender
from pipeline.errors import TransientError
from pipeline.jobs.envelopes import Job
from pipeline.jobs.state import JobResult, get_job_state
from pipeline.queue.consumer import (
    QueueConfig,
    ReliableQueue,
    connect,
    dead_letter_count,
    default_consumer_id,
    queue_depth,
)
from pipeline.run.stages import JobDefaults
from pipeline.run.worker import JobWorker

logger = logging.getLogger(__name__)

api = FastAPI(title="shop3d", description="Product photos to AR-ready 3D models")
api.include_router(console_router)
OBSERVE_INTERVAL_S = 5.0


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, health_check_period_s=5,
                  graceful_shutdown_timeout_s=60)
@serve.ingress(api)
class Ingress:
    """One claim loop per replica (more replicas are safe: per-replica processing lists + job locks)."""

    async def __init__(self, matting: DeploymentHandle[Any], reconstruct: DeploymentHandle[Any],  # type: ignore[misc]
                       publish: DeploymentHandle[Any], overrides: dict[str, Any]) -> None:
        # (Serve awaits an async constructor; mypy knows __init__ only as sync.)
        send_project_logs_to_replica_log()
        self.settings = settings = replica_settings(overrides)
        self.matting, self.reconstruct, self.publish = matting, reconstruct, publish
        self.defaults = JobDefaults.from_settings(settings)
        self.metrics = IngressMetrics()
        config = QueueConfig(max_attempts=settings.max_attempts, heartbeat_ttl_s=settings.heartbeat_ttl_s,
                             reap_interval_s=max(0.5, settings.heartbeat_ttl_s / 3), retry_base_s=settings.retry_base_s)
        self.redis = connect(settings.redis_url, config)
        sender = (WebhookSender(settings.webhook_url, settings.webhook_secret,
                                max_attempts=settings.webhook_max_attempts) if settings.webhook_url else None)
        install(ConsoleContext(self.redis, settings.queue_name, settings.operator_token, sender))
        queue = ReliableQueue(self.redis, settings.queue_name, default_consumer_id(), config)
        self.worker = JobWorker(queue, self._execute, JobReporter(self.redis, sender),
                                max_inflight=settings.max_inflight, metrics=self.metrics)
        self._startup = asyncio.create_task(self._start_when_redis_answers())
        self._observer = asyncio.create_task(self._observe_queue())

    async def _start_when_redis_answers(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.worker.queue.start()
                break
            except (RedisError, OSError) as exc:
                logger.warning("Redis not reachable at start-up (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.worker.start()
        logger.info("claiming from %r with at most %d jobs in flight", self.settings.queue_name,
                    self.settings.max_inflight)

    async def _execute(self, job: Job) -> JobResult:
        """matting -> reconstruct -> publish, awaiting each hop.

        A replica lost mid-call (its process or its node gone) then fails the hop it was serving with an
        actor error, sorted as `worker_lost` and retried, within Ray's node-failure detection (~15-30 s).
        Chained unawaited, the lost response sat inside the next call's arguments, where Serve's router
        retries "temporarily unavailable" without end: the job stalled until JOB_TIMEOUT_S and the log
        flooded. The price is each stage's output passing through this replica once (docs/scaling.md).
        """
        job = self.defaults.apply(job)
        try:
            async with asyncio.timeout(self.settings.job_timeout_s):
                prepared = await self.matting.prepare.remote(job)
                reconstructed = await self.reconstruct.reconstruct.remote(job, prepared)
                result: JobResult = await self.publish.publish.remote(job, reconstructed)
                return result
        except TimeoutError:
            raise TransientError("job_timeout", f"no result within {self.settings.job_timeout_s:.0f}s") from None
        except Exception as exc:
            raise_sorted(exc)

    async def _observe_queue(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):   # a gauge may go stale while Redis is down
                self.metrics.queue_observed(await queue_depth(self.redis, self.settings.queue_name),
                                            await dead_letter_count(self.redis))
            await asyncio.sleep(OBSERVE_INTERVAL_S)

    def check_health(self) -> None:
        """Fails (so Serve restarts the replica) when the claim loop has died; Redis being down is not death."""
        if self._startup.done() and self._startup.exception() is not None:
            raise RuntimeError(f"start-up failed: {type(self._startup.exception()).__name__}")
        if self._startup.done():
            self.worker.check_health()

    def settings_in_effect(self) -> dict[str, Any]:
        """This replica's non-secret settings, as operators (and the settings test) see them."""
        return self.settings.replica_overrides()

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 when Redis answers, the claim loop runs and every stage replica is ready (models loaded, storage
        set up); a stage that reports an `error` (e.g. Publish's misconfigured bucket) makes it 503."""
        checks: dict[str, Any] = {"redis": await self._redis_ok(), "loop": self._loop_ok()}
        try:
            async with asyncio.timeout(10):
                matting, reconstruct, publish = await asyncio.gather(
                    self.matting.ready.remote(), self.reconstruct.ready.remote(), self.publish.ready.remote())
            checks["models"] = {"matting": matting, "reconstruct": reconstruct, "publish": publish}
        except Exception as exc:  # any stage not ready counts, whatever the reason
            checks["models"] = {"error": type(exc).__name__}
        stage_failed = any("error" in stage for stage in checks["models"].values() if isinstance(stage, dict))
        healthy = checks["redis"] and checks["loop"] and "error" not in checks["models"] and not stage_failed
        return JSONResponse({"status": "ok" if healthy else "unhealthy", **checks}, status_code=200 if healthy else 503)

    @api.get("/jobs/{job_id}")
    async def job(self, job_id: str) -> dict[str, Any]:
        state = await get_job_state(self.redis, job_id)
        if state is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return state

    async def _redis_ok(self) -> bool:
        try:
            async with asyncio.timeout(2):
                return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    def _loop_ok(self) -> bool:
        try:
            self.check_health()
        except RuntimeError:
            return False
        return self._startup.done()

    async def __del__(self) -> None:
        """Graceful shutdown: stop claiming, let running jobs finish, hand the rest back to the queue."""
        self._observer.cancel()
        if self._startup.done():
            await self.worker.stop(drain_timeout_s=45)
        else:
            self._startup.cancel()
        await self.redis.aclose()
