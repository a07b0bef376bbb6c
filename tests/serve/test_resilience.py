"""Failures in a running graph: a Reconstruct replica whose CUDA context a fault poisoned, and Redis
restarted mid-run. Each time the work still completes exactly once: one `completed` webhook and one
stored object per job, nothing lost. Replicas and nodes that die (the Ingress's included) are covered
on a multi-node cluster by tests/cluster/test_multinode.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from pipeline.run.failpoints import ENV as FAILPOINTS_ENV
from pipeline.testing.graph import Backend, replica_pids, small_options, wait_for
from pipeline.testing.matting_model import make_product_photo
from pipeline.testing.redis_server import RedisServer
from tests.serve.conftest import RayCluster, app_args, running_replicas
from tests.serve.test_graph import job_fields, readme_message

pytestmark = pytest.mark.ray
APP = "shop3d-resilience"
# The default formats (glb, poster, report), each stored once: no duplicate, no leftover temp file.
ONE_OF_EACH_DEFAULT_FILE = ["model.glb", "poster.png", "report.json"]


@dataclass
class Running:
    redis: redis.Redis
    backend: Backend
    photo_url: str

    def field(self, job_id: str, name: str) -> str | None:
        value = self.redis.hget(f"shop3d:job:{job_id}", name)
        return value.decode() if value else None

    def objects(self, job_id: str) -> list[Path]:
        """Every file stored for the job (temp files included, so a leftover would show)."""
        return sorted(p for p in self.backend.storage_dir.rglob("*") if p.is_file() and job_id in str(p))


def deploy(cluster: RayCluster, redis_url: str, backend: Backend, options: dict[str, dict[str, object]] | None = None,
           **overrides: object) -> None:
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(app_args(cluster, redis_url, backend, **overrides), options or small_options()), name=APP,
              route_prefix=None)


@pytest.fixture
def running(ray_cluster: RayCluster, own_redis: RedisServer, tmp_path: Path) -> Iterator[Running]:
    from ray import serve

    backend = Backend(tmp_path / "objects")
    photo = backend.server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    deploy(ray_cluster, own_redis.url, backend)
    client = redis.Redis.from_url(own_redis.url)
    try:
        yield Running(client, backend, photo)
    finally:
        serve.delete(APP)
        client.close()
        backend.stop()


def test_reconstruct_replica_with_a_cuda_fault_is_replaced_and_the_job_completes(
        ray_cluster: RayCluster, own_redis: RedisServer, tmp_path: Path) -> None:
    from ray import serve

    job_id = f"r-cuda-{uuid.uuid4().hex[:8]}"   # the failpoint fires once per job id on this machine
    options = small_options(health_check_period_s=1)
    armed = {"env_vars": {FAILPOINTS_ENV: f"reconstruct.cuda_fault={job_id}"}}
    options["Reconstruct"]["ray_actor_options"] = {**options["Reconstruct"]["ray_actor_options"], "runtime_env": armed}
    backend = Backend(tmp_path / "objects")
    photo = backend.server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    deploy(ray_cluster, own_redis.url, backend, options)
    running = Running(redis.Redis.from_url(own_redis.url), backend, photo)
    try:
        (faulty,) = replica_pids(APP, "Reconstruct")
        running.redis.lpush("celery", readme_message(job_fields(job_id, [photo])))
        wait_for(lambda: running.field(job_id, "status") == "completed", "job completed after the fault", 240)
        assert faulty not in replica_pids(APP, "Reconstruct")          # check_health failed: Serve replaced it
        assert running_replicas(APP, "Reconstruct") == 1
        assert int(running.field(job_id, "attempts") or 0) >= 2         # retried as gpu_fault, never terminal
        assert len(running.backend.events(job_id, "completed")) == 1 and running.backend.events(job_id, "failed") == []
        assert [p.name for p in running.objects(job_id)] == ONE_OF_EACH_DEFAULT_FILE
        ready = serve.get_deployment_handle("Reconstruct", APP).ready.remote().result(timeout_s=60)
        assert ready["device_fault"] is None and ready["warmup_s"] > 0 and ready["memory_fraction"] is None  # CPU
    finally:
        serve.delete(APP)
        running.redis.close()
        backend.stop()


def test_redis_restart_mid_run_loses_nothing(running: Running, own_redis: RedisServer) -> None:
    # A production Redis persists; make this one save on shutdown so a restart keeps the data.
    running.redis.config_set("save", "3600 1")
    ids = [f"r-restart-{i}" for i in range(3)]
    for job_id in ids:
        running.redis.lpush("celery", readme_message(job_fields(job_id, [running.photo_url])))
    wait_for(lambda: running.field(ids[0], "status") == "processing", "first job running", 120, 0.05)
    own_redis.restart()
    for job_id in ids:
        wait_for(lambda job_id=job_id: running.field(job_id, "status") == "completed", f"{job_id} completed", 240)
        assert len(running.backend.events(job_id, "completed")) == 1
        assert [p.name for p in running.objects(job_id)] == ONE_OF_EACH_DEFAULT_FILE
    assert running.redis.llen("celery") == 0 and running.redis.llen("shop3d:dead") == 0
    undelivered = [json.loads(x) for x in running.redis.lrange("shop3d:webhooks:undelivered", 0, -1)]
    assert undelivered == []
