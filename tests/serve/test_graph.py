"""The whole Ray Serve graph on a real local Ray: jobs from the backend's three producers complete
with a loadable GLB, bad ones are dead-lettered with a `failed` webhook while the ingress keeps
serving, duplicates run once, the HTTP routes answer, the metrics reach Ray's endpoint, and the operator
console works in a real browser.

Real components: redis-server, Ray Serve (one logical GPU), the tiny TripoSR and ONNX matting models,
a local HTTP server as the backend and image host. The Celery producer is the real `celery` package.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery

from pipeline.testing.graph import Backend, small_options, wait_for
from pipeline.testing.matting_model import make_product_photo
from pipeline.testing.redis_server import RedisServer, free_port
from tests.serve.conftest import OPERATOR_TOKEN, RayCluster, app_args

pytestmark = pytest.mark.ray
APP = "shop3d"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass
class Graph:
    redis: redis.Redis
    redis_url: str
    backend: Backend
    base_url: str
    photo_url: str

    def status(self, job_id: str) -> str | None:
        value = self.redis.hget(f"shop3d:job:{job_id}", "status")
        return value.decode() if value else None

    def wait_status(self, job_id: str, status: str, timeout_s: float = 120) -> None:
        wait_for(lambda: self.status(job_id) == status, f"{job_id} {status}", timeout_s)


def job_fields(job_id: str, urls: list[str]) -> dict[str, object]:
    return {"job_id": job_id, "shop": "demo.myshopify.com", "product_id": "gid://shopify/Product/9",
            "product_handle": "red-mug", "image_urls": urls, "metadata": {"productTitle": "Mug"}, "quality": "fast"}


def readme_message(fields: dict[str, object]) -> bytes:
    """The earlier README's manual test message, byte for byte in shape."""
    return json.dumps({"task": "generate_3d_model", "id": f"task-{fields['job_id']}", "args": [],
                       "kwargs": fields}).encode()


@pytest.fixture(scope="module")
def graph(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    from ray import serve

    from deployments.app import build_app

    work = tmp_path_factory.mktemp("graph")
    redis_server = RedisServer(work)
    redis_server.start()
    backend = Backend(work / "objects")
    photo_url = backend.server.serve_bytes("/photos/mug.jpg", make_product_photo(), "image/jpeg")
    serve.run(build_app(app_args(ray_cluster, redis_server.url, backend), small_options()), name=APP,
              route_prefix="/")
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield Graph(client, redis_server.url, backend, f"http://127.0.0.1:{ray_cluster.http_port}", photo_url)
    finally:
        serve.delete(APP)
        client.close()
        backend.stop()
        redis_server.stop()


def test_readme_celery_and_bare_jobs_complete_with_a_loadable_glb(graph: Graph) -> None:
    graph.redis.lpush("celery", readme_message(job_fields("g-readme", [graph.photo_url])))
    Celery(broker=graph.redis_url).send_task("generate_3d_model", kwargs=job_fields("g-celery", [graph.photo_url]))
    graph.redis.lpush("celery", json.dumps(job_fields("g-bare", [graph.photo_url])).encode())
    for job_id in ("g-readme", "g-celery", "g-bare"):
        graph.wait_status(job_id, "completed")
        (done,) = graph.backend.events(job_id, "completed")
        glb = httpx.get(done["assets"]["glb"], timeout=10)
        assert glb.status_code == 200 and glb.content[:4] == b"glTF"
        assert len(glb.content) == done["stats"]["glb_bytes"]
        assert done["stats"]["image"]["url"] == graph.photo_url
        assert set(done["stats"]["timings_s"]) >= {"forward", "extract", "export", "upload"}
        assert graph.backend.events(job_id, "processing")


def test_malformed_and_unreachable_are_dead_lettered_and_the_ingress_keeps_serving(graph: Graph) -> None:
    graph.redis.lpush("celery", b'{"task": "generate_3d_model", "kwargs": {"job_id": "g-bad"')
    closed = f"http://127.0.0.1:{free_port()}/gone.jpg"
    graph.redis.lpush("celery", readme_message(job_fields("g-unreachable", [closed])))
    graph.redis.lpush("celery", readme_message(job_fields("g-after", [graph.photo_url])))
    graph.wait_status("g-unreachable", "failed")
    graph.wait_status("g-after", "completed")
    # The state turns `failed` when the job is dead-lettered; the webhook follows it.
    wait_for(lambda: bool(graph.backend.events("g-unreachable", "failed")), "failed webhook", 60)
    (failed,) = graph.backend.events("g-unreachable", "failed")
    assert failed["error"]["code"] == "image_unreachable"
    dead = [json.loads(info) for info in graph.redis.hvals("shop3d:dead:info")]
    assert {d["error"]["code"] for d in dead} >= {"malformed_message", "image_unreachable"}
    assert graph.redis.llen("shop3d:dead") >= 2
    wait_for(lambda: any(e["error"]["code"] == "malformed_message" for e in graph.backend.events(status="failed")),
             "failed webhook of the malformed message", 60)


def test_the_same_job_pushed_twice_is_processed_once(graph: Graph) -> None:
    message = readme_message(job_fields("g-twice", [graph.photo_url]))
    graph.redis.lpush("celery", message, message)
    graph.wait_status("g-twice", "completed")
    wait_for(lambda: graph.redis.llen("celery") == 0, "both copies consumed")
    wait_for(lambda: not any(graph.redis.llen(k) for k in graph.redis.scan_iter("shop3d:processing:*")),
             "processing lists empty", 30)
    assert len(graph.backend.events("g-twice", "completed")) == 1
    assert graph.redis.hget("shop3d:job:g-twice", "attempts") == b"1"


def test_http_routes_health_enqueue_and_job_state(graph: Graph) -> None:
    health = httpx.get(f"{graph.base_url}/health", timeout=30)
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["redis"] is True and body["loop"] is True and body["models"]["reconstruct"]["device"] == "cpu"

    fields = job_fields("g-http", [graph.photo_url])
    assert httpx.post(f"{graph.base_url}/jobs", json=fields, timeout=10).status_code == 401   # operators only
    accepted = httpx.post(f"{graph.base_url}/jobs", json=fields, headers=OPERATOR, timeout=10)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"job_id": "g-http", "status": "queued"}
    graph.wait_status("g-http", "completed")
    state = httpx.get(f"{graph.base_url}/jobs/g-http", timeout=10).json()
    assert state["status"] == "completed" and state["assets"]["glb"].endswith("/g-http/model.glb")
    assert state["result"]["assets"] == state["assets"]   # the recorded result is JSON, not a JSON string

    invalid = httpx.post(f"{graph.base_url}/jobs", json={"job_id": "x"}, headers=OPERATOR, timeout=10)
    assert invalid.status_code == 422 and invalid.json()["detail"]["code"] == "invalid_job"
    assert httpx.get(f"{graph.base_url}/jobs/nope", timeout=10).status_code == 404
    recent = httpx.get(f"{graph.base_url}/jobs", params={"status": "completed"}, headers=OPERATOR, timeout=10)
    assert "g-http" in [job["job_id"] for job in recent.json()["jobs"]]
    assert httpx.get(f"{graph.base_url}/queue", timeout=10).status_code == 401


def test_service_metrics_reach_rays_metrics_endpoint(graph: Graph, ray_cluster: RayCluster) -> None:
    url = f"http://127.0.0.1:{ray_cluster.metrics_port}/metrics"

    def exported() -> bool:
        text = httpx.get(url, timeout=10).text
        return all(name in text for name in ("ray_shop3d_jobs_total", "ray_shop3d_stage_seconds_bucket",
                                              "ray_shop3d_queue_depth", "ray_shop3d_inflight",
                                              "ray_shop3d_dead_letters"))

    wait_for(exported, "shop3d series on the metrics endpoint", timeout_s=60, every_s=2)
    text = httpx.get(url, timeout=10).text
    assert 'outcome="completed"' in text and 'stage="extract"' in text


def test_the_console_in_a_real_browser_shows_jobs_and_requeues_a_dead_letter(
        graph: Graph, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Debian's Chromium (Playwright with the system browser) against the running graph: sign in, a
    completed job with its poster, report and <model-viewer> preview of the GLB (drawn by WebGL on
    SwiftShader), a dead letter whose Requeue makes it run again, and the page showing it completed.
    The screenshot goes to a temporary folder, or to $SHOP3D_CONSOLE_SCREENSHOT (docs/console.png)."""
    from pipeline.testing.browser import open_browser

    later = "/photos/later.jpg"   # 404 until the host "comes back": a terminal image_http_error
    graph.redis.lpush("celery", readme_message(job_fields("ui-done", [graph.photo_url])))
    graph.redis.lpush("celery", readme_message(job_fields("ui-dead", [graph.backend.server.url(later)])))
    graph.wait_status("ui-done", "completed")
    graph.wait_status("ui-dead", "failed")
    screenshot = Path(os.environ.get("SHOP3D_CONSOLE_SCREENSHOT") or tmp_path_factory.mktemp("console") / "console.png")
    with open_browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{graph.base_url}/ui")
        page.locator("#login-form").wait_for(state="visible", timeout=20_000)
        page.fill("#login-token", OPERATOR_TOKEN)
        page.click("#login-submit")
        page.locator("#console").wait_for(state="visible")

        page.locator('#jobs-table tr[data-job-id="ui-done"][data-status="completed"]').wait_for(timeout=20_000)
        page.locator('#dead-letters tr[data-job-id="ui-dead"]').wait_for(timeout=20_000)
        assert "image_http_error" in page.inner_text('#dead-letters tr[data-job-id="ui-dead"]')

        page.click('#jobs-table tr[data-job-id="ui-done"]')
        page.wait_for_function("() => { const mv = document.querySelector('#job-model'); "
                               "return mv.dataset.state === 'loaded' && mv.loaded === true; }", timeout=60_000)
        assert (page.get_attribute("#job-model", "src") or "").endswith("/ui-done/model.glb")
        assert page.evaluate("() => document.querySelector('#job-poster').naturalWidth") > 0
        page.wait_for_function("() => document.querySelector('#job-report').dataset.state === 'loaded'",
                               timeout=20_000)
        assert '"job_id": "ui-done"' in (page.text_content("#job-report-json") or "")

        page.wait_for_timeout(800)   # let model-viewer settle its camera
        page.screenshot(path=str(screenshot), full_page=True)   # a completed job and a dead letter

        graph.backend.server.serve_bytes(later, make_product_photo(), "image/jpeg")   # the host is back
        page.click('button[data-requeue="ui-dead"]')
        page.locator('#dead-letters tr[data-job-id="ui-dead"]').wait_for(state="detached", timeout=20_000)
        page.locator('#jobs-table tr[data-job-id="ui-dead"][data-status="completed"]').wait_for(timeout=120_000)
        assert errors == []
    assert len(graph.backend.events("ui-dead", "completed")) == 1
    state = json.loads(httpx.get(f"{graph.base_url}/jobs/ui-dead", timeout=10).text)
    assert state["history"][0]["event"] == "requeued" and state["history"][0]["by"] == "api"
    assert screenshot.stat().st_size > 10_000
