"""`shop3d serve` as an operator runs it: a real local Ray started by the command, the graph on the CPU,
a job from Redis completed, /health answering, and Ctrl-C (SIGINT) shutting everything down cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from pipeline.testing.graph import RAY_ENV, Backend, wait_for
from pipeline.testing.matting_model import make_product_photo, write_tiny_matting_onnx
from pipeline.testing.redis_server import free_port

pytestmark = pytest.mark.ray


def test_serve_runs_the_graph_on_the_cpu_and_stops_on_ctrl_c(redis_url: str, tiny_fixture_dir: Path,
                                                             tmp_path: Path) -> None:
    backend = Backend(tmp_path / "objects")
    photo = backend.server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    u2net = tmp_path / "u2net"
    model = write_tiny_matting_onnx(u2net / "models" / "tiny.onnx")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **RAY_ENV, "U2NET_HOME": str(u2net)}
    # The settings come from a .env in the working directory, as a developer keeps them; the replicas (other
    # processes, another working directory) see them only because `shop3d serve` hands them on.
    (tmp_path / ".env").write_text(
        f"REDIS_URL={redis_url}\nTSR_MODEL={tiny_fixture_dir}\nREMBG_MODEL={model}\nALLOW_PRIVATE_URLS=true\n"
        f"BACKEND_URL={backend.server.url('/')}\nWEBHOOK_PATH=/hooks\nLOCAL_STORAGE_DIR={backend.storage_dir}\n"
        "QUEUE_NAME=serve-queue\nDEFAULT_QUALITY=fast\n")
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--cpu-only", "--port", str(port)],
                               env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"shop3d serve exited early: {process.stdout.read().decode()[-3000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "shop3d serve healthy", timeout_s=240, every_s=1)
        job = {"job_id": "serve-1", "shop": "s.myshopify.com", "product_id": "1", "product_handle": "mug",
               "image_urls": [photo]}
        redis.Redis.from_url(redis_url).lpush("serve-queue", json.dumps(job))
        wait_for(lambda: bool(backend.events("serve-1", "completed")), "job completed", timeout_s=180)
        assert backend.events("serve-1", "completed")[0]["stats"]["quality"] == "fast"   # DEFAULT_QUALITY
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert process.wait(timeout=90) == 0
        output = process.stdout.read().decode()
        assert "shutting down" in output, output[-3000:]
        assert time.monotonic() - started < 90
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        backend.stop()
