"""Sizing formulas: replicas, nodes, in-flight jobs and Redis load for a target rate and latency.

Every function is pure and its docstring gives its formula, so each number of docs/scaling.md can be
redone by hand. Rates are jobs per second, times are seconds. The dynamics (autoscaling delays,
start-up, bursts) are the simulation's job (`pipeline.capacity.simulation`); these are the steady state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

SECONDS_PER_DAY = 86_400.0


def arrival_rate(jobs_per_day: float) -> float:
    """λ = jobs_per_day / 86,400: the mean arrival rate in jobs per second."""
    if jobs_per_day < 0:
        raise ValueError("jobs_per_day must not be negative")
    return jobs_per_day / SECONDS_PER_DAY


def jobs_in_system(rate_per_s: float, seconds_in_system: float) -> float:
    """Little's law, L = λ·W: the mean number of jobs inside when λ arrive per second and each stays W."""
    return rate_per_s * seconds_in_system


def replica_seconds_per_job(device_seconds_per_job: float, device_share: float) -> float:
    """s = d / f: a replica holding a fraction f of a device that needs d device-seconds per job takes
    d / f seconds per job once every share of the device is busy (four 0.25-GPU replicas time-slice one GPU)."""
    if not 0 < device_share <= 1:
        raise ValueError("device_share must be in (0, 1]")
    return device_seconds_per_job / device_share


def replicas_needed(rate_per_s: float, seconds_per_job: float, utilisation: float, parallelism: float = 1.0) -> int:
    """R = ceil(λ·s / (p·u)), at least 1: replicas of a stage with s seconds of work per job, p jobs' worth of
    work done at once per replica, each busy a fraction u of the time (u < 1 leaves room for queues)."""
    if not 0 < utilisation <= 1 or parallelism <= 0:
        raise ValueError("utilisation must be in (0, 1] and parallelism positive")
    return max(1, math.ceil(rate_per_s * seconds_per_job / (parallelism * utilisation) - 1e-9))


def stage_capacity(replicas: int, seconds_per_job: float, parallelism: float = 1.0) -> float:
    """μ = R·p / s: the most jobs per second R replicas of a stage can finish."""
    return replicas * parallelism / seconds_per_job


def nodes_needed(replicas: int, per_replica: float, per_node: float) -> int:
    """N = ceil(R·r / n): nodes of a pool for R replicas that each ask r of a resource that a node has n of."""
    if per_node <= 0:
        raise ValueError("per_node must be positive")
    return math.ceil(replicas * per_replica / per_node - 1e-9)


@dataclass(frozen=True)
class StageLimit:
    """A stage's replica ceiling and the requests the autoscaler lets each replica hold."""

    max_replicas: int
    target_ongoing_requests: float


def max_inflight(limits: Iterable[StageLimit]) -> int:
    """M = Σ max_replicas·max(1, target_ongoing_requests) over the stages: every stage can hold its full share
    at once (a smaller M starves the GPU tier while the backlog policy asks for replicas). A target below 1
    still counts one request per replica: a replica holding none is idle."""
    return math.ceil(sum(limit.max_replicas * max(1.0, limit.target_ongoing_requests) for limit in limits))


def erlang_c(servers: int, offered_load: float) -> float:
    """P(wait) of an M/M/c queue with c servers and offered load a = λ·s (Erlang C); 1 once a >= c.
    Computed through the Erlang B recursion, B(k) = a·B(k-1) / (k + a·B(k-1)), which stays finite for large c."""
    if offered_load >= servers:
        return 1.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return servers * blocking / (servers - offered_load * (1 - blocking))


def wait_quantile(q: float, servers: int, rate_per_s: float, seconds_per_job: float) -> float:
    """t_q of the wait in M/M/c: P(W > t) = C·exp(-(c/s - λ)·t), so t_q = ln(C / (1 - q)) / (c/s - λ),
    0 when C <= 1 - q, infinite when c/s <= λ. A yardstick: real service times vary less than exponential."""
    spare = servers / seconds_per_job - rate_per_s
    if spare <= 0:
        return math.inf
    waiting = erlang_c(servers, rate_per_s * seconds_per_job)
    return 0.0 if waiting <= 1 - q else math.log(waiting / (1 - q)) / spare


def burst_backlog(base_rate: float, factor: float, duration_s: float, capacity_rate: float) -> float:
    """B = max(0, (k·λ - μ)·D): jobs left waiting after D seconds of k times the base rate λ, with capacity μ."""
    return max(0.0, (factor * base_rate - capacity_rate) * duration_s)


def drain_seconds(backlog: float, base_rate: float, capacity_rate: float) -> float:
    """T = B / (μ - λ): how long a backlog B takes to clear once arrivals are back at λ; infinite if μ <= λ."""
    if backlog <= 0:
        return 0.0
    return math.inf if capacity_rate <= base_rate else backlog / (capacity_rate - base_rate)


def burst_capacity_needed(base_rate: float, factor: float, duration_s: float, max_wait_s: float) -> float:
    """μ >= k·λ·D / (D + T): the capacity that must already serve when a burst of k times λ for D seconds
    begins, so that its last job (first in, first out) waits at most T: (k·λ - μ)·D / μ <= T."""
    return factor * base_rate * duration_s / (duration_s + max_wait_s)


# ----- Redis ---------------------------------------------------------------------------------------

# pipeline.jobs.index's `index_job`, run by every state write: TIME; ZADD, ZREMRANGEBYSCORE, ZREMRANGEBYRANK
# and EXPIRE on the recent ZSET; HGET status; the same four on the job's status ZSET; ZREM from the other three.
INDEX_JOB_COMMANDS = 1 + 4 + 1 + 4 + 3
# pipeline.jobs.state's `_WRITE_STATE` setting fields, nothing deleted: EVAL, HSET, EXPIRE, then index_job.
WRITE_STATE_COMMANDS = 1 + 2 + INDEX_JOB_COMMANDS


@dataclass(frozen=True)
class RedisStep:
    """One step of a job's happy path against Redis: client round trips and the commands Redis runs
    for them (a script's call and every command inside it)."""

    what: str
    round_trips: int
    commands: int


# One job, one attempt, completed, read from the code: queue/consumer.py, queue/scripts.py, jobs/state.py,
# run/progress.py, delivery/reporting.py. A retry or a dead letter costs more; a duplicate costs less.
REDIS_STEPS: tuple[RedisStep, ...] = (
    RedisStep("heartbeat SET before each claim", 1, 1),
    RedisStep("BLMOVE queue -> processing list", 1, 1),
    RedisStep("CLAIM script: HGET status, SET lock NX PX, HINCRBY claims, EXPIRE", 1, 1 + 4),
    RedisStep("claimed state: _WRITE_STATE with HDEL and HSETNX created_at", 1, WRITE_STATE_COMMANDS + 2),
    RedisStep("recorded result? HGET", 1, 1),
    RedisStep("progress: prepare, reconstruct, export, upload (_WRITE_STATE each)", 4, 4 * WRITE_STATE_COMMANDS),
    RedisStep("record the result (_WRITE_STATE)", 1, WRITE_STATE_COMMANDS),
    RedisStep("webhook already delivered? HGET", 1, 1),
    RedisStep("record the delivery outcome (_WRITE_STATE)", 1, WRITE_STATE_COMMANDS),
    RedisStep("SETTLE ack: EXISTS, LREM, HDEL claims, GET+DEL lock, HDEL retry_at, HSET, EXPIRE, index_job", 1,
              1 + 8 + INDEX_JOB_COMMANDS),
)


def redis_commands_per_job(inflight_per_consumer: float) -> float:
    """c = Σ REDIS_STEPS commands + (1 + 2·L) when L > 0: before each BLMOVE a consumer renews the locks of
    the L jobs it is running (RENEW_LOCKS: GET + PEXPIRE each), so a claim costs more the more run at once."""
    renew = 1 + 2 * inflight_per_consumer if inflight_per_consumer > 0 else 0.0
    return sum(step.commands for step in REDIS_STEPS) + renew


def redis_round_trips_per_job(inflight_per_consumer: float) -> int:
    """Client round trips of one job: Σ REDIS_STEPS round trips, plus the lock renewal when L > 0."""
    return sum(step.round_trips for step in REDIS_STEPS) + (1 if inflight_per_consumer > 0 else 0)


def redis_background_per_s(consumers: int, reconstruct_replicas: int, *, heartbeat_every_s: float = 10.0,
                           reap_every_s: float = 10.0, observe_every_s: float = 5.0,
                           backlog_every_s: float = 6.0) -> float:
    """b = consumers·(1/heartbeat + ~(5 + 2·consumers)/reap + 2/observe) + replicas/backlog_read: commands
    per second with no job running. Per consumer (an Ingress): the heartbeat SET, a reaper pass (PROMOTE
    with its ZRANGEBYSCORE, SCAN, LRANGE, a REAP with its EXISTS per other consumer), two LLENs for the
    gauges; per Reconstruct replica, one LLEN per metric record (Serve: look_back_period_s × 0.2 = 6 s)."""
    per_consumer = 1 / heartbeat_every_s + (4 + 2 * (consumers - 1)) / reap_every_s + 2 / observe_every_s
    return consumers * per_consumer + reconstruct_replicas / backlog_every_s


def redis_commands_per_s(rate_per_s: float, commands_per_job: float, background_per_s: float) -> float:
    """ops = λ·c + b: commands per second at λ jobs per second."""
    return rate_per_s * commands_per_job + background_per_s


def redis_state_bytes(jobs_per_day: float, state_ttl_s: float, bytes_per_job: float) -> float:
    """M = jobs_per_day·(ttl / 86,400)·m: each job's state hash lives ttl seconds after its last write, so a
    day's jobs times the days of TTL are kept at once, m bytes each (MEMORY USAGE of a completed job)."""
    return jobs_per_day * (state_ttl_s / SECONDS_PER_DAY) * bytes_per_job


def redis_backlog_bytes(backlog_jobs: float, message_bytes: float) -> float:
    """Q = B·m: the queue list's payload while B messages of m bytes wait (list overhead not counted)."""
    return backlog_jobs * message_bytes


# ----- one stage -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StagePlan:
    """A stage's replica counts at the trough, the mean and the peak rate, and its autoscaling target."""

    name: str
    seconds_per_job: float
    parallelism: float
    min_replicas: int
    mean_replicas: int
    max_replicas: int
    target_ongoing_requests: float

    @property
    def limit(self) -> StageLimit:
        return StageLimit(self.max_replicas, self.target_ongoing_requests)


def size_stage(name: str, rate_per_s: float, seconds_per_job: float, *, utilisation: float, trough_factor: float,
               peak_factor: float, target_ongoing_requests: float, parallelism: float = 1.0) -> StagePlan:
    """min, mean, max replicas = replicas_needed(k·λ, s, u, p) for k = trough, 1 and peak factor."""
    def needed(factor: float) -> int:
        return replicas_needed(factor * rate_per_s, seconds_per_job, utilisation, parallelism)

    return StagePlan(name, seconds_per_job, parallelism, needed(trough_factor), needed(1.0), needed(peak_factor),
                     target_ongoing_requests)


# ----- bytes through the ingress -----------------------------------------------------------------------

def framed_image_bytes(side_px: int) -> int:
    """3·S²: the framed picture Matting hands on, (S, S, 3) uint8; S follows the photo's foreground."""
    return 3 * side_px * side_px


def mesh_bytes(vertices: int, faces: int) -> int:
    """15·V + 12·F: MeshArrays' float32 (V, 3) vertices, uint8 (V, 3) colours and int32 (F, 3) faces."""
    return 15 * vertices + 12 * faces


def ingress_bytes_per_s(rate_per_s: float, bytes_per_job: float) -> float:
    """2·λ·b: with every hop awaited, each stage's output b enters the Ingress once and leaves it once."""
    return 2 * rate_per_s * bytes_per_job
