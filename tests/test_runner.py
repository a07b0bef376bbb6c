"""process_job end to end in-process: real tiny TripoSR checkpoint, real rembg session on the tiny ONNX
matting model, a real local HTTP server for the photos, a real local object store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.assets.validation import validate_glb
from pipeline.delivery.storage import LocalObjectStore
from pipeline.errors import JobRejected, Shop3dError, TransientError
from pipeline.jobs.envelopes import Job
from pipeline.jobs.state import JobResult
from pipeline.run.runner import process_job
from pipeline.run.stages import DONE, STAGE_PROGRESS
from pipeline.testing.http_server import LocalHTTPServer
from pipeline.testing.matting_model import make_product_photo
from tests.support.services import make_services
from tests.test_export import load_glb


def _job(urls: list[str], quality: str = "fast") -> Job:
    return Job(job_id="job-runner-1", shop="demo.myshopify.com", product_id="gid://shopify/Product/1",
               product_handle="red-mug", image_urls=tuple(urls), quality=quality)


def _run(job: Job, tiny_fixture_dir: Path, tmp_path: Path, server: LocalHTTPServer,
         progress: list[tuple[str, int]] | None = None, store: LocalObjectStore | None = None) -> JobResult:
    seen = progress if progress is not None else []

    async def record(stage: str, percent: int) -> None:
        seen.append((stage, percent))

    async def go() -> JobResult:
        services = make_services(tiny_fixture_dir, tmp_path, server.port, store)
        try:
            return await process_job(job, services, record)
        finally:
            await services.aclose()
    return asyncio.run(go())


def test_photo_url_becomes_a_valid_stored_glb(tiny_fixture_dir: Path, tmp_path: Path,
                                               http_server: LocalHTTPServer) -> None:
    url = http_server.serve_bytes("/mug.jpg", make_product_photo(400, 300), "image/jpeg")
    progress: list[tuple[str, int]] = []
    output = _run(_job([url]), tiny_fixture_dir, tmp_path, http_server, progress)

    key = "demo.myshopify.com/red-mug/job-runner-1/model.glb"
    assert output.assets["glb"] == (tmp_path / "objects" / key).as_uri()
    glb = (tmp_path / "objects" / key).read_bytes()
    assert validate_glb(glb).errors == 0
    mesh = load_glb(glb)
    assert len(mesh.faces) == output.stats["faces"] <= 20_000  # the fast preset's budget
    assert mesh.bounds[0][1] == pytest.approx(0.0, abs=1e-6)
    assert [stage for stage, _ in progress] == ["prepare", "reconstruct", "export", "upload", "done"]
    assert [pct for _, pct in progress] == sorted(pct for _, pct in progress) and progress[-1][1] == 100
    assert set(output.stats["timings_s"]) == {"prepare", "forward", "extract", "export", "upload"}
    assert output.stats["image"]["index"] == 0 and output.stats["image"]["skipped"] == []


def test_first_unusable_url_is_skipped_and_recorded(tiny_fixture_dir: Path, tmp_path: Path,
                                                     http_server: LocalHTTPServer) -> None:
    missing = http_server.url("/gone.jpg")
    blank = http_server.serve_bytes("/blank.png", make_product_photo(200, 200, with_object=False,
                                                                    image_format="PNG"), "image/png")
    good = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    output = _run(_job([missing, blank, good]), tiny_fixture_dir, tmp_path, http_server)
    image = output.stats["image"]
    assert image["index"] == 2
    assert [s["code"] for s in image["skipped"]] == ["image_http_error", "no_foreground"]
    assert image["url"].endswith("/mug.jpg")


def test_unwritable_store_is_a_transient_upload_failure(tiny_fixture_dir: Path, tmp_path: Path,
                                                        http_server: LocalHTTPServer) -> None:
    url = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store root should be")
    with pytest.raises(TransientError) as caught:
        _run(_job([url]), tiny_fixture_dir, tmp_path, http_server, store=LocalObjectStore(blocker / "objects"))
    assert caught.value.code == "storage_unavailable"


@pytest.mark.parametrize("path, body, content_type, code", [
    ("/page.jpg", b"<html>not an image</html>", "text/html", "content_type_not_allowed"),
    ("/trunc.jpg", make_product_photo()[:300], "image/jpeg", "image_undecodable"),
    ("/blank.jpg", make_product_photo(with_object=False), "image/jpeg", "no_foreground"),
])
def test_bad_photo_fails_with_its_code(tiny_fixture_dir: Path, tmp_path: Path, http_server: LocalHTTPServer,
                                       path: str, body: bytes, content_type: str, code: str) -> None:
    url = http_server.serve_bytes(path, body, content_type)
    with pytest.raises(Shop3dError) as caught:
        _run(_job([url]), tiny_fixture_dir, tmp_path, http_server)
    assert isinstance(caught.value, JobRejected) and caught.value.code == code


def test_stage_progress_is_increasing() -> None:
    starts = [*STAGE_PROGRESS.values(), DONE[1]]
    assert starts == sorted(starts) and starts[0] > 0 and starts[-1] == 100


def test_job_formats_choose_the_files_and_each_is_stored_under_the_job(tiny_fixture_dir: Path, tmp_path: Path,
                                                                       http_server: LocalHTTPServer) -> None:
    import json

    url = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    job = Job(job_id="job-formats", shop="demo.myshopify.com", product_id="1", product_handle="red-mug",
              image_urls=(url,), quality="fast", formats=("glb", "usdz", "poster", "report"))
    output = _run(job, tiny_fixture_dir, tmp_path, http_server)
    root = tmp_path / "objects"
    keys = {name: url.removeprefix(root.as_uri() + "/") for name, url in output.assets.items()}
    prefix = "demo.myshopify.com/red-mug/job-formats/"
    assert keys == {"glb": prefix + "model.glb", "usdz": prefix + "model.usdz", "poster": prefix + "poster.png",
                    "report": prefix + "report.json"}
    assert (root / keys["poster"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / keys["usdz"]).read_bytes()[:2] == b"PK"
    report = json.loads((root / keys["report"]).read_text())
    assert report["validators"]["glb"]["status"] == "passed" and report["budgets"]["passed"] is True
    stats = output.stats
    assert stats["bytes"]["usdz"] == (root / keys["usdz"]).stat().st_size and stats["validators"]["usdz"] == "passed"
    assert stats["faces"] <= 20_000 and stats["glb_bytes"] == stats["bytes"]["glb"]
