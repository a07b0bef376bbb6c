"""One set of settings: every non-secret field set in a `.env` is what every replica of the graph runs with, and
DEFAULT_QUALITY / DEFAULT_FORMATS apply to queue jobs that omit them. Live knobs: a bad `user_config` is
refused by the Reconstruct replica without failing jobs, and `chunk_size: 0` (unchunked) works.

The `.env` is read the way `shop3d serve` reads it (Settings in the launching process, then
`Settings.replica_overrides()` as the app args); the values are then read back from inside each running
replica. Real components: redis-server, Ray Serve, the tiny models, a local HTTP server as backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from deployments.settings import AppArgs
from pipeline.settings import Settings
from pipeline.testing.graph import Backend, small_options, wait_for
from pipeline.testing.matting_model import make_product_photo
from pipeline.testing.redis_server import RedisServer
from tests.serve.conftest import RayCluster

pytestmark = pytest.mark.ray
APP = "settings"
DEPLOYMENTS = ("Ingress", "Matting", "Reconstruct", "Publish")


def dotenv(cluster: RayCluster, redis_url: str, backend: Backend, storage: Path) -> dict[str, str]:
    """A value for every non-secret setting, each different from its default."""
    return {
        "REDIS_URL": redis_url, "QUEUE_NAME": "settings-queue", "MAX_ATTEMPTS": "5", "MAX_INFLIGHT": "3",
        "JOB_TIMEOUT_S": "600", "HEARTBEAT_TTL_S": "7", "RETRY_BASE_S": "0.75",
        "STORAGE_BACKEND": "local", "LOCAL_STORAGE_DIR": str(storage),
        "LOCAL_STORAGE_BASE_URL": backend.server.url("/objects"),
        "SUPABASE_URL": "http://127.0.0.1:9/unused", "SUPABASE_BUCKET_NAME": "settings-bucket",
        "SUPABASE_SIGNED_URLS": "true", "SUPABASE_SIGNED_URL_TTL_S": "3600", "SUPABASE_FILE_SIZE_LIMIT": "20971520",
        "BACKEND_URL": backend.server.url("/"), "WEBHOOK_PATH": "/hooks", "WEBHOOK_MAX_ATTEMPTS": "2",
        "TSR_MODEL": str(cluster.models_dir), "REMBG_MODEL": str(cluster.matting_model), "DEVICE": "cpu",
        "TORCH_THREADS": "1", "CHUNK_SIZE": "32768", "DEFAULT_QUALITY": "fast",
        "DEFAULT_FORMATS": '["glb","report"]', "ALLOW_PRIVATE_URLS": "true", "MAX_IMAGE_BYTES": "12345678",
        "MAX_IMAGE_PIXELS": "30000000", "DOWNLOAD_TIMEOUT_S": "9.5",
    }


@pytest.fixture(scope="module")
def deployed(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ray import serve

    from deployments.app import build_app

    work = tmp_path_factory.mktemp("settings")
    redis_server = RedisServer(work)
    redis_server.start()
    backend = Backend(work / "objects")
    env_file = work / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in
                                dotenv(ray_cluster, redis_server.url, backend, work / "objects").items()))
    settings = Settings(_env_file=env_file)   # what `shop3d serve` reads from its working directory
    serve.run(build_app(settings.replica_overrides(), small_options()), name=APP, route_prefix=None)
    try:
        yield {"settings": settings, "redis_url": redis_server.url, "backend": backend,
               "photo": backend.server.serve_bytes("/photo.jpg", make_product_photo(320, 240), "image/jpeg")}
    finally:
        serve.delete(APP)
        backend.stop()
        redis_server.stop()


def test_every_setting_in_the_env_file_differs_from_its_default(deployed: dict[str, Any]) -> None:
    expected = deployed["settings"].replica_overrides()
    declared = {name: field.get_default(call_default_factory=True) for name, field in Settings.model_fields.items()}
    defaults = Settings.model_construct(**declared).model_dump(mode="json")   # unresolved: storage_backend None
    changed = {name for name in AppArgs.model_fields if expected.get(name) != defaults.get(name)}
    assert changed == set(AppArgs.model_fields)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_each_replica_runs_with_every_setting(deployed: dict[str, Any], deployment: str) -> None:
    from ray import serve

    handle = serve.get_deployment_handle(deployment, APP)
    in_effect = handle.settings_in_effect.remote().result(timeout_s=60)
    assert in_effect == deployed["settings"].replica_overrides()


def run_job(deployed: dict[str, Any], job_id: str, **fields: Any) -> dict[str, str]:
    """Push a bare job onto the configured queue and return its final state."""
    client = redis.Redis.from_url(deployed["redis_url"])
    try:
        job = {"job_id": job_id, "shop": "demo.myshopify.com", "product_id": "1", "product_handle": "mug",
               "image_urls": [deployed["photo"]], **fields}
        client.lpush("settings-queue", json.dumps(job))
        key = f"shop3d:job:{job_id}"
        wait_for(lambda: client.hget(key, "status") in (b"completed", b"failed"), f"{job_id} done", 180)
        return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    finally:
        client.close()


def test_a_job_without_quality_or_formats_gets_the_defaults(deployed: dict[str, Any]) -> None:
    state = run_job(deployed, "defaults-1")
    assert state["status"] == "completed", state.get("error")
    stats = json.loads(state["stats"])
    assert stats["quality"] == "fast" and stats["formats"] == ["glb", "report"]
    assert set(json.loads(state["assets"])) == {"glb", "report"}


def test_a_bad_live_knob_is_refused_and_jobs_keep_running(deployed: dict[str, Any]) -> None:
    from ray import serve

    reconstruct = serve.get_deployment_handle("Reconstruct", APP)
    before = reconstruct.ready.remote().result(timeout_s=60)["knobs"]
    # what Serve calls with a new user_config
    reconstruct.reconfigure.remote({"extraction": "bogus", "max_batch_size": 2}).result(timeout_s=60)
    ready = reconstruct.ready.remote().result(timeout_s=60)
    assert ready["knobs"] == before and "extraction" in ready["knobs_refused"]
    state = run_job(deployed, "after-bad-knob", quality="fast")
    assert state["status"] == "completed", state.get("error")


def test_unchunked_queries_are_a_working_knob(deployed: dict[str, Any]) -> None:
    from ray import serve

    from deployments.app import build_app

    options = small_options(user_config={"max_batch_size": 2, "batch_wait_timeout_s": 0.05, "chunk_size": 0,
                                         "extraction": "fast"})
    serve.run(build_app(deployed["settings"].replica_overrides(), options), name=APP, route_prefix=None)
    knobs = serve.get_deployment_handle("Reconstruct", APP).ready.remote().result(timeout_s=60)["knobs"]
    assert knobs["chunk_size"] == 0
    state = run_job(deployed, "unchunked", quality="fast")
    assert state["status"] == "completed", state.get("error")
