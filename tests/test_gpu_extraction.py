"""The "gpu" extraction (pipeline.isosurface.device_extraction) against the dense reference, on Warp's CPU
backend (and on CUDA where there is one); `resolve_method` and the "auto" default; the fallback without Warp.

Warp's marching cubes gives PyMCubes' triangles (same cells, ambiguous cases and winding: equal face counts);
its vertices come from float32 interpolation, so they match the reference's within VERTEX_TOL, not bit for
bit: the 8-decimal merge may then keep or join a few vertices next to a grid node differently (VERTEX_COUNT_TOL),
and a colour queried at a vertex 2e-7 away may round to the next uint8 value.
"""

from __future__ import annotations

import inspect
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from pipeline.errors import JobRejected
from pipeline.isosurface.device_extraction import (
    dense_level_values,
    kernel_cache_dir,
    marching_cubes_on_device,
    merge_rounded_vertices_on_device,
    surface_box,
    warp_available,
)
from pipeline.isosurface.extraction import extract_mesh, extract_mesh_with_stats, resolve_method
from pipeline.isosurface.grid import GridQuery, grid_axis
from pipeline.isosurface.triangulation import triangulate
from pipeline.mesh_arrays import MeshArrays
from pipeline.reconstruct import reconstruct_meshes

RADIUS = 0.87
THRESHOLD = 25.0
SCENE_CODE = torch.zeros(3, 1, 2, 2)  # the analytic field ignores it; extraction only checks its shape
VERTEX_TOL = 5e-7  # measured at most 2.8e-7 (tiny fixture model, 64^3); full random model 2.3e-7 at 128^3
VERTEX_COUNT_TOL = 1e-3  # relative; measured +3 of 27,648 (tiny random, 64^3), +2 / +1 (full random, 128^3 / 256^3)
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


class EllipsoidField:
    """TripoSR.query stand-in in torch, on the points' device: an off-centre ellipsoid (distinct radii, so
    an axis swap shows), density_act = 25 exp(6 (1 - |(p - c) / a|)), colour = (p / r + 1) / 2."""

    renderer_radius = RADIUS
    centre = (0.12, -0.2, 0.05)
    radii = (0.55, 0.3, 0.42)

    def query(self, scene_code: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = points.to(torch.float64)
        scaled = (p - p.new_tensor(self.centre)) / p.new_tensor(self.radii)
        density = THRESHOLD * torch.exp(6.0 * (1.0 - scaled.norm(dim=1)))
        color = ((p / RADIUS + 1.0) / 2.0).clamp(0.0, 1.0)
        return density.to(torch.float32), color.to(torch.float32)


def signed_volume(mesh: MeshArrays) -> float:
    v = mesh.vertices.astype(np.float64)[mesh.faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def oriented_triangles(mesh: MeshArrays) -> np.ndarray:
    """Each face as (centroid, area vector): unchanged by rotating its vertex order, negated by a flip, and
    free of vertex indices (distinct vertices near a grid node can be closer than the two paths differ)."""
    corners = mesh.vertices.astype(np.float64)[mesh.faces]
    area = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]) / 2.0
    return np.concatenate([corners.mean(axis=1), area], axis=1)


def assert_same_mesh(gpu: MeshArrays, dense: MeshArrays) -> None:
    """The same triangles: equal face counts, each vertex and each oriented triangle of either within VERTEX_TOL
    of one of the other's, vertex counts within VERTEX_COUNT_TOL, colours within 1."""
    assert gpu.n_faces == dense.n_faces
    assert abs(gpu.n_vertices - dense.n_vertices) <= VERTEX_COUNT_TOL * dense.n_vertices
    assert cKDTree(dense.vertices).query(gpu.vertices)[0].max() <= VERTEX_TOL
    distance, nearest = cKDTree(gpu.vertices).query(dense.vertices)
    assert distance.max() <= VERTEX_TOL
    ours, theirs = oriented_triangles(gpu), oriented_triangles(dense)
    assert cKDTree(theirs).query(ours)[0].max() <= VERTEX_TOL
    assert cKDTree(ours).query(theirs)[0].max() <= VERTEX_TOL
    assert np.abs(gpu.colors[nearest].astype(int) - dense.colors).max() <= 1


def device_triangulate(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gpu path's marching cubes and merge on a V = density - threshold volume (fed as -V)."""
    negated = torch.from_numpy(np.ascontiguousarray(-values))
    box = surface_box(negated)
    assert box is not None
    vertices, faces = marching_cubes_on_device(negated, box, grid_axis(values.shape[0], RADIUS))
    vertices, faces = merge_rounded_vertices_on_device(vertices, faces)
    return vertices.numpy(), faces.numpy()


def uncoloured(vertices: np.ndarray, faces: np.ndarray) -> MeshArrays:
    return MeshArrays(vertices, faces.astype(np.int32), np.zeros(vertices.shape, dtype=np.uint8))


@pytest.fixture
def fresh_warp_check() -> Iterator[None]:
    """warp_available() is cached per process: forget it around a test that hides or breaks Warp."""
    warp_available.cache_clear()
    yield
    warp_available.cache_clear()


# ---------------------------------------------------------------- the surface equals the dense reference

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("resolution", [40, 57])
def test_gpu_equals_dense_on_an_off_centre_ellipsoid(device: str, resolution: int) -> None:
    dense = extract_mesh(EllipsoidField(), SCENE_CODE, resolution, method="dense")
    gpu, stats = extract_mesh_with_stats(EllipsoidField(), SCENE_CODE.to(device), resolution, method="gpu",
                                         chunk_size=10_000)
    assert stats.method == "gpu" and stats.points_queried == resolution**3 and stats.strides == (1,)
    assert gpu.vertices.dtype == np.float32 and gpu.faces.dtype == np.int32 and gpu.colors.dtype == np.uint8
    assert dense.n_faces > 1000
    assert_same_mesh(gpu, dense)
    assert signed_volume(gpu) > 0 and signed_volume(gpu) == pytest.approx(signed_volume(dense), rel=1e-6)


def test_auto_runs_gpu_on_cuda_and_fast_on_the_cpu() -> None:
    _, on_cpu = extract_mesh_with_stats(EllipsoidField(), SCENE_CODE, 48)
    assert on_cpu.method == "fast"
    if torch.cuda.is_available():
        _, on_cuda = extract_mesh_with_stats(EllipsoidField(), SCENE_CODE.cuda(), 48)
        assert on_cuda.method == "gpu"


@pytest.fixture(scope="module")
def reference(tiny_fixture_dir: Path) -> dict[str, np.ndarray]:
    with np.load(tiny_fixture_dir / "reference.npz") as data:
        return {key: data[key] for key in data.files}




@pytest.mark.parametrize("resolution", [32, 40])
def test_gpu_equals_dense_on_the_tiny_model(tiny_model: torch.nn.Module, reference: dict[str, np.ndarray],
                                            resolution: int) -> None:
    scene_code = torch.from_numpy(reference["scene_codes"][0])
    dense = extract_mesh(tiny_model, scene_code, resolution, method="dense")  # type: ignore[arg-type]
    gpu = extract_mesh(tiny_model, scene_code, resolution, method="gpu")  # type: ignore[arg-type]
    assert_same_mesh(gpu, dense)  # the official mesh's own 64^3 grid: the fixture-grid test below


@pytest.mark.parametrize("chunk_size", [0, 4096, 5000])
def test_device_grid_is_the_dense_grid_negated(tiny_model: torch.nn.Module, reference: dict[str, np.ndarray],
                                               chunk_size: int) -> None:
    """On the CPU the device grid is bitwise -(density - threshold) of the reference's chunked queries."""
    scene_code = torch.from_numpy(reference["scene_codes"][0])
    dense = GridQuery(tiny_model, scene_code, 24, chunk_size or 24**3).dense_density()  # type: ignore[arg-type]
    values = dense_level_values(tiny_model, scene_code, 24, THRESHOLD, chunk_size)  # type: ignore[arg-type]
    np.testing.assert_array_equal(values.numpy(), -(dense - np.float32(THRESHOLD)))


def test_warp_marching_cubes_gives_pymcubes_triangles_on_the_fixture_grid(reference: dict[str, np.ndarray]) -> None:
    values = reference["mc_density_grid"] - np.float32(THRESHOLD)
    gpu, cpu = uncoloured(*device_triangulate(values)), uncoloured(*triangulate(values, RADIUS))
    assert_same_mesh(gpu, cpu)
    assert gpu.n_faces == 38693  # the official count (SPEC §11); Warp on +V would give 38685


def test_exact_zeros_are_classified_as_pymcubes_does() -> None:
    """Values exactly at the level (snapped vertices, degenerate faces) still give the same triangles."""
    values = np.round(np.random.default_rng(3).standard_normal((20, 20, 20))).astype(np.float32)
    assert (values == 0).mean() > 0.3
    assert_same_mesh(uncoloured(*device_triangulate(values)), uncoloured(*triangulate(values, RADIUS)))


def test_device_merge_reproduces_trimesh_process_on_official_raw_output(reference: dict[str, np.ndarray]) -> None:
    vertices, faces = merge_rounded_vertices_on_device(torch.from_numpy(reference["mc_raw_vertices"]),
                                                       torch.from_numpy(reference["mc_raw_faces"]).to(torch.int64))
    np.testing.assert_array_equal(vertices.numpy(), reference["mesh_vertices"])
    np.testing.assert_array_equal(faces.numpy(), reference["mesh_faces"])


def test_gpu_field_without_surface_is_rejected_as_empty_mesh() -> None:
    class Empty(EllipsoidField):
        def query(self, scene_code: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.ones(points.shape[0]), torch.zeros(points.shape[0], 3)

    with pytest.raises(JobRejected) as rejected:
        extract_mesh(Empty(), SCENE_CODE, 32, method="gpu")
    assert rejected.value.code == "empty_mesh"


# ---------------------------------------------------------------- method resolution and the fallback

@pytest.mark.parametrize("method, device, available, expected", [
    ("auto", "cuda", True, "gpu"),
    ("auto", "cuda", False, "fast"),
    ("auto", "cpu", True, "fast"),
    ("auto", "cpu", False, "fast"),
    ("gpu", "cuda", True, "gpu"),
    ("gpu", "cpu", True, "gpu"),     # Warp's CPU backend: how CI runs the gpu path
    ("gpu", "cuda", False, "fast"),  # no Warp: the CPU path
    ("fast", "cuda", True, "fast"),
    ("dense", "cuda", True, "dense"),
    ("dense", "cpu", False, "dense"),
])
def test_resolve_method(method: str, device: str, available: bool, expected: str) -> None:
    assert resolve_method(method, torch.device(device), available) == expected  # type: ignore[arg-type]


def test_auto_is_the_default_method() -> None:
    for function in (extract_mesh, extract_mesh_with_stats, reconstruct_meshes):
        assert inspect.signature(function).parameters["method"].default == "auto"


@pytest.mark.usefixtures("fresh_warp_check")
def test_without_warp_gpu_runs_the_cpu_path_and_says_so_once(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "warp", None)  # `import warp` raises ImportError
    monkeypatch.setitem(sys.modules, "warp.geometry", None)
    caplog.set_level(logging.WARNING, logger="pipeline.isosurface.device_extraction")
    dense = extract_mesh(EllipsoidField(), SCENE_CODE, 40, method="dense")
    for _ in range(2):
        mesh, stats = extract_mesh_with_stats(EllipsoidField(), SCENE_CODE, 40, method="gpu")
        assert stats.method == "fast" and mesh.n_faces == dense.n_faces
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("warp-lang is not importable")


def test_a_warp_allocation_failure_is_an_out_of_memory_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """So the reconstruct stage sorts it with torch's own OOMs."""
    import warp.geometry

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Failed to allocate 4294967296 bytes on device 'cuda:0'")

    monkeypatch.setattr(warp.geometry.IsoSurfaceMarchingCubes, "extract", fail)
    with pytest.raises(torch.OutOfMemoryError, match="Warp marching cubes"):
        extract_mesh(EllipsoidField(), SCENE_CODE, 24, method="gpu")


def test_kernel_cache_is_warps_own_when_writable_else_a_temp_folder(tmp_path: Path) -> None:
    assert kernel_cache_dir({"HOME": str(tmp_path)}) is None
    assert (tmp_path / ".cache" / "warp").is_dir()
    assert kernel_cache_dir({"WARP_CACHE_PATH": str(tmp_path / "kernels")}) is None
    read_only = tmp_path / "a-file"
    read_only.write_text("not a folder")  # nothing can be created under it, even as root
    fallback = kernel_cache_dir({"HOME": str(read_only)})
    assert fallback is not None and fallback.is_relative_to(tempfile.gettempdir())
    assert kernel_cache_dir({"WARP_CACHE_PATH": str(read_only / "kernels")}) == fallback


@pytest.mark.slow
def test_gpu_equals_dense_on_a_full_size_random_model_at_128(full_random_checkpoint: Path) -> None:
    from pipeline.model import load_pretrained
    from pipeline.model.random_checkpoint import make_calibration_image

    model = load_pretrained(full_random_checkpoint)
    scene_code = model(make_calibration_image(model.config.cond_image_size))[0]
    dense = extract_mesh(model, scene_code, 128, method="dense")
    gpu, stats = extract_mesh_with_stats(model, scene_code, 128, method="gpu")
    assert stats.method == "gpu" and dense.n_faces > 100_000
    assert_same_mesh(gpu, dense)
