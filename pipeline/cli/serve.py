"""`shop3d serve`: the production graph on this one machine, GPU or not, until Ctrl-C.

Starts a local Ray with the GPUs torch can see (none: everything on the CPU, Reconstruct with
num_gpus 0), deploys the graph with resource options that fit one machine, serves HTTP on
127.0.0.1:<port>, and shuts Serve and Ray down cleanly on SIGINT/SIGTERM. The graph is named by its
import path, as serve_config.yaml names it, so the library has no import edge to the Serve shells.
Every non-secret setting read here (environment and `.env`) goes to the replicas as app args; the
secrets reach the local replicas through the environment they inherit.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from pipeline.settings import Settings

logger = logging.getLogger(__name__)

GRAPH_BUILDER = "deployments.app:build_app"   # (args mapping, deployment options) -> Serve Application


def visible_gpus() -> int:
    """CUDA devices torch can use here (0 without CUDA, whatever CUDA_VISIBLE_DEVICES says)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_options(num_gpus: int) -> dict[str, dict[str, Any]]:
    """Deployment options for one machine: fixed single CPU replicas; Reconstruct on a GPU share if any.

    The CPU shares add up to 1.6, so the graph fits a 2-core machine (Ray counts logical CPUs).
    """
    single = {"min_replicas": 1, "max_replicas": 1}
    reconstruct: dict[str, Any] = {"ray_actor_options": {"num_cpus": 1, "num_gpus": 0.25 if num_gpus else 0}}
    reconstruct["autoscaling_config"] = ({"min_replicas": 1, "max_replicas": 4 * num_gpus,
                                          "target_ongoing_requests": 2,
                                          "policy": {"policy_function": "deployments.autoscaling:backlog_policy"}}
                                         if num_gpus else single)
    return {"Ingress": {"ray_actor_options": {"num_cpus": 0.1}},
            "Matting": {"ray_actor_options": {"num_cpus": 0.25}, "autoscaling_config": single},
            "Reconstruct": reconstruct,
            "Publish": {"ray_actor_options": {"num_cpus": 0.25}, "autoscaling_config": single}}


def load_graph_builder(import_path: str = GRAPH_BUILDER) -> Callable[..., Any]:
    """The app builder named by `module:attribute`, imported the way `serve run` imports a config's."""
    module_name, _, attribute = import_path.partition(":")
    builder: Callable[..., Any] = getattr(importlib.import_module(module_name), attribute)
    return builder


def export_secrets(settings: Settings) -> None:
    """Secrets read from .env reach the local replicas through the environment they inherit (never logged)."""
    for env_name, value in settings.secret_environment().items():
        os.environ.setdefault(env_name, value)


def serve_locally(settings: Settings, *, cpu_only: bool = False, port: int = 8000) -> int:
    """Run until SIGINT/SIGTERM; returns the exit status."""
    import ray
    from ray import serve

    build_app = load_graph_builder()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    export_secrets(settings)
    num_gpus = 0 if cpu_only else visible_gpus()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    ray.init(num_gpus=num_gpus, include_dashboard=True, dashboard_host="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings.replica_overrides(), local_options(num_gpus)), name="shop3d", route_prefix="/")
        logger.info("shop3d serving on http://127.0.0.1:%d (%d GPU%s), polling %r; Ctrl-C stops", port, num_gpus,
                    "" if num_gpus == 1 else "s", settings.queue_name)
        stop.wait()
        logger.info("shutting down: in-flight jobs are handed back to the queue")
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]  # Ray's API is untyped
        ray.shutdown()
    return 0
