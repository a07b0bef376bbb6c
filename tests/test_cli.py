"""The `shop3d` console script as a user runs it: a product photo served by a real local HTTP server ->
the tiny fixture checkpoint and the tiny ONNX matting model -> model.glb + summary.json; plus submit and
status against a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.assets.validation import validate_glb
from pipeline.testing.http_server import LocalHTTPServer
from pipeline.testing.matting_model import make_product_photo, write_tiny_matting_onnx
from tests.test_export import load_glb

SHOP3D = [sys.executable, "-m", "pipeline.cli"]


def _env(tiny_fixture_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    u2net_home = tmp_path / "u2net"
    model = write_tiny_matting_onnx(u2net_home / "models" / "tiny.onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "BACKEND_", "WEBHOOK_"))}
    env.update({"TSR_MODEL": str(tiny_fixture_dir), "REMBG_MODEL": str(model), "U2NET_HOME": str(u2net_home),
                "HF_HUB_OFFLINE": "1", "ALLOW_PRIVATE_URLS": "true", **extra})
    return env


def test_generate_from_url_writes_a_valid_upright_coloured_glb(tiny_fixture_dir: Path, tmp_path: Path,
                                                                http_server: LocalHTTPServer) -> None:
    url = http_server.serve_bytes("/products/red-mug.jpg", make_product_photo(640, 480), "image/jpeg")
    out = tmp_path / "out"
    done = subprocess.run([*SHOP3D, "generate", url, "--quality", "fast", "--out", str(out), "--no-progress"],
                          env=_env(tiny_fixture_dir, tmp_path), cwd=tmp_path, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "u2net"]   # no stray ./storage beside them

    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(done.stdout)
    assert summary["image"] == {"url": url, "index": 0, "skipped": []}
    assert set(summary["timings_s"]) >= {"prepare", "forward", "extract", "export", "upload"}
    glb = (out / "model.glb").read_bytes()
    assert summary["stats"]["glb_bytes"] == len(glb)
    assert validate_glb(glb).errors == 0

    mesh = load_glb(glb)
    low, high = mesh.bounds
    assert low[1] == pytest.approx(0.0, abs=1e-6)                   # stands on the floor (glTF +Y up)
    assert abs(low[0] + high[0]) < 1e-4 and abs(low[2] + high[2]) < 1e-4  # centred horizontally
    colors = np.asarray(mesh.visual.vertex_attributes["color"])   # COLOR_0 beside the material
    assert colors.shape == (len(mesh.vertices), 3) and colors.std() > 0  # real per-vertex colours
    assert len(mesh.faces) == summary["stats"]["faces"] <= 20_000


def test_generate_from_local_file_names_the_product_after_it(tiny_fixture_dir: Path, tmp_path: Path) -> None:
    photo = tmp_path / "Blue Vase.png"
    photo.write_bytes(make_product_photo(300, 300, color=(30, 60, 200), image_format="PNG"))
    out = tmp_path / "out"
    done = subprocess.run([*SHOP3D, "generate", str(photo), "--quality", "fast", "--out", str(out),
                           "--no-progress"], env=_env(tiny_fixture_dir, tmp_path), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (out / "model.glb").stat().st_size == json.loads(done.stdout)["stats"]["glb_bytes"]


def test_generate_reports_a_bad_photo_with_its_code(tiny_fixture_dir: Path, tmp_path: Path,
                                                    http_server: LocalHTTPServer) -> None:
    url = http_server.serve_bytes("/page", b"<html>hello</html>", "text/html")
    done = subprocess.run([*SHOP3D, "generate", url, "--out", str(tmp_path / "out"), "--no-progress"],
                          env=_env(tiny_fixture_dir, tmp_path), capture_output=True, timeout=300)
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "content_type_not_allowed"
    assert b"content_type_not_allowed" in done.stderr


def test_generate_refuses_a_missing_file(tiny_fixture_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run([*SHOP3D, "generate", str(tmp_path / "nope.jpg"), "--no-progress"],
                          env=_env(tiny_fixture_dir, tmp_path), capture_output=True, timeout=300)
    assert done.returncode == 1 and b"neither an http(s) URL nor an existing file" in done.stderr


def test_submit_then_status(redis_url: str, tmp_path: Path, tiny_fixture_dir: Path) -> None:
    env = _env(tiny_fixture_dir, tmp_path, REDIS_URL=redis_url, QUEUE_NAME="jobs-cli")
    done = subprocess.run([*SHOP3D, "submit", "https://cdn.example.com/a.jpg", "--shop", "s.myshopify.com",
                           "--product-id", "gid://shopify/Product/7", "--handle", "lamp", "--job-id", "job-cli-1",
                           "--title", "Lamp"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "job-cli-1"

    import redis
    raw = redis.Redis.from_url(redis_url).lindex("jobs-cli", 0)
    message = json.loads(raw)
    assert message["task"] == "generate_3d_model" and message["kwargs"]["job_id"] == "job-cli-1"
    assert message["kwargs"]["metadata"] == {"productTitle": "Lamp"}

    state = subprocess.run([*SHOP3D, "status", "job-cli-1"], env=env, capture_output=True, timeout=60)
    assert state.returncode == 0 and json.loads(state.stdout)["status"] == "queued"
    missing = subprocess.run([*SHOP3D, "status", "job-unknown"], env=env, capture_output=True, timeout=60)
    assert missing.returncode == 1


def test_submit_rejects_an_invalid_job(redis_url: str, tmp_path: Path, tiny_fixture_dir: Path) -> None:
    env = _env(tiny_fixture_dir, tmp_path, REDIS_URL=redis_url)
    done = subprocess.run([*SHOP3D, "submit", "https://cdn.example.com/a.jpg", "--shop", "bad shop/..",
                           "--product-id", "1", "--handle", "x"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1 and b"invalid_job" in done.stderr


def test_model_random_writes_a_loadable_tiny_checkpoint(tmp_path: Path) -> None:
    done = subprocess.run([*SHOP3D, "model", "random", "--size", "tiny", str(tmp_path / "ckpt")],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert Path(done.stdout.decode().strip()) == tmp_path / "ckpt"
    from pipeline.model import load_pretrained

    assert load_pretrained(tmp_path / "ckpt").config.cond_image_size > 0
