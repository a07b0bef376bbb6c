"""Real pipeline services for tests: the tiny TripoSR fixture, the tiny ONNX matting model through rembg,
a real SSRF-protected HTTP client that admits only the test server, and a local object store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.delivery.storage import LocalObjectStore, ObjectStore
from pipeline.intake.download import DownloadPolicy, allow_only_addresses, make_http_client
from pipeline.model import TripoSR, load_pretrained
from pipeline.run.runner import Intake, Services
from pipeline.run.stages import JobDefaults
from pipeline.settings import Settings
from pipeline.testing.matting_model import make_tiny_remover, write_tiny_matting_onnx
from tests.support.paths import TINY_FIXTURE_DIR

_MODELS: dict[Path, TripoSR] = {}


@dataclass(frozen=True)
class TinyModelFiles:
    """The model files a Ray graph loads by path: a writable copy of the tiny TripoSR fixture and the tiny
    ONNX matting model under its own rembg home (replicas need `U2NET_HOME` set to `u2net_home`)."""

    tsr_dir: Path
    u2net_home: Path
    matting: Path

    @classmethod
    def write(cls, work: Path) -> TinyModelFiles:
        tsr_dir = work / "tiny"
        shutil.copytree(TINY_FIXTURE_DIR, tsr_dir)
        u2net_home = work / "u2net"
        return cls(tsr_dir, u2net_home, write_tiny_matting_onnx(u2net_home / "models" / "tiny.onnx"))


def tiny_model(checkpoint_dir: Path) -> TripoSR:
    """The tiny checkpoint loaded once per test session (it is read-only after loading)."""
    if checkpoint_dir not in _MODELS:
        _MODELS[checkpoint_dir] = load_pretrained(checkpoint_dir)
    return _MODELS[checkpoint_dir]


def test_policy(port: int, **overrides: object) -> DownloadPolicy:
    """The production download policy, except that 127.0.0.1:<port> (the test server) is admitted."""
    options: dict[str, object] = {"attempts": 2, "retry_delay_s": 0.01, "timeout_s": 5.0}
    options.update(overrides)
    return DownloadPolicy(address_validator=allow_only_addresses(("127.0.0.1", port)), **options)  # type: ignore[arg-type]


def make_services(checkpoint_dir: Path, workdir: Path, server_port: int,
                  store: ObjectStore | None = None) -> Services:
    """Services as a worker builds them, on the tiny models; the caller closes them (`aclose`)."""
    policy = test_policy(server_port)
    if store is None:  # a store passed in is the caller's to set up (or to leave broken on purpose)
        store = LocalObjectStore(workdir / "objects")
        store.ensure_ready()
    defaults = Settings(_env_file=None)
    intake = Intake(make_tiny_remover(workdir / "u2net"), make_http_client(policy), policy, defaults.max_image_pixels)
    return Services(model=tiny_model(checkpoint_dir), intake=intake, store=store,
                    defaults=JobDefaults.from_settings(defaults))
