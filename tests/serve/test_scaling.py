"""Placement and autoscaling on a real local Ray with ONE logical GPU: four Reconstruct replicas at
0.25 GPU share it and a fifth waits; a Redis backlog scales Reconstruct up and, once drained, down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from pipeline.testing.graph import SMALL_CPU, Backend, small_options, wait_for
from pipeline.testing.matting_model import make_product_photo
from pipeline.testing.redis_server import RedisServer
from tests.serve.conftest import RayCluster, app_args, replica_states, running_replicas
from tests.serve.test_graph import job_fields, readme_message

pytestmark = pytest.mark.ray


def test_four_quarter_gpu_replicas_share_one_gpu_and_a_fifth_waits(ray_cluster: RayCluster,
                                                                    own_redis: RedisServer, tmp_path: Path) -> None:
    import ray
    from ray import serve

    from deployments.reconstruct import Reconstruct

    backend = Backend(tmp_path / "objects")
    overrides = app_args(ray_cluster, own_redis.url, backend).overrides()
    app = Reconstruct.options(num_replicas=5, ray_actor_options={**SMALL_CPU, "num_gpus": 0.25}).bind(overrides)
    serve._run(app, _blocking=False, name="packing", route_prefix=None)
    try:
        wait_for(lambda: running_replicas("packing", "Reconstruct") == 4, "four replicas running", 180)
        wait_for(lambda: ray.available_resources().get("GPU", 0.0) == 0.0, "the GPU fully allocated", 30)
        states = replica_states("packing", "Reconstruct")
        assert states.get("RUNNING") == 4 and sum(states.values()) == 5, states
        assert states.get("PENDING_ALLOCATION", 0) + states.get("STARTING", 0) == 1, states
    finally:
        serve.delete("packing")
        backend.stop()


# Ray warns that a 1 s look-back is below `metrics_interval_s`, a field it has deprecated itself; replicas push
# metrics every 0.5 s here (RAY_ENV), which is what the short look-back is for.
@pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")
def test_redis_backlog_scales_reconstruct_up_then_back_down(ray_cluster: RayCluster, own_redis: RedisServer,
                                                             tmp_path: Path) -> None:
    from ray import serve

    from deployments.app import build_app

    backend = Backend(tmp_path / "objects")
    photo = backend.server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    autoscaling = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1, "upscale_delay_s": 0,
                   "downscale_delay_s": 3, "look_back_period_s": 1,
                   "policy": {"policy_function": "deployments.autoscaling:backlog_policy"}}
    options = small_options(autoscaling_config=autoscaling)
    # One job in flight at a time: only the Redis backlog can explain a scale-up.
    args = app_args(ray_cluster, own_redis.url, backend, max_inflight=1)
    serve.run(build_app(args, options), name="scaling", route_prefix=None)
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert running_replicas("scaling", "Reconstruct") == 1
        ids = [f"s-{i}" for i in range(8)]
        for job_id in ids:
            client.lpush("celery", readme_message(job_fields(job_id, [photo])))
        peak = 0

        def scaled_up() -> bool:
            nonlocal peak
            peak = max(peak, running_replicas("scaling", "Reconstruct"))
            return peak >= 2

        wait_for(scaled_up, "Reconstruct scaled up by the backlog", 120, 0.5)
        wait_for(lambda: all(client.hget(f"shop3d:job:{j}", "status") == b"completed" for j in ids),
                 "backlog drained", 400, 1.0)
        wait_for(lambda: running_replicas("scaling", "Reconstruct") == 1, "scaled back down to 1", 120, 0.5)
        assert client.llen("celery") == 0
        assert all(len(backend.events(j, "completed")) == 1 for j in ids)
        assert json.loads(client.hget(f"shop3d:job:{ids[-1]}", "stats"))["faces"] > 0
    finally:
        serve.delete("scaling")
        client.close()
        backend.stop()
