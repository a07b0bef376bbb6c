"""The graph a simulation runs: each stage's service time, limits, batching, autoscaling and start-up,
and the ingress's cap, as frozen descriptions (`pipeline.capacity.simulation` runs them).

The autoscaling rule is the one both policies share: desired = ceil(observed / target_ongoing_requests),
clamped to [min, max], where observed is the ongoing requests (plus the Redis backlog for the backlog
policy of `deployments/autoscaling.py`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Z95 = 1.6448536269514722   # the standard normal's 95th percentile


def lognormal_sigma(p50_s: float, p95_s: float) -> float:
    """sigma = ln(p95 / p50) / z95: the spread of a lognormal with that median and 95th percentile."""
    return math.log(p95_s / p50_s) / Z95 if p95_s > p50_s > 0 else 0.0


@dataclass(frozen=True)
class ServiceTime:
    """A stage's seconds of work per job alone on one replica: lognormal through the measured p50 and p95."""

    p50_s: float
    p95_s: float

    def sample(self, rng: random.Random) -> float:
        sigma = lognormal_sigma(self.p50_s, self.p95_s)
        return self.p50_s * math.exp(sigma * rng.gauss(0.0, 1.0)) if sigma else self.p50_s

    @property
    def mean_s(self) -> float:
        """E = p50·exp(sigma²/2), the lognormal's mean."""
        return self.p50_s * math.exp(lognormal_sigma(self.p50_s, self.p95_s) ** 2 / 2)


@dataclass(frozen=True)
class Scaling:
    """A stage's `autoscaling_config`; `counts_backlog` is the backlog policy (Reconstruct)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    counts_backlog: bool = False
    initial_replicas: int = 0       # serving at t = 0 (at least min_replicas): start in a steady state


@dataclass(frozen=True)
class StageModel:
    """One deployment: its service time, limits, batching and how long a new replica takes to serve."""

    name: str
    service: ServiceTime
    scaling: Scaling
    max_ongoing_requests: int
    parallelism: float = 1.0      # jobs' worth of work a replica does at once (one thread: 1)
    max_batch_size: int = 1       # > 1: one batch at a time, its work the sum of its jobs', finishing together
    batch_wait_s: float = 0.0
    startup_s: float = 0.0        # a replica's start (model load, warm-up) on a running node
    replicas_per_node: int = 0    # > 0: replicas past the running nodes' slots wait for a new node
    node_startup_s: float = 0.0


@dataclass(frozen=True)
class GraphModel:
    """The stages in order, the ingress's cap, and Serve's autoscaling clock."""

    stages: tuple[StageModel, ...]
    max_inflight: int
    overhead_s: float = 0.0        # per job outside the stages: claim, hops, state writes, settle
    node_cpus: float = 0.0         # > 0: every replica shares one node of this many CPUs (a local run)
    control_interval_s: float = 1.0
    look_back_s: float = 30.0      # Serve's look_back_period_s
    metrics_push_s: float = 10.0   # how stale the autoscaler's view is, at most
    record_every_s: float = 5.0
    latency_window_s: float = 300.0


def desired_replicas(observed: float, scaling: Scaling) -> int:
    """ceil(observed / target) clamped to [min, max]: `deployments.autoscaling.desired_replicas` (at least 1)
    for the backlog policy, where observed = ongoing + backlog; Serve's default policy otherwise."""
    wanted = max(1, math.ceil(max(0.0, observed) / scaling.target_ongoing_requests - 1e-9))
    return min(scaling.max_replicas, max(scaling.min_replicas, wanted))
