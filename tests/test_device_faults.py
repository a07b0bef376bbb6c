"""Device faults on the tiny TripoSR through the fault-injecting model (pipeline/testing/faulty_model.py):
out of memory splits the batch or shrinks the query chunk and gives every job the mesh it would have had;
what cannot fit, and a CUDA fault, become retried errors, never terminal ones; a fault marks the replica's
device faulty until it is replaced. Also the pure pieces: classification, the chunk schedule, the memory cap."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import JobRejected, Shop3dError, TransientError
from pipeline.model import TripoSR
from pipeline.model.device import cap_process_memory, memory_fraction, peak_memory_bytes, synchronize
from pipeline.model.device_faults import DeviceHealth, DeviceUnhealthy, OomPolicy, classify_fault
from pipeline.reconstruct import Reconstruction, reconstruct_meshes, warm_start
from pipeline.run import failpoints
from pipeline.run.stages import ReconstructRequest, reconstruct_batch
from pipeline.testing.faulty_model import Faults, FaultyModel
from tests.support.services import tiny_model

RESOLUTION = 32   # small grids: every test reconstructs real meshes, some several times
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_fixture_dir: Path) -> TripoSR:
    return tiny_model(tiny_fixture_dir)


@pytest.fixture(scope="module")
def photos(tiny_fixture_dir: Path) -> list[np.ndarray]:
    """Four different framed photos: the fixture's image, mirrored, flipped and turned."""
    with np.load(tiny_fixture_dir / "reference.npz") as arrays:
        image = arrays["image"]
    return [image, image[:, ::-1].copy(), image[::-1].copy(), np.rot90(image).copy()]


@pytest.fixture(scope="module")
def unfaulted(model: TripoSR, photos: list[np.ndarray]) -> list[Reconstruction]:
    results = reconstruct_meshes(model, photos, [RESOLUTION] * len(photos))
    return [meshes_only(result) for result in results]


def meshes_only(result: Reconstruction | Shop3dError) -> Reconstruction:
    if not isinstance(result, Reconstruction):
        raise AssertionError(f"expected a mesh, got {result!r}")
    return result


def assert_same_meshes(results: list[Reconstruction | Shop3dError], expected: list[Reconstruction]) -> None:
    assert len(results) == len(expected)
    for result, reference in zip(results, expected, strict=True):
        mesh = meshes_only(result).mesh
        np.testing.assert_array_equal(mesh.vertices, reference.mesh.vertices)
        np.testing.assert_array_equal(mesh.faces, reference.mesh.faces)
        np.testing.assert_array_equal(mesh.colors, reference.mesh.colors)


def assert_retried(results: list[Reconstruction | Shop3dError], code: str) -> None:
    for result in results:
        assert isinstance(result, TransientError) and not isinstance(result, JobRejected)
        assert result.code == code


# ----------------------------------------------------------------- out of memory

def test_forward_oom_splits_the_batch_and_every_job_gets_its_mesh(model: TripoSR, photos: list[np.ndarray],
                                                                  unfaulted: list[Reconstruction]) -> None:
    faulty = FaultyModel(model, Faults(forward_oom_from_batch=2))
    health = DeviceHealth(CPU)
    results = reconstruct_meshes(faulty, photos, [RESOLUTION] * 4, health=health)
    assert faulty.log.forward_batches == [4, 2, 1, 1, 2, 1, 1]   # halves, in order, down to single images
    assert_same_meshes(results, unfaulted)
    assert health.healthy


def test_forward_oom_even_alone_gives_each_job_a_retried_error(model: TripoSR, photos: list[np.ndarray]) -> None:
    faulty = FaultyModel(model, Faults(forward_oom_from_batch=1))
    health = DeviceHealth(CPU)
    results = reconstruct_meshes(faulty, photos, [RESOLUTION] * 4, health=health)
    assert faulty.log.forward_batches == [4, 2, 1, 1, 2, 1, 1]
    assert_retried(results, "gpu_out_of_memory")
    assert health.healthy   # memory is not a fault of the device: the replica stays


def test_extraction_oom_retries_with_smaller_chunks_for_the_same_mesh(model: TripoSR, photos: list[np.ndarray],
                                                                      unfaulted: list[Reconstruction]) -> None:
    faulty = FaultyModel(model, Faults(query_oom_above=5000))
    results = reconstruct_meshes(faulty, photos[:2], [RESOLUTION] * 2, chunk_size=65536)
    assert_same_meshes(results, unfaulted[:2])   # 65536 and 16384 ran out; 4096 fits
    assert faulty.log.ooms == 4


def test_extraction_oom_at_the_smallest_chunk_gives_a_retried_error(model: TripoSR,
                                                                    photos: list[np.ndarray]) -> None:
    faulty = FaultyModel(model, Faults(query_oom_above=1000))
    results = reconstruct_meshes(faulty, photos[:1], [RESOLUTION], chunk_size=65536)
    assert_retried(results, "gpu_out_of_memory")
    assert faulty.log.ooms == len(OomPolicy().chunk_sizes(65536)) == 3


# ----------------------------------------------------------------- CUDA faults and health

def test_cuda_fault_in_the_forward_gives_retried_errors_and_fails_health(model: TripoSR,
                                                                         photos: list[np.ndarray]) -> None:
    faulty = FaultyModel(model, Faults(cuda_fault_once="forward"))
    health = DeviceHealth(CPU)
    results = reconstruct_meshes(faulty, photos[:2], [RESOLUTION] * 2, health=health)
    assert_retried(results, "gpu_fault")
    assert faulty.log.forward_batches == [2]   # no split, no retry on a poisoned context
    assert not health.healthy and "illegal memory access" in (health.fault or "")
    with pytest.raises(DeviceUnhealthy):
        health.probe()


def test_cuda_fault_in_extraction_fails_that_and_every_later_image(model: TripoSR,
                                                                   photos: list[np.ndarray]) -> None:
    faulty = FaultyModel(model, Faults(cuda_fault_once="query"))
    health = DeviceHealth(CPU)
    results = reconstruct_meshes(faulty, photos[:2], [RESOLUTION] * 2, health=health)
    assert_retried(results, "gpu_fault")
    assert not health.healthy


def test_a_faulty_replica_refuses_batches_without_touching_the_device(model: TripoSR,
                                                                     photos: list[np.ndarray]) -> None:
    faulty = FaultyModel(model, Faults())
    health = DeviceHealth(CPU)
    health.mark_faulty("an earlier illegal memory access")
    requests = [ReconstructRequest(f"job-{i}", photo, RESOLUTION, False) for i, photo in enumerate(photos[:2])]
    results = reconstruct_batch(faulty, requests, method="fast", chunk_size=65536, health=health)
    assert_retried(results, "gpu_fault")
    assert faulty.log.forward_batches == []


def test_cuda_fault_failpoint_fires_once_per_job(model: TripoSR, photos: list[np.ndarray],
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the once-only marker lives under it
    monkeypatch.setenv(failpoints.ENV, "reconstruct.cuda_fault=job-a")
    requests = [ReconstructRequest("job-a", photos[0], RESOLUTION, False)]
    health = DeviceHealth(CPU)
    assert_retried(reconstruct_batch(model, requests, method="fast", chunk_size=65536, health=health), "gpu_fault")
    assert not health.healthy
    # the retry, on the replica that replaced this one (a fresh DeviceHealth), gets its mesh
    (retried,) = reconstruct_batch(model, requests, method="fast", chunk_size=65536, health=DeviceHealth(CPU))
    assert isinstance(retried, Reconstruction)


def test_health_probe_passes_on_a_healthy_cpu_model(model: TripoSR) -> None:
    health = DeviceHealth(model.device)
    health.probe()
    assert health.healthy and health.fault is None


@pytest.mark.parametrize(("exc", "kind"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "out_of_memory"),
    (RuntimeError("Failed to allocate 905969664 bytes on device 'cuda:0'"), "out_of_memory"),   # Warp
    (RuntimeError("Failed to allocate 905969664 bytes on device 'cpu'"), None),
    (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), "cuda_fault"),
    (RuntimeError("CUDA error: device-side assert triggered"), "cuda_fault"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), "cuda_fault"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"), None),
    (ValueError("images must be (B, H, W, 3) RGB"), None),
    (MemoryError(), None),   # host memory: not the device's
])
def test_exceptions_are_classified_by_type_and_message(exc: BaseException, kind: str | None) -> None:
    assert classify_fault(exc) == kind


# ----------------------------------------------------------------- the pure pieces

@pytest.mark.parametrize(("chunk_size", "sizes"), [
    (65536, [65536, 16384, 4096]), (0, [0, 65536, 16384, 4096]), (8192, [8192, 4096]), (5000, [5000, 4096]),
    (4096, [4096]), (1000, [1000]),
])
def test_oom_chunk_schedule_quarters_down_to_the_floor(chunk_size: int, sizes: list[int]) -> None:
    assert OomPolicy().chunk_sizes(chunk_size) == sizes


def test_memory_fraction_is_the_gpu_share_less_headroom() -> None:
    assert memory_fraction(0.25, headroom=0.1) == pytest.approx(0.225)
    assert memory_fraction(0.5, headroom=0.0) == 0.5
    assert memory_fraction(2.0, headroom=0.1) == pytest.approx(0.9)   # never more than the one card
    assert memory_fraction(0.0) is None
    with pytest.raises(ValueError):
        memory_fraction(0.25, headroom=1.0)
    with pytest.raises(ValueError):
        memory_fraction(-0.25)


def test_device_calls_are_no_ops_on_the_cpu(model: TripoSR) -> None:
    assert cap_process_memory(CPU, 0.225) is None
    assert peak_memory_bytes(CPU) is None
    synchronize(CPU)
    start = warm_start(model, gpu_share=0.25)
    assert start.memory_fraction is None and start.warmup_s > 0
