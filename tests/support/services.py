"""Real pipeline services for tests: the tiny TripoSR fixture, the tiny ONNX matting model through rembg,
a real SSRF-protected HTTP client that admits only the test server, and a local object store."""

from __future__ import annotations

from pathlib import Path

from pipeline.delivery.storage import LocalObjectStore, ObjectStore
from pipeline.intake.download import DownloadPolicy, allow_only_addresses, make_http_client
from pipeline.model import TripoSR, load_pretrained
from pipeline.run.runner import Intake, Services
from pipeline.run.stages import JobDefaults
from pipeline.settings import Settings
from pipeline.testing.matting_model import make_tiny_remover

_MODELS: dict[Path, TripoSR] = {}


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
