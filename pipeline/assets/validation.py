"""Khronos glTF-Validator from Python: `validate_glb(bytes) -> GltfReport`, via node and validate_gltf.mjs.

The official validator exists only as Dart/JS, so it runs as a subprocess: the script ships inside this
package; the npm package `gltf-validator` is found where npm puts it, by npm's own conventions: a
`node_modules` in the working directory or one of its parents (a checkout after `npm install`), else the
global `npm root -g` (an image with `npm install -g gltf-validator`). Missing node or package: a clear
ValidatorUnavailable, which the QA report records as "unavailable".
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VALIDATOR_SCRIPT = Path(__file__).with_name("validate_gltf.mjs")
PACKAGE = "gltf-validator"
SEVERITIES = {0: "error", 1: "warning", 2: "info", 3: "hint"}


class ValidatorUnavailable(RuntimeError):
    """node or the gltf-validator package is missing, or the validator could not run."""


@dataclass(frozen=True)
class GltfMessage:
    """One validator issue: its code (e.g. ACCESSOR_INDEX_TRIANGLE_DEGENERATE), severity and where."""

    code: str
    severity: str  # "error" | "warning" | "info" | "hint"
    message: str
    pointer: str


@dataclass(frozen=True)
class GltfReport:
    """Counts of the validator's issues by severity, and every issue."""

    errors: int
    warnings: int
    infos: int
    messages: tuple[GltfMessage, ...]

    def codes(self, severity: str) -> list[str]:
        """Issue codes of one severity, for assertion messages and logs."""
        return [m.code for m in self.messages if m.severity == severity]


def node_modules_candidates(cwd: Path) -> list[Path]:
    """Local node_modules directories in the order node itself looks: `cwd`, then each parent."""
    return [directory / "node_modules" for directory in (cwd, *cwd.parents)]


@functools.cache
def _npm_global_root() -> Path | None:
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:
        done = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None


def find_validator() -> tuple[str, Path]:
    """(node executable, node_modules directory holding gltf-validator); ValidatorUnavailable says what is missing."""
    node = shutil.which("node")
    if node is None:
        raise ValidatorUnavailable("node is not on PATH; install Node.js (scripts/setup uses it for the validator)")
    found = next((c for c in node_modules_candidates(Path.cwd()) if (c / PACKAGE).is_dir()), None)
    if found is None:
        global_root = _npm_global_root()
        found = global_root if global_root is not None and (global_root / PACKAGE).is_dir() else None
    if found is None:
        raise ValidatorUnavailable(f"npm package {PACKAGE} not found in a node_modules above {Path.cwd()} or "
                                   "in `npm root -g`; run `npm install` (checkout) or `npm install -g gltf-validator`")
    return node, found


def parse_report(report: dict[str, Any]) -> GltfReport:
    """The validator's JSON report -> GltfReport."""
    issues = report.get("issues", {})
    messages = tuple(GltfMessage(code=str(m.get("code", "")), severity=SEVERITIES.get(m.get("severity"), "hint"),
                                 message=str(m.get("message", "")), pointer=str(m.get("pointer", "")))
                     for m in issues.get("messages", []))
    return GltfReport(errors=int(issues.get("numErrors", 0)), warnings=int(issues.get("numWarnings", 0)),
                      infos=int(issues.get("numInfos", 0)), messages=messages)


def validate_glb(data: bytes, timeout_s: float = 120.0) -> GltfReport:
    """Validate GLB (or glTF JSON) bytes with the Khronos validator.

    Invalid input (including bytes that are not glTF at all) gives a report with errors > 0;
    ValidatorUnavailable means node or the package is missing, or the validator itself failed.
    """
    node, modules = find_validator()
    try:
        done = subprocess.run([node, str(VALIDATOR_SCRIPT), "-"], input=data, capture_output=True,
                              timeout=timeout_s, check=False, env={**os.environ, "SHOP3D_NODE_MODULES": str(modules)})
    except subprocess.TimeoutExpired as exc:
        raise ValidatorUnavailable(f"glTF validator did not finish in {timeout_s:g} s") from exc
    if done.returncode not in (0, 1):
        stderr = done.stderr.decode("utf-8", "replace").strip()[-500:]
        raise ValidatorUnavailable(f"glTF validator failed (exit {done.returncode}): {stderr}")
    return parse_report(json.loads(done.stdout))
