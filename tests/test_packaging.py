"""The package works installed, not only from the checkout: a regular (non-editable) install carries the glTF
validator's runner and the console's files, and finds the npm package by npm's conventions, not through the
repository layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.testing.matting_model import make_product_photo
from tests.support.paths import REPO_ROOT
from tests.test_cli import _env


def install_package(tmp_path: Path) -> Path:
    """A regular (non-editable) install of the project into a folder of its own; its dependencies are the
    test environment's."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    return target


def test_an_installed_package_validates_a_glb(tmp_path: Path) -> None:
    target = install_package(tmp_path)
    assert (target / "pipeline" / "assets" / "validate_gltf.mjs").is_file()
    static = target / "pipeline" / "console" / "static"   # the console page and its vendored <model-viewer>
    assert {"index.html", "console.js", "console.css"} <= {path.name for path in static.iterdir()}
    assert (static / "vendor" / "model-viewer.min.js").stat().st_size > 500_000
    code = ("import pipeline, trimesh; from pipeline.assets.validation import validate_glb; "
            "print(pipeline.__file__); "
            "print(validate_glb(trimesh.creation.box().export(file_type='glb')).errors)")
    # cwd: a checkout where `npm install` ran, the way a developer or an image's working dir holds node_modules
    done = subprocess.run([sys.executable, "-P", "-c", code], cwd=REPO_ROOT, env={"PYTHONPATH": str(target), "PATH":
                          "/usr/local/bin:/usr/bin:/bin"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    location, errors = done.stdout.split()
    assert location.startswith(str(target)) and errors == "0"



def test_a_job_run_from_outside_the_checkout_reports_the_validator_passed(tiny_fixture_dir: Path,
                                                                          tmp_path: Path) -> None:
    """As in the production image: the installed package, run from a folder with no node_modules above it,
    finds gltf-validator where `npm install -g` puts it (`npm root -g`). The global prefix here holds a link
    to the checkout's copy, so the test needs no network."""
    target = install_package(tmp_path)
    prefix = tmp_path / "npm-global"
    (prefix / "lib" / "node_modules").mkdir(parents=True)
    (prefix / "lib" / "node_modules" / "gltf-validator").symlink_to(REPO_ROOT / "node_modules" / "gltf-validator")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = elsewhere / "mug.png"
    photo.write_bytes(make_product_photo(300, 300, image_format="PNG"))
    env = {**_env(tiny_fixture_dir, tmp_path), "PYTHONPATH": str(target)}

    def validator_status(npm_prefix: Path, out: str) -> str:
        done = subprocess.run([sys.executable, "-P", "-m", "pipeline.cli", "generate", str(photo), "--quality",
                               "fast", "--formats", "glb,report", "--out", str(elsewhere / out), "--no-progress"],
                              cwd=elsewhere, env={**env, "NPM_CONFIG_PREFIX": str(npm_prefix)}, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        status: str = json.loads((elsewhere / out / "report.json").read_text())["validators"]["glb"]["status"]
        return status

    assert validator_status(prefix, "out") == "passed"
    # Without the global prefix nothing is found from here: the pass above came through `npm root -g`.
    assert validator_status(tmp_path / "empty-prefix", "bare") == "unavailable"
