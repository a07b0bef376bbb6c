"""The per-job QA report: what was shipped, how big, whether it validates and meets its preset's budgets.

Pure functions over numbers the exporter measured: `build_report` -> a JSON-ready dict stored beside
the model as report.json, `summarize_report` -> the small part the `completed` webhook carries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REPORT_VERSION = 1
MAX_MESSAGES = 10  # validator messages kept per file; the counts are always complete


@dataclass(frozen=True)
class BudgetCheck:
    """One limit of the preset against the measured value (faces, bytes or texture pixels per side)."""

    name: str
    limit: int
    value: int

    @property
    def passed(self) -> bool:
        return self.value <= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "value": self.value, "passed": self.passed}


@dataclass(frozen=True)
class ValidatorVerdict:
    """A validator's outcome for one file: `status` is passed | failed | unavailable | skipped."""

    status: str
    errors: int = 0
    warnings: int = 0
    messages: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "errors": self.errors, "warnings": self.warnings,
                "messages": list(self.messages[:MAX_MESSAGES])}


def verdict_from_counts(errors: int, warnings: int, messages: Sequence[str]) -> ValidatorVerdict:
    """`passed` when there are no errors (warnings are reported, not failed)."""
    return ValidatorVerdict("failed" if errors else "passed", errors, warnings, tuple(messages))


@dataclass(frozen=True)
class SurfaceCheck:
    """Edge topology of a triangle mesh: watertight = every edge joins exactly two faces."""

    boundary_edges: int       # edges used by one face: holes and open borders
    non_manifold_edges: int   # edges used by three or more faces
    consistently_wound: bool  # no directed edge repeats: neighbours agree on which side is outside

    @property
    def watertight(self) -> bool:
        return self.boundary_edges == 0 and self.non_manifold_edges == 0

    def to_dict(self) -> dict[str, Any]:
        return {"watertight": self.watertight, "boundary_edges": self.boundary_edges,
                "non_manifold_edges": self.non_manifold_edges, "consistently_wound": self.consistently_wound}


def check_surface(faces: np.ndarray) -> SurfaceCheck:
    """Count boundary and non-manifold edges of faces (F, 3) by vertex index (weld first: seams count)."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    undirected = np.sort(directed, axis=1)
    _, uses = np.unique(undirected, axis=0, return_counts=True)
    _, directed_uses = np.unique(directed, axis=0, return_counts=True)
    return SurfaceCheck(boundary_edges=int(np.sum(uses == 1)), non_manifold_edges=int(np.sum(uses > 2)),
                        consistently_wound=bool(np.all(directed_uses == 1)))


def build_report(*, job_id: str, preset: str, formats: Sequence[str], model: Mapping[str, Any],
                 surface: SurfaceCheck, files: Mapping[str, int], texture_sizes: Mapping[str, int],
                 validators: Mapping[str, ValidatorVerdict], budgets: Sequence[BudgetCheck],
                 adjustments: Sequence[str], timings_s: Mapping[str, float]) -> dict[str, Any]:
    """The QA report of one job. `model` holds ModelStats.to_dict() (faces, vertices, bbox in metres);
    `files` maps asset name -> bytes; `adjustments` says what was changed to meet a budget."""
    return {
        "report_version": REPORT_VERSION,
        "job_id": job_id,
        "preset": preset,
        "formats": list(formats),
        "model": dict(model),
        "surface": surface.to_dict(),
        "files": {name: {"bytes": size} for name, size in files.items()},
        "texture_sizes": dict(texture_sizes),
        "validators": {name: verdict.to_dict() for name, verdict in validators.items()},
        "budgets": {"passed": all(b.passed for b in budgets), "checks": [b.to_dict() for b in budgets]},
        "adjustments": list(adjustments),
        "timings_s": {stage: round(seconds, 4) for stage, seconds in timings_s.items()},
    }


def report_json(report: Mapping[str, Any]) -> bytes:
    """Indented UTF-8 JSON: read by people as often as by programs, and small either way."""
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8")


def summarize_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook's view: counts, sizes, verdicts and the budget outcome, without messages or timings."""
    model = report["model"]
    return {
        "faces": model["faces"],
        "vertices": model["vertices"],
        "size_m": model["size_m"],
        "bytes": {name: entry["bytes"] for name, entry in report["files"].items()},
        "watertight": report["surface"]["watertight"],
        "validators": {name: verdict["status"] for name, verdict in report["validators"].items()},
        "budgets_passed": report["budgets"]["passed"],
        "adjusted": bool(report["adjustments"]),
        "seconds": round(sum(report["timings_s"].values()), 3),
    }
