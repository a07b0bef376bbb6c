"""One job path: the same failing inputs through the in-process runner and through the Ray Serve graph end
with the same `error.code` and the same (stage, progress) sequence.

Real components on both sides: the tiny TripoSR and ONNX matting models, a local HTTP server for the photos,
redis-server, Ray Serve. Storage is SupabaseObjectStore against the Supabase STAND-IN (tests/support), since
Supabase is SaaS that cannot run here; its injected 403/503 answers follow the recorded shapes. Model and
export failures are injected with failpoints (pipeline/run/failpoints.py), armed per job id through the
environment: in-process with monkeypatch, in the replicas through `runtime_env.env_vars`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from pipeline.delivery.storage import SupabaseObjectStore
from pipeline.errors import Shop3dError
from pipeline.jobs.envelopes import Job
from pipeline.run.failpoints import ENV as FAILPOINTS_ENV
from pipeline.run.runner import process_job
from pipeline.run.stages import DONE, STAGE_PROGRESS
from pipeline.testing.graph import Backend, small_options, wait_for
from pipeline.testing.http_server import LocalHTTPServer
from pipeline.testing.matting_model import make_product_photo
from pipeline.testing.redis_server import RedisServer
from tests.serve.conftest import RayCluster, app_args
from tests.support.services import make_services
from tests.support.supabase_standin import SupabaseStandIn

pytestmark = pytest.mark.ray
APP = "two-paths"
SERVICE_KEY = "two-paths-service-role-key"
STAGES = {*STAGE_PROGRESS, DONE[0]}


@dataclass(frozen=True)
class Case:
    name: str
    photo: str                                          # key of PHOTOS
    failpoint: str | None = None                        # armed for this case's job
    storage_failure: int | None = None                  # the stand-in answers uploads with this status
    code: str | None = None                             # expected error code; None: completes


PHOTOS: dict[str, tuple[bytes, str]] = {
    "good": (make_product_photo(320, 240), "image/jpeg"),
    "truncated": (make_product_photo()[:300], "image/jpeg"),
    "blank": (make_product_photo(with_object=False), "image/jpeg"),
}
CASES = [
    Case("completes", "good"),
    Case("undecodable", "truncated", code="image_undecodable"),
    Case("no-foreground", "blank", code="no_foreground"),
    Case("empty-mesh", "good", failpoint="reconstruct.surface", code="empty_mesh"),
    Case("model-failure", "good", failpoint="reconstruct.forward", code="model_failed"),
    Case("over-budget", "good", failpoint="export.budget", code="export_failed"),
    Case("export-crash", "good", failpoint="export.write", code="export_failed"),
    Case("storage-4xx", "good", storage_failure=403, code="storage_failed"),
    Case("storage-5xx", "good", storage_failure=503, code="storage_unavailable"),
]


def job_id(case: Case, path: str) -> str:
    return f"{path}-{case.name}"


def failpoints_env(path: str) -> str:
    return ";".join(f"{point}={','.join(job_id(c, path) for c in CASES if c.failpoint == point)}"
                    for point in sorted({c.failpoint for c in CASES if c.failpoint}))


def job_fields(case: Case, path: str, photo_url: str) -> dict[str, Any]:
    return {"job_id": job_id(case, path), "shop": "demo.myshopify.com", "product_id": "7",
            "product_handle": "mug", "image_urls": [photo_url], "quality": "fast"}


def observed(progress: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The stage sequence without the queue's own `claimed` mark (the runner has no queue)."""
    return [(stage, percent) for stage, percent in progress if stage in STAGES]


class ProgressMonitor(threading.Thread):
    """Every (stage, progress) written to a job-state hash, in order, read from `redis-cli monitor` (which also
    shows the writes inside the queue's Lua scripts): what a reader of the job's state could have seen."""

    QUOTED = re.compile(r'"(.*?)(?<!\\)"')

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli comes with Debian's redis-server (scripts/setup)"
        self.process = subprocess.Popen([cli, "-p", str(port), "monitor"], stdout=subprocess.PIPE, text=True,
                                        errors="replace")
        self.writes: dict[str, list[tuple[str, int]]] = {}

    def run(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._record(line)

    def _record(self, line: str) -> None:
        args = self.QUOTED.findall(line.split("]", 1)[-1])
        if len(args) < 4 or args[0].upper() != "HSET" or not args[1].startswith("shop3d:job:"):
            return
        fields = dict(zip(args[2::2], args[3::2], strict=False))
        if "stage" in fields and "progress" in fields:
            job = args[1].removeprefix("shop3d:job:")
            self.writes.setdefault(job, []).append((fields["stage"], int(fields["progress"])))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def standin() -> Iterator[SupabaseStandIn]:
    with SupabaseStandIn(service_key=SERVICE_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def photos() -> Iterator[LocalHTTPServer]:
    server = LocalHTTPServer().start()
    for name, (body, content_type) in PHOTOS.items():
        server.serve_bytes(f"/{name}.jpg", body, content_type)
    yield server
    server.stop()


Outcome = tuple[str | None, list[tuple[str, int]]]   # (error code or None, the (stage, progress) sequence)


def run_case(case: Case, standin: SupabaseStandIn, start: Callable[[], None],
             finish: Callable[[], Outcome]) -> Outcome:
    """Queue the stand-in's failure for this case, start the job, and return (error code, progress)."""
    standin.clear_failures()
    if case.storage_failure is not None:
        standin.fail_next(case.storage_failure, count=50)
    try:
        start()
        return finish()
    finally:
        standin.clear_failures()


@pytest.fixture(scope="module")
def in_process(standin: SupabaseStandIn, photos: LocalHTTPServer, tiny_fixture_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str | None, list[tuple[str, int]]]]:
    """Every case through `process_job` in this process."""
    workdir = tmp_path_factory.mktemp("in-process")
    outcomes: dict[str, tuple[str | None, list[tuple[str, int]]]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAILPOINTS_ENV, failpoints_env("inproc"))
        store = SupabaseObjectStore(standin.url, SecretStr(SERVICE_KEY), "models")
        store.ensure_ready()
        for case in CASES:
            progress: list[tuple[str, int]] = []
            outcome: dict[str, str | None] = {}

            async def record(stage: str, percent: int, seen: list[tuple[str, int]] = progress) -> None:
                seen.append((stage, percent))

            async def go(case: Case = case, sink: Any = record, result: dict[str, str | None] = outcome) -> None:
                services = make_services(tiny_fixture_dir, workdir, photos.port, store=store)
                job = Job(**job_fields(case, "inproc", photos.url(f"/{case.photo}.jpg")))
                try:
                    await process_job(job, services, sink)
                    result["code"] = None
                except Shop3dError as exc:
                    result["code"] = exc.code
                finally:
                    await services.intake.aclose()   # the store is shared by every case; closed below

            outcomes[case.name] = run_case(case, standin, lambda go=go: asyncio.run(go()),
                                           lambda r=outcome, p=progress: (r["code"], observed(p)))
        store.close()
    return outcomes


@pytest.fixture(scope="module")
def through_graph(ray_cluster: RayCluster, standin: SupabaseStandIn, photos: LocalHTTPServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case pushed onto the queue of a deployed graph, one after another."""
    from ray import serve

    from deployments.app import build_app

    work = tmp_path_factory.mktemp("two-paths")
    redis_server = RedisServer(work)
    redis_server.start()
    backend = Backend(work / "objects")
    env = {FAILPOINTS_ENV: failpoints_env("graph"), "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY}
    options = small_options(user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0})
    for name in options:
        options[name]["ray_actor_options"] = {**options[name]["ray_actor_options"], "runtime_env": {"env_vars": env}}
    monitor = ProgressMonitor(redis_server.port)
    monitor.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)   # the builder checks the settings too
            args = app_args(ray_cluster, redis_server.url, backend, max_attempts=1, storage_backend="supabase",
                            supabase_url=standin.url, supabase_bucket_name="models")
            serve.run(build_app(args, options), name=APP, route_prefix=None)

        def status(job: str) -> str | None:
            value = client.hget(f"shop3d:job:{job}", "status")
            return value.decode() if value else None

        outcomes: dict[str, tuple[str | None, list[tuple[str, int]]]] = {}
        for case in CASES:
            job = job_id(case, "graph")
            fields = job_fields(case, "graph", photos.url(f"/{case.photo}.jpg"))

            def finish(job: str = job) -> tuple[str | None, list[tuple[str, int]]]:
                wait_for(lambda: status(job) in ("completed", "failed"), f"{job} finished", timeout_s=180)
                error = client.hget(f"shop3d:job:{job}", "error")
                code = json.loads(error)["code"] if status(job) == "failed" and error else None
                wait_for(lambda: bool(monitor.writes.get(job)), f"{job} progress seen", timeout_s=10)
                return code, observed(monitor.writes.get(job, []))

            outcomes[case.name] = run_case(case, standin, lambda f=fields: client.lpush("celery", json.dumps(f)),
                                           finish)
        yield outcomes
    finally:
        serve.delete(APP)
        monitor.stop()
        client.close()
        backend.stop()
        redis_server.stop()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_same_code_and_progress_on_both_paths(case: Case, in_process: dict[str, Any],
                                              through_graph: dict[str, Any]) -> None:
    code, progress = in_process[case.name]
    assert code == case.code
    assert through_graph[case.name] == (code, progress)


def test_progress_sequences_follow_the_one_table(in_process: dict[str, Any]) -> None:
    full = [*STAGE_PROGRESS.items(), DONE]
    assert in_process["completes"][1] == full
    assert in_process["undecodable"][1] == full[:1]
    assert in_process["model-failure"][1] == full[:2]
    assert in_process["over-budget"][1] == full[:3]
    assert in_process["storage-4xx"][1] == full[:4]
