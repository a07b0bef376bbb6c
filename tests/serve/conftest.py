"""One local Ray per test session declaring a logical GPU (fractional placement is testable on a CPU
machine), Serve's HTTP proxy on a free port, and helpers to run the shop3d graph on the tiny models.

Environment set before `ray.init` reaches every replica (workers inherit the driver's env on a local
cluster): fast autoscaling metric pushes, no auth/usage stats, offline hub, rembg's home for the tiny
ONNX matting model the tests build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.testing.graph import RAY_ENV, Backend
from pipeline.testing.redis_server import RedisServer, free_port
from tests.support.services import TinyModelFiles

OPERATOR_TOKEN = "graph-operator-token"   # a test credential; replicas read secrets from their env


@dataclass(frozen=True)
class RayCluster:
    models_dir: Path          # tiny TripoSR checkpoint (a copy of the fixture)
    matting_model: Path       # tiny ONNX matting model under U2NET_HOME
    http_port: int            # Serve's HTTP proxy
    metrics_port: int         # Ray's Prometheus endpoint


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    models = TinyModelFiles.write(tmp_path_factory.mktemp("ray-models"))
    saved = dict(os.environ)
    os.environ.update(RAY_ENV, U2NET_HOME=str(models.u2net_home), OPERATOR_TOKEN=OPERATOR_TOKEN)
    import ray
    from ray import serve

    metrics_port, http_port = free_port(), free_port()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2, _metrics_export_port=metrics_port)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        yield RayCluster(models.tsr_dir, models.matting, http_port, metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def app_args(cluster: RayCluster, redis_url: str, backend: Backend, **overrides: Any) -> Any:
    from deployments.settings import AppArgs

    values: dict[str, Any] = dict(
        redis_url=redis_url, queue_name="celery", tsr_model=str(cluster.models_dir),
        rembg_model=str(cluster.matting_model), allow_private_urls=True,
        backend_url=backend.server.url("/"), webhook_path="/hooks",
        local_storage_dir=backend.storage_dir, local_storage_base_url=backend.server.url("/objects"),
        heartbeat_ttl_s=4, retry_base_s=0.5, max_attempts=4, max_inflight=4)
    values.update(overrides)
    return AppArgs(**values)


def replica_states(app: str, deployment: str) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    return {str(k): v for k, v in status.deployments[deployment].replica_states.items()}


def running_replicas(app: str, deployment: str) -> int:
    return replica_states(app, deployment).get("RUNNING", 0)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server only this test uses (it may restart it)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
