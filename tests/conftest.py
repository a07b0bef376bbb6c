"""Shared fixtures: a real redis-server per session (flushed per test), a local HTTP server, a
writable copy of the tiny TripoSR fixture (../shared is read-only in CI)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from pipeline.testing.http_server import LocalHTTPServer
from pipeline.testing.redis_server import RedisServer
from tests.support.paths import TINY_FIXTURE_DIR
from tests.support.supabase_standin import TEST_SERVICE_KEY, SupabaseStandIn

if TYPE_CHECKING:
    import torch

# Per-test limits (pytest-timeout, seconds) of the tests that outgrow the default `timeout` in pyproject.toml.
# A session fixture's start-up (the local Ray, the 1.7 GB random checkpoint) counts against its first test.
TIMEOUT_S_BY_MARKER = {"ray": 600, "slow": 1800}
SERVE_TESTS = Path(__file__).parent / "serve"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/serve/ `ray` (a new file cannot forget), then give `ray` and `slow`
    tests their longer limit unless a test sets its own `timeout`."""
    for item in items:
        if item.path.is_relative_to(SERVE_TESTS):
            item.add_marker(pytest.mark.ray)
        limits = [limit for marker, limit in TIMEOUT_S_BY_MARKER.items() if item.get_closest_marker(marker)]
        if limits and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(max(limits)))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server, flushed before each test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer() as server:
        yield server


@pytest.fixture(scope="module")
def tiny_model(tiny_fixture_dir: Path) -> Iterator[torch.nn.Module]:
    """The tiny fixture loaded offline (its ViT config from the copy's own HF home); tests/model has its own."""
    from pipeline.model import load_pretrained

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(tiny_fixture_dir / "hf-home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield load_pretrained(tiny_fixture_dir)


@pytest.fixture(scope="session")
def tiny_fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of ../shared/triposr/fixtures/tiny (config.yaml, model.ckpt, reference.npz, hf-home)."""
    if not TINY_FIXTURE_DIR.is_dir():
        pytest.fail(f"tiny TripoSR fixture not found at {TINY_FIXTURE_DIR} (set SHOP3D_SHARED)")
    target = tmp_path_factory.mktemp("tiny") / "tiny"
    shutil.copytree(TINY_FIXTURE_DIR, target)
    return target


@pytest.fixture(scope="session")
def full_random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size (released dimensions, 1.7 GB) random-weight checkpoint, written once per session."""
    from pipeline.model.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("full-random") / "full", "full", seed=0)


@pytest.fixture(scope="module")
def standin_server() -> Iterator[SupabaseStandIn]:
    """One Supabase Storage stand-in per test module (a fake of third-party SaaS that cannot run here)."""
    with SupabaseStandIn(service_key=TEST_SERVICE_KEY) as server:
        yield server


@pytest.fixture
def standin(standin_server: SupabaseStandIn) -> SupabaseStandIn:
    """The module's stand-in server, emptied for this test."""
    standin_server.reset()
    return standin_server
