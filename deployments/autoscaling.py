"""Reconstruct autoscaling driven by the Redis backlog, not only by requests already in flight.

The ingress bounds its in-flight jobs, so the GPU tier would otherwise see at most `max_inflight`
requests however long the queue is. Each Reconstruct replica reports LLEN(QUEUE_NAME) as the custom
metric `redis_backlog`; this policy asks for enough replicas to hold the in-flight requests plus the
backlog at `target_ongoing_requests` each. Serve then applies min/max replicas, the up/down delays and
the scaling factors around it (the policy only proposes a number).
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingContext

BACKLOG_METRIC = "redis_backlog"


def desired_replicas(ongoing_requests: float, backlog: float, target_per_replica: float) -> int:
    """Replicas needed so that (ongoing + backlog) / replicas <= target; at least 1. Pure."""
    if target_per_replica <= 0:
        raise ValueError("target_ongoing_requests must be positive")
    return max(1, math.ceil((max(0.0, ongoing_requests) + max(0.0, backlog)) / target_per_replica))


def latest_backlog(ctx: AutoscalingContext) -> float:
    """The backlog as the replicas last saw it (every replica reads the same list: take the largest)."""
    metrics: dict[str, dict[Any, float]] = ctx.aggregated_metrics or {}
    per_replica = metrics.get(BACKLOG_METRIC, {})
    return max(per_replica.values(), default=0.0)


def backlog_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Serve custom autoscaling policy (`autoscaling_config.policy.policy_function`)."""
    if ctx.config is None:  # Serve always passes the deployment's autoscaling_config; a caller that does not is wrong
        raise ValueError("backlog_policy needs the deployment's autoscaling config in its context")
    backlog = latest_backlog(ctx)
    target = ctx.config.get_target_ongoing_requests()
    wanted = desired_replicas(ctx.total_num_requests, backlog, target)
    return wanted, {"backlog": backlog, "ongoing": ctx.total_num_requests}
