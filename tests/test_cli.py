"""The `shop3d` console script as a user runs it: a product photo served by a real local HTTP server ->
the tiny fixture checkpoint and the tiny ONNX matting model -> model.glb + summary.json; a job's formats and
real-world size from the command line; bad settings and an unloadable model as one line and exit code 3;
plus submit and status against a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from pxr import Usd, UsdGeom

from pipeline.assets.validation import validate_glb
from pipeline.cli.generate import job_metadata, parse_formats, parse_length
from pipeline.cli.main import EXIT_CONFIG, EXIT_USAGE, main
from pipeline.testing.http_server import LocalHTTPServer
from pipeline.testing.matting_model import make_product_photo, write_tiny_matting_onnx
from tests.test_export import load_glb
from tests.test_usdz import assert_arkit_clean, open_stage

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


def test_generate_makes_the_asked_formats_at_the_given_height(tiny_fixture_dir: Path, tmp_path: Path) -> None:
    photo = tmp_path / "mug.png"
    photo.write_bytes(make_product_photo(300, 300, image_format="PNG"))
    out = tmp_path / "out"
    done = subprocess.run([*SHOP3D, "generate", str(photo), "--quality", "fast", "--out", str(out), "--no-progress",
                           "--formats", "glb,usdz,poster,report", "--height", "11cm", "--width", "3.5in",
                           "--title", "Red Mug"], env=_env(tiny_fixture_dir, tmp_path), cwd=tmp_path,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = json.loads(done.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["metadata"] == {"productTitle": "Red Mug",
                                   "dimensions": {"width": 0.0889, "height": 0.11, "unit": "m"}}
    assert set(summary["assets"]) == {"glb", "usdz", "poster", "report"}
    assert summary["stats"]["formats"] == ["glb", "usdz", "poster", "report"]
    assert summary["stats"]["scale_basis"] == "height"          # height wins over width
    assert {p.name for p in out.iterdir()} == {"model.glb", "model.usdz", "poster.png", "report.json", "summary.json"}

    low, high = trimesh.load_scene(out / "model.glb", process=False).bounds   # world space, glTF +Y up
    assert high[1] - low[1] == pytest.approx(0.11, abs=1e-5)
    usdz = (out / "model.usdz").read_bytes()
    assert_arkit_clean(usdz)
    stage = open_stage(usdz, tmp_path)
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0 and UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    box = UsdGeom.BBoxCache(Usd.TimeCode.Default(), [UsdGeom.Tokens.default_]).ComputeWorldBound(
        stage.GetDefaultPrim()).ComputeAlignedRange()
    assert box.GetSize()[1] == pytest.approx(0.11, abs=1e-5)


@pytest.mark.parametrize(("text", "metres"), [
    ("11cm", 0.11), ("0.11m", 0.11), ("110mm", 0.11), ("4.3in", 0.10922), ('4.3"', 0.10922), (" 1 ft ", 0.3048),
    ("12.5 CM", 0.125), (".5m", 0.5), ("2 metres", 2.0), ("100m", 100.0)])
def test_parse_length_gives_metres(text: str, metres: float) -> None:
    assert parse_length(text) == pytest.approx(metres, abs=1e-12)


@pytest.mark.parametrize("text", ["11", "cm", "", "-3cm", "0cm", "0.0000000001mm", "101m", "1e3mm", "3 furlong",
                                  "11 cm cm", "eleven cm", "1,5cm"])
def test_parse_length_refuses_what_is_not_a_length_with_a_unit(text: str) -> None:
    with pytest.raises(ValueError, match=r"unit|outside"):
        parse_length(text)


def test_parse_formats_and_job_metadata() -> None:
    assert parse_formats("glb, USDZ,glb,") == ("glb", "usdz")
    for bad in ("obj", "glb,obj", "", ","):
        with pytest.raises(ValueError, match="subset of"):
            parse_formats(bad)
    assert job_metadata() == {}
    assert job_metadata("Lamp", depth_m=0.2) == {"productTitle": "Lamp", "dimensions": {"depth": 0.2, "unit": "m"}}


@pytest.mark.parametrize(("flag", "value", "says"), [("--height", "11", "argument --height: '11' is not a length"),
                                                     ("--depth", "3 furlong", "unknown unit 'furlong'"),
                                                     ("--formats", "glb,obj", "argument --formats: formats must be")])
def test_generate_refuses_a_bad_option_value_as_a_usage_error(flag: str, value: str, says: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["generate", "photo.jpg", flag, value])
    assert exited.value.code == EXIT_USAGE
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0]


def _stderr_lines(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    return done.stderr.decode().strip().splitlines()


@pytest.mark.parametrize(("settings", "line"), [
    ({"MAX_ATTEMPTS": "0", "CHUNK_SIZE": "many"},
     ("shop3d: bad settings: MAX_ATTEMPTS: Input should be greater than or equal to 1; "
      "CHUNK_SIZE: Input should be a valid integer, unable to parse string as an integer")),
    # pydantic's own text of this error repeats every input, the service key included
    ({"STORAGE_BACKEND": "supabase", "SUPABASE_SERVICE_ROLE_KEY": "sekrit-service-key"},
     "shop3d: bad settings: STORAGE_BACKEND=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"),
], ids=["field-errors", "cross-field-error"])
def test_bad_settings_are_one_line_without_values(settings: dict[str, str], line: str, tiny_fixture_dir: Path,
                                                  tmp_path: Path) -> None:
    env = _env(tiny_fixture_dir, tmp_path, **settings)
    command = ["generate", str(tmp_path / "photo.jpg"), "--no-progress"]
    done = subprocess.run([*SHOP3D, *command], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == EXIT_CONFIG
    assert _stderr_lines(done) == [line]

    verbose = subprocess.run([*SHOP3D, "-v", *command], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert verbose.returncode == EXIT_CONFIG
    assert b"Traceback (most recent call last)" in verbose.stderr and b"sekrit" not in verbose.stderr
    assert _stderr_lines(verbose)[-1] == line


@pytest.mark.parametrize(("settings", "says"), [
    ({"TSR_MODEL": "stabilityai/TripoSR"},
     "model unavailable (TSR_MODEL): TripoSR config: stabilityai/TripoSR/config.yaml is not in the Hugging Face"),
    ({"TSR_MODEL": "/no/such/model-dir"}, "model unavailable (TSR_MODEL): '/no/such/model-dir' is neither a model"),
], ids=["offline-hub-id", "missing-dir"])
def test_an_unloadable_model_is_one_line_and_exit_3(settings: dict[str, str], says: str, tiny_fixture_dir: Path,
                                                    tmp_path: Path) -> None:
    photo = tmp_path / "mug.png"
    photo.write_bytes(make_product_photo(64, 64, image_format="PNG"))
    hub = str(tmp_path / "empty-hf")   # HF_HUB_OFFLINE=1 (from _env) with an empty cache
    env = _env(tiny_fixture_dir, tmp_path, HF_HOME=hub, HF_HUB_CACHE=hub, **settings)
    done = subprocess.run([*SHOP3D, "generate", str(photo), "--out", str(tmp_path / "out"), "--no-progress"],
                          env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == EXIT_CONFIG
    (line,) = _stderr_lines(done)
    assert line.startswith(f"shop3d: {says}") and b"Traceback" not in done.stderr

    verbose = subprocess.run([*SHOP3D, "-v", "generate", str(photo), "--out", str(tmp_path / "out"),
                              "--no-progress"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert verbose.returncode == EXIT_CONFIG
    assert b"Traceback (most recent call last)" in verbose.stderr and b"ServicesUnavailable" in verbose.stderr
    assert _stderr_lines(verbose)[-1] == line


def test_an_unloadable_matting_model_is_reported_the_same_way(tiny_fixture_dir: Path, tmp_path: Path) -> None:
    photo = tmp_path / "mug.png"
    photo.write_bytes(make_product_photo(64, 64, image_format="PNG"))
    missing = tmp_path / "u2net" / "models" / "missing.onnx"
    done = subprocess.run([*SHOP3D, "generate", str(photo), "--out", str(tmp_path / "out"), "--no-progress"],
                          env=_env(tiny_fixture_dir, tmp_path, REMBG_MODEL=str(missing)), cwd=tmp_path,
                          capture_output=True, timeout=120)
    assert done.returncode == EXIT_CONFIG and b"Traceback" not in done.stderr
    # The TripoSR model loaded first, and said so in an INFO line; the failure is the last line.
    assert _stderr_lines(done)[-1] == (f"shop3d: matting model unavailable (REMBG_MODEL): REMBG_MODEL file {missing} "
                                       "does not exist")


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
