"""Khronos glTF-Validator from Python: `validate_glb(bytes) -> GltfReport`, via node and tools/validate_gltf.mjs.

The official validator exists only as Dart/JS, so it runs as a subprocess; node and the npm package
`gltf-validator` (package.json, installed by scripts/setup) must be present, else a clear error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]  # pipeline/assets/validation.py -> the checkout
VALIDATOR_SCRIPT = REPO_ROOT / "tools" / "validate_gltf.mjs"
VALIDATOR_PACKAGE = REPO_ROOT / "node_modules" / "gltf-validator"
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


def _find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise ValidatorUnavailable("node is not on PATH; install Node.js (scripts/setup uses it for the validator)")
    if not VALIDATOR_PACKAGE.is_dir():
        raise ValidatorUnavailable(f"npm package gltf-validator not found at {VALIDATOR_PACKAGE}; run `npm install`")
    return node


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
    node = _find_node()
    try:
        done = subprocess.run([node, str(VALIDATOR_SCRIPT), "-"], input=data, capture_output=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ValidatorUnavailable(f"glTF validator did not finish in {timeout_s:g} s") from exc
    if done.returncode not in (0, 1):
        stderr = done.stderr.decode("utf-8", "replace").strip()[-500:]
        raise ValidatorUnavailable(f"glTF validator failed (exit {done.returncode}): {stderr}")
    return parse_report(json.loads(done.stdout))
