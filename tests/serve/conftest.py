"""One local Ray per test session declaring a logical GPU (fractional placement is testable on a CPU
machine), Serve's HTTP proxy on a free port, and helpers to run the shop3d graph on the tiny models.

Environment set before `ray.init` reaches every replica (workers inherit the driver's env on a local
cluster): fast autoscaling metric pushes, no auth/usage stats, offline hub, rembg's home for the tiny
ONNX matting model the tests build.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.http_server import LocalHTTPServer, Request, Response
from tests.support.matting_model import write_tiny_matting_onnx
from tests.support.paths import TINY_FIXTURE_DIR
from tests.support.redis_server import RedisServer, free_port

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "500",
    "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
}
SMALL_CPU = {"num_cpus": 0.05}


@dataclass(frozen=True)
class RayCluster:
    models_dir: Path          # tiny TripoSR checkpoint (a copy of the fixture)
    matting_model: Path       # tiny ONNX matting model under U2NET_HOME
    http_port: int            # Serve's HTTP proxy
    metrics_port: int         # Ray's Prometheus endpoint


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    work = tmp_path_factory.mktemp("ray-models")
    models_dir = work / "tiny"
    shutil.copytree(TINY_FIXTURE_DIR, models_dir)
    u2net_home = work / "u2net"
    matting = write_tiny_matting_onnx(u2net_home / "models" / "tiny.onnx")
    saved = dict(os.environ)
    os.environ.update(RAY_ENV, U2NET_HOME=str(u2net_home))
    import ray
    from ray import serve

    metrics_port, http_port = free_port(), free_port()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2, _metrics_export_port=metrics_port)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        yield RayCluster(models_dir, matting, http_port, metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def small_options(**reconstruct: Any) -> dict[str, dict[str, Any]]:
    """Deployment options for a 2-core CI machine: tiny CPU shares, one replica per CPU stage."""
    fixed = {"min_replicas": 1, "max_replicas": 1}
    return {
        "Ingress": {"ray_actor_options": SMALL_CPU, "health_check_period_s": 1},
        "Matting": {"ray_actor_options": SMALL_CPU, "autoscaling_config": fixed},
        "Reconstruct": {"ray_actor_options": {**SMALL_CPU, "num_gpus": 0.25}, **reconstruct},
        "Publish": {"ray_actor_options": SMALL_CPU, "autoscaling_config": fixed},
    }


class Backend:
    """A real local HTTP server standing in for the shop's backend (/hooks) that also serves the
    local object store (/objects/...) so webhook GLB URLs can be fetched."""

    def __init__(self, storage_dir: Path) -> None:
        self.storage_dir = storage_dir
        self.server = LocalHTTPServer().start()
        self.server.route("/hooks", lambda _r: Response(200, b"ok"))
        self.server.route_prefix("/objects/", self._serve_object)

    def _serve_object(self, request: Request) -> Response:
        path = self.storage_dir / request.path.removeprefix("/objects/")
        if not path.is_file():
            return Response(404, b"")
        return Response(200, path.read_bytes(), {"Content-Type": "model/gltf-binary"})

    def events(self, job_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        import json

        bodies = [json.loads(r.body) for r in list(self.server.requests) if r.path == "/hooks"]
        return [b for b in bodies if (job_id is None or b["job_id"] == job_id)
                and (status is None or b["status"] == status)]

    def stop(self) -> None:
        self.server.stop()


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


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 120.0, every_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def replica_states(app: str, deployment: str) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    return {str(k): v for k, v in status.deployments[deployment].replica_states.items()}


def running_replicas(app: str, deployment: str) -> int:
    return replica_states(app, deployment).get("RUNNING", 0)


def replica_pids(app: str, deployment: str) -> list[int]:
    """PIDs of one deployment's replica processes (to SIGKILL them), found by the process title Ray
    gives actor workers (`ray::ServeReplica:<app>:<deployment>...`); the state API would need the dashboard."""
    title = f"ray::ServeReplica:{app}:{deployment}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(title) and cmdline[len(title):len(title) + 1] in (b"", b".", b"\x00", b" "):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server only this test uses (it may restart it)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
