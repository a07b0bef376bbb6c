"""Every file of one job from its native-frame mesh: GLB, USDZ, poster PNG and the QA report, within budgets.

    assets = export_assets(mesh_native, get_preset("quality"), job.metadata, job.formats,
                           color_fn=ColorField.from_model(model, scene_code), job_id=job.job_id)
    for name, file in assets.files.items(): store.put(object_key(job, file.filename), file.data, file.content_type)

Formats follow the job (`formats.DEFAULT_FORMATS` when it names none); `EXPORTERS` maps each model
format to its writer. The GLB is always built (its stats and validation feed the report) but only
shipped when asked for. A file over its byte budget first gets a smaller texture, then fewer faces;
each step is written into the report.

No Draco or meshopt compression: every preset meets its budget uncompressed (the quality GLB is
about a third of 15 MB, mostly its PNG, which neither compresses), compressed meshes need a decoder
in every viewer and Draco quantises positions; DracoPy is maintained, meshoptimizer's binding is alpha.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.assets import report as qa
from pipeline.assets.formats import CONTENT_TYPES, FILENAMES, OutputFormat, resolve_formats
from pipeline.assets.geometry import (
    NATIVE_TO_GLTF,
    Dimensions,
    ScaleChoice,
    choose_scale,
    clean_mesh,
    decimate,
    drop_small_fragments,
    orient_for_gltf,
    parse_dimensions,
    scale_and_place,
)
from pipeline.assets.glb import write_glb
from pipeline.assets.poster.render import render_poster
from pipeline.assets.texture import ColorFunction, TexturedMesh, bake_texture
from pipeline.assets.usdz import UsdUnavailable, check_usdz, to_usdz
from pipeline.assets.validation import ValidatorUnavailable, validate_glb
from pipeline.errors import JobRejected
from pipeline.mesh_arrays import MeshArrays
from pipeline.presets import Preset

logger = logging.getLogger(__name__)

# Model format -> writer of its bytes (Y up, metres); the poster is a render and the report is JSON.
EXPORTERS: dict[OutputFormat, Callable[[MeshArrays | TexturedMesh], bytes]] = {"glb": write_glb, "usdz": to_usdz}
MAX_BUDGET_STEPS = 6           # texture halvings plus decimations before a budget is declared unreachable
DECIMATION_STEP = 0.7          # each over-budget decimation keeps this share of the faces


@dataclass(frozen=True)
class ExportFrame:
    """exported = factor * NATIVE_TO_GLTF @ native - offset: the glTF frame (Y up, metres) of one job."""

    factor: float
    offset: tuple[float, float, float]

    def to_native(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) exported points -> the model's native frame, where its colour field is defined."""
        native: np.ndarray = ((np.asarray(points, np.float64) + self.offset) / self.factor) @ NATIVE_TO_GLTF
        return native


def prepare_with_frame(mesh_native: MeshArrays, max_faces: int,
                       dimensions: Dimensions | None) -> tuple[MeshArrays, ScaleChoice, ExportFrame]:
    """Native marching-cubes mesh -> clean, decimated, Y-up, metre-sized mesh standing on y = 0, its
    scale and the frame that maps it back (the texture bake looks colours up in the native frame).

    Raises `empty_mesh` when nothing usable is left, `export_failed` when decimation fails.
    """
    mesh = clean_mesh(mesh_native)
    if mesh.n_faces == 0:
        raise JobRejected("empty_mesh", "the reconstructed surface has no usable triangles")
    oriented = orient_for_gltf(decimate(drop_small_fragments(mesh), max_faces))
    extents = oriented.vertices.max(axis=0).astype(np.float64) - oriented.vertices.min(axis=0)
    scale = choose_scale(extents, dimensions)
    placed = scale_and_place(oriented, scale.factor)
    # scale_and_place keeps vertex order, so its translation is read back rather than re-derived.
    offset = (oriented.vertices.astype(np.float64) * scale.factor - placed.vertices).mean(axis=0)
    return placed, scale, ExportFrame(scale.factor, (float(offset[0]), float(offset[1]), float(offset[2])))


def dimensions_or_default(metadata: Mapping[str, Any] | None, job_id: str) -> Dimensions | None:
    """The job's real-world dimensions, or None (the default size) when absent or unusable (logged)."""
    # Dimensions are optional shop metadata: a bad value should not throw away a finished model.
    try:
        return parse_dimensions(metadata)
    except ValueError as exc:
        logger.warning("job %s: ignoring metadata dimensions (%s); using the default size", job_id, exc)
        return None


@dataclass(frozen=True)
class ModelStats:
    """What the webhook and QA report say about an exported model; lengths in metres."""

    faces: int
    vertices: int
    glb_bytes: int
    bbox_min_m: tuple[float, float, float]
    bbox_max_m: tuple[float, float, float]
    scale_basis: str  # "height" | "largest_horizontal" | "default"

    @classmethod
    def of(cls, mesh: MeshArrays, glb_bytes: int, scale: ScaleChoice) -> ModelStats:
        low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
        return cls(faces=mesh.n_faces, vertices=mesh.n_vertices, glb_bytes=glb_bytes,
                   bbox_min_m=(float(low[0]), float(low[1]), float(low[2])),
                   bbox_max_m=(float(high[0]), float(high[1]), float(high[2])), scale_basis=scale.basis)

    @property
    def size_m(self) -> tuple[float, float, float]:
        """Width (x), height (y), depth (z) of the bounding box."""
        low, high = self.bbox_min_m, self.bbox_max_m
        return high[0] - low[0], high[1] - low[1], high[2] - low[2]

    def to_dict(self) -> dict[str, Any]:
        return {"faces": self.faces, "vertices": self.vertices, "glb_bytes": self.glb_bytes,
                "bbox_min_m": list(self.bbox_min_m), "bbox_max_m": list(self.bbox_max_m),
                "size_m": [round(x, 6) for x in self.size_m], "scale_basis": self.scale_basis}


@dataclass(frozen=True)
class AssetFile:
    """One stored file of a job: its asset name (glb/usdz/poster/report), file name, type and bytes."""

    name: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ExportedAssets:
    """The files to upload, the final GLB mesh (Y up, metres), its stats and the QA report."""

    files: dict[str, AssetFile]
    mesh: MeshArrays
    stats: ModelStats
    report: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        """The report's webhook summary (`completed` event stats)."""
        return qa.summarize_report(self.report)


@dataclass
class _Run:
    """Mutable state of one export: timings, budget adjustments and the bakes made so far."""

    job_id: str
    color_fn: ColorFunction | None
    frame: ExportFrame
    timings: dict[str, float] = field(default_factory=dict)
    adjustments: list[str] = field(default_factory=list)
    # (mesh, size, bake): the mesh itself is held, so an identity match can never be a recycled id().
    bakes: list[tuple[MeshArrays, int, TexturedMesh]] = field(default_factory=list)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def model_for(self, mesh: MeshArrays, texture_size: int) -> MeshArrays | TexturedMesh:
        """The mesh itself (size 0) or its bake at texture_size, baked once per mesh and size."""
        if texture_size == 0:
            return mesh
        for baked_mesh, size, baked in self.bakes:
            if baked_mesh is mesh and size == texture_size:
                return baked
        with self.timed("bake"):
            baked = bake_texture(mesh, texture_size, self.color_fn, self.frame.to_native, job_id=self.job_id)
        self.bakes.append((mesh, texture_size, baked))
        return baked


def _write_within_budget(run: _Run, fmt: OutputFormat, mesh: MeshArrays, texture_size: int, max_bytes: int,
                         min_texture: int) -> tuple[bytes, MeshArrays | TexturedMesh, MeshArrays]:
    """Write `fmt`; while over max_bytes halve the texture (not below min_texture), else decimate."""
    for _ in range(MAX_BUDGET_STEPS):
        model = run.model_for(mesh, texture_size)
        with run.timed(fmt):
            data = EXPORTERS[fmt](model)
        if len(data) <= max_bytes:
            return data, model, mesh
        if texture_size and texture_size // 2 >= min_texture:
            run.adjustments.append(f"{fmt}: {len(data)} bytes over {max_bytes}; texture {texture_size} -> "
                                   f"{texture_size // 2}")
            texture_size //= 2
        else:
            target = max(4, int(mesh.n_faces * DECIMATION_STEP))
            run.adjustments.append(f"{fmt}: {len(data)} bytes over {max_bytes}; faces {mesh.n_faces} -> {target}")
            with run.timed("decimate"):
                mesh = decimate(mesh, target)
        logger.warning("job %s: %s", run.job_id, run.adjustments[-1])
    raise JobRejected("export_failed", f"{fmt.upper()} stays over the {max_bytes}-byte budget")


def _texture_size(model: MeshArrays | TexturedMesh) -> int:
    return model.texture_size if isinstance(model, TexturedMesh) else 0


def _validate(run: _Run, data: dict[str, bytes]) -> dict[str, qa.ValidatorVerdict]:
    """Khronos validator on the GLB, usdchecker's validators on the USDZ; a missing tool is 'unavailable'."""
    verdicts = {}
    with run.timed("validate_glb"):
        try:
            gltf = validate_glb(data["glb"])
            verdicts["glb"] = qa.verdict_from_counts(gltf.errors, gltf.warnings,
                                                     gltf.codes("error") + gltf.codes("warning"))
        except ValidatorUnavailable as exc:
            verdicts["glb"] = qa.ValidatorVerdict("unavailable", messages=(str(exc),))
    if "usdz" in data:
        with run.timed("validate_usdz"):
            try:
                usdz = check_usdz(data["usdz"])
                verdicts["usdz"] = qa.verdict_from_counts(usdz.errors, usdz.warnings, usdz.messages)
            except UsdUnavailable as exc:
                verdicts["usdz"] = qa.ValidatorVerdict("unavailable", messages=(str(exc),))
    for name, verdict in verdicts.items():
        if verdict.status == "failed":
            logger.warning("job %s: %s fails validation: %s", run.job_id, name, ", ".join(verdict.messages[:5]))
    return verdicts


def export_assets(mesh_native: MeshArrays, preset: Preset, metadata: Mapping[str, Any] | None = None,
                  formats: Sequence[str] | None = None, *, color_fn: ColorFunction | None = None,
                  job_id: str = "-", validate: bool = True,
                  stage_timings: Mapping[str, float] | None = None) -> ExportedAssets:
    """Native marching-cubes mesh -> the job's files within the preset's budgets, plus the QA report.

    `color_fn` (native-frame colours, e.g. `pipeline.model.color_field.ColorField`) feeds the baked
    textures; without it they interpolate vertex colours. `stage_timings` (earlier stages, seconds) join the report's.
    Raises `empty_mesh`, or `export_failed` when a budget cannot be met; ValueError on unknown formats.
    """
    chosen = resolve_formats(formats)
    started = time.perf_counter()
    mesh, scale, frame = prepare_with_frame(mesh_native, preset.max_faces, dimensions_or_default(metadata, job_id))
    run = _Run(job_id=job_id, color_fn=color_fn, frame=frame, timings={"geometry": time.perf_counter() - started})
    data: dict[str, bytes] = {}
    data["glb"], glb_model, mesh = _write_within_budget(run, "glb", mesh, preset.texture_size,
                                                        preset.max_glb_bytes, preset.min_texture_size)
    textures = {"glb": _texture_size(glb_model)}
    if "usdz" in chosen:
        data["usdz"], usdz_model, _ = _write_within_budget(run, "usdz", mesh, preset.usdz_texture_size,
                                                           preset.max_usdz_bytes, preset.min_texture_size)
        textures["usdz"] = _texture_size(usdz_model)
    if "poster" in chosen:
        with run.timed("poster"):
            data["poster"] = render_poster(glb_model, preset.poster_size)
    verdicts = _validate(run, data) if validate else {"glb": qa.ValidatorVerdict("skipped")}
    stats = ModelStats.of(mesh, len(data["glb"]), scale)
    budgets = [qa.BudgetCheck("faces", preset.max_faces, mesh.n_faces),
               qa.BudgetCheck("glb_bytes", preset.max_glb_bytes, len(data["glb"])),
               qa.BudgetCheck("glb_texture_px", preset.texture_size, textures["glb"])]
    if "usdz" in data:
        budgets += [qa.BudgetCheck("usdz_bytes", preset.max_usdz_bytes, len(data["usdz"])),
                    qa.BudgetCheck("usdz_texture_px", preset.usdz_texture_size, textures["usdz"])]
    report = qa.build_report(job_id=job_id, preset=preset.name, formats=chosen, model=stats.to_dict(),
                             surface=qa.check_surface(mesh.faces), files={k: len(v) for k, v in data.items()},
                             texture_sizes=textures, validators=verdicts, budgets=budgets,
                             adjustments=run.adjustments, timings_s={**(stage_timings or {}), **run.timings})
    data["report"] = qa.report_json(report)
    files: dict[str, AssetFile] = {name: AssetFile(name, FILENAMES[name], CONTENT_TYPES[name], data[name])
                                   for name in chosen}
    logger.info("job %s: exported %s (%d faces; %s)", job_id, ", ".join(chosen), mesh.n_faces,
                ", ".join(f"{name} {len(file.data)} B" for name, file in files.items()))
    return ExportedAssets(files=files, mesh=mesh, stats=stats, report=report)
