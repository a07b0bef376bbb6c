"""The package works installed, not only from the checkout: a regular (non-editable) install carries the glTF
validator's runner and the console's files, and finds the npm package by npm's conventions, not through the
repository layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO_ROOT


def test_an_installed_package_validates_a_glb(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
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
