"""Helpers that run the shop3d graph on one machine for tests and benchmarks: the Ray environment for a
small local cluster, deployment options that fit 2 cores, a real local HTTP server standing in for the
shop's backend, and a polling wait."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.assets.formats import CONTENT_TYPES
from pipeline.testing.http_server import LocalHTTPServer, Request, Response

# Set before `ray.init` (workers inherit the driver's env on a local cluster): fast autoscaling metric
# pushes, no auth or usage stats, offline hub, one torch thread per replica.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "500",
    "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
}
SMALL_CPU = {"num_cpus": 0.05}
OBJECT_TYPES = {".glb": CONTENT_TYPES["glb"], ".usdz": CONTENT_TYPES["usdz"], ".png": CONTENT_TYPES["poster"],
                ".json": CONTENT_TYPES["report"]}


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
        """A stored file with its format's content type, readable cross-origin as a public bucket's is
        (the console at the ingress's origin previews the GLB and reads the report)."""
        path = self.storage_dir / request.path.removeprefix("/objects/")
        if not path.is_file():
            return Response(404, b"")
        content_type = OBJECT_TYPES.get(path.suffix, "application/octet-stream")
        return Response(200, path.read_bytes(), {"Content-Type": content_type, "Access-Control-Allow-Origin": "*"})

    def events(self, job_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        bodies = [json.loads(r.body) for r in list(self.server.requests) if r.path == "/hooks"]
        return [b for b in bodies if (job_id is None or b["job_id"] == job_id)
                and (status is None or b["status"] == status)]

    def stop(self) -> None:
        self.server.stop()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 120.0, every_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


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
