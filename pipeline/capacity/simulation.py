"""A discrete-event simulation of the graph (`pipeline.capacity.graph`): the Redis backlog, the ingress's
in-flight cap, three stages of autoscaled replicas, and the latency each job sees. Deterministic for a seed.

A replica shares one thread's work (or `parallelism` threads') among the requests it holds, at most
`max_ongoing_requests`, the rest waiting at the handle; a batched stage runs one batch at a time. The
autoscaler sees the requests averaged over `look_back_s` as last pushed and applies Serve's delays.
"""

from __future__ import annotations

import functools
import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.capacity.graph import GraphModel, StageModel, desired_replicas
from pipeline.capacity.plan import SECONDS_PER_DAY

WORK_TOLERANCE_S = 1e-6    # work left below this is done (float rounding of the completion time)


@dataclass(frozen=True)
class Sample:
    """The system at time t; `p95_s` is over the jobs finished in the last latency window (nan if none)."""

    t: float
    backlog: int
    inflight: int
    replicas: Mapping[str, int]   # serving
    target: Mapping[str, int]     # the autoscaler's decision (serving + starting)
    p95_s: float
    completed: int


@dataclass(frozen=True)
class SimulationResult:
    samples: tuple[Sample, ...]
    latencies_s: tuple[float, ...]   # per job, in arrival order
    finished_at: tuple[float, ...]

    @property
    def makespan_s(self) -> float:
        """From the first arrival to the last completion."""
        return max(self.finished_at) - min(f - lat for f, lat in zip(self.finished_at, self.latencies_s, strict=True))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank q-quantile (0 <= q <= 1); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def poisson_arrivals(rate_steps: Sequence[tuple[float, float]], until_s: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process whose rate is piecewise constant: (start_s, jobs per s) steps."""
    times: list[float] = []
    bounds = [*(start for start, _ in rate_steps[1:]), until_s]
    for (start, rate), end in zip(rate_steps, bounds, strict=True):
        t = start
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                break
            times.append(t)
    return times


def burst_steps(jobs_per_day: float, factor: float, start_s: float, duration_s: float) -> list[tuple[float, float]]:
    """The base rate, `factor` times it from start_s for duration_s, then the base rate again."""
    base = jobs_per_day / SECONDS_PER_DAY
    return [(0.0, base), (start_s, base * factor), (start_s + duration_s, base)]


# ----- the event loop --------------------------------------------------------------------------------

@dataclass(eq=False)
class _Replica:
    stage: StageModel
    index: int                    # the stage's position in the graph
    ready_at: float
    draining: bool = False        # takes no new requests; leaves when it holds none
    timer_pending: bool = False   # batched: the batch-wait timer is running
    active: dict[int, float] = field(default_factory=dict)   # job -> work left (processor sharing)
    waiting: list[int] = field(default_factory=list)         # batched: accepted, not yet in a batch
    running: list[int] = field(default_factory=list)         # batched: the batch being run
    batch_left: float = 0.0                                  # batched: work left in the running batch
    updated_at: float = 0.0
    version: int = 0                                         # voids planned completions
    timer: int = 0                                           # voids a pending batch-wait timer

    def held(self) -> int:
        return len(self.active) + len(self.waiting) + len(self.running)


@dataclass(eq=False)
class _Stage:
    model: StageModel
    replicas: list[_Replica] = field(default_factory=list)
    queued: deque[int] = field(default_factory=deque)        # at the handle: every replica is full
    target: int = 0
    decided_at: float | None = None                          # when the current up/down wish began
    node_ready: list[float] = field(default_factory=list)
    seen: deque[tuple[float, float]] = field(default_factory=deque)   # (t, ongoing [+ backlog])


class _Simulation:
    """The mutable state of one run; `simulate` is the only way in."""

    def __init__(self, graph: GraphModel, arrivals: Sequence[float], seed: int) -> None:
        self.graph, self.rng = graph, random.Random(seed)
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.sequence = 0
        self.now = 0.0
        self.arrived = list(arrivals)
        self.backlog: deque[int] = deque()
        self.inflight = 0
        self.finished: dict[int, float] = {}
        self.recent: deque[tuple[float, float]] = deque()   # (finished at, latency)
        self.samples: list[Sample] = []
        self.share = 1.0   # the fraction of its demand every replica gets (below 1 on an oversubscribed node)
        self.stages = [_Stage(model) for model in graph.stages]
        for stage in self.stages:
            for _ in range(max(stage.model.scaling.min_replicas, stage.model.scaling.initial_replicas)):
                self._add_replica(stage, initial=True)
            stage.target = len(stage.replicas)

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, action))

    def run(self, until_s: float | None) -> SimulationResult:
        for job, t in enumerate(self.arrived):
            self.at(t, functools.partial(self._arrive, job))
        self.at(0.0, self._control)
        self.at(0.0, self._record)
        while self.events:
            when, _, action = heapq.heappop(self.events)
            if until_s is not None and when > until_s:
                break
            self.now = when
            action()
        latencies = tuple(self.finished[j] - self.arrived[j] for j in sorted(self.finished))
        return SimulationResult(tuple(self.samples), latencies, tuple(self.finished[j] for j in sorted(self.finished)))

    def _busy(self) -> bool:
        return len(self.finished) < len(self.arrived)

    # ----- jobs ----------------------------------------------------------------------------------------

    def _arrive(self, job: int) -> None:
        self.backlog.append(job)
        self._admit()

    def _admit(self) -> None:
        while self.backlog and self.inflight < self.graph.max_inflight:
            job = self.backlog.popleft()
            self.inflight += 1
            self.at(self.now + self.graph.overhead_s, functools.partial(self._submit, job, 0))

    def _submit(self, job: int, index: int) -> None:
        stage = self.stages[index]
        open_replicas = [r for r in stage.replicas if self._serving(r) and r.held() < stage.model.max_ongoing_requests]
        if not open_replicas:
            stage.queued.append(job)
            return
        self._assign(min(open_replicas, key=lambda r: r.held()), job)

    def _stage_done(self, replica: _Replica, jobs: list[int]) -> None:
        index = replica.index
        for job in jobs:
            if index + 1 < len(self.stages):
                self._submit(job, index + 1)
            else:
                self.finished[job] = self.now
                self.recent.append((self.now, self.now - self.arrived[job]))
                self.inflight -= 1
        self._pull(self.stages[index], replica)
        if replica.draining and not replica.held():
            self.stages[index].replicas.remove(replica)
        self._admit()

    # ----- replicas --------------------------------------------------------------------------------------

    def _serving(self, replica: _Replica) -> bool:
        return replica.ready_at <= self.now and not replica.draining

    def _pull(self, stage: _Stage, replica: _Replica) -> None:
        """Hand queued requests to this replica while it has room."""
        while stage.queued and self._serving(replica) and replica.held() < stage.model.max_ongoing_requests:
            self._assign(replica, stage.queued.popleft())

    def _assign(self, replica: _Replica, job: int) -> None:
        if replica.stage.max_batch_size > 1:
            replica.waiting.append(job)
            self._form_batch(replica, waited=False)
        else:
            self._update(replica, lambda: replica.active.update({job: replica.stage.service.sample(self.rng)}))

    # Work is in seconds of one thread. A replica runs min(jobs, parallelism) threads' worth, shared evenly
    # by its jobs (a batch is one item); with `node_cpus`, every replica's threads share that many CPUs.

    def _demand(self, replica: _Replica) -> float:
        if replica.stage.max_batch_size > 1:
            return replica.stage.parallelism if replica.running else 0.0
        return min(float(len(replica.active)), replica.stage.parallelism)

    def _rate(self, replica: _Replica) -> float:
        """Work done per second on each of the replica's items."""
        if replica.stage.max_batch_size > 1:
            return replica.stage.parallelism * self.share if replica.running else 0.0
        return self._demand(replica) / len(replica.active) * self.share if replica.active else 0.0

    def _update(self, replica: _Replica, change: Callable[[], None]) -> None:
        """Bring the work done up to now, apply `change`, then re-plan the next completions (of every
        replica when they share a node's CPUs, since any change moves everyone's share)."""
        shared = self.graph.node_cpus > 0
        touched = [r for s in self.stages for r in s.replicas] if shared else [replica]
        for r in touched:
            elapsed, rate = self.now - r.updated_at, self._rate(r)
            r.batch_left -= elapsed * rate if r.running else 0.0
            for job in r.active:
                r.active[job] -= elapsed * rate
            r.updated_at = self.now
        change()
        if shared:
            demand = sum(self._demand(r) for r in touched)
            self.share = min(1.0, self.graph.node_cpus / demand) if demand else 1.0
        for r in touched:
            r.version += 1
            rate = self._rate(r)
            left = r.batch_left if r.running else min(r.active.values(), default=0.0)
            if rate > 0:
                self.at(self.now + max(0.0, left) / rate, functools.partial(self._complete, r, r.version))

    def _complete(self, replica: _Replica, version: int) -> None:
        if version != replica.version:
            return
        done: list[int] = []

        def finish() -> None:
            if replica.running and replica.batch_left <= WORK_TOLERANCE_S:
                done.extend(replica.running)
                replica.running = []
            finished = [job for job, left in replica.active.items() if left <= WORK_TOLERANCE_S]
            for job in finished:
                del replica.active[job]
            done.extend(finished)

        self._update(replica, finish)
        self._form_batch(replica, waited=False)
        self._stage_done(replica, done)

    def _form_batch(self, replica: _Replica, waited: bool) -> None:
        """Serve's batcher: go when the batch is full or its wait is over, else wait for more."""
        if replica.running or not replica.waiting:
            return
        size = replica.stage.max_batch_size
        if len(replica.waiting) < size and not waited and replica.stage.batch_wait_s > 0:
            if not replica.timer_pending:   # the wait starts with the batch's first request
                replica.timer_pending = True
                timer = replica.timer
                self.at(self.now + replica.stage.batch_wait_s,
                        lambda: self._form_batch(replica, True) if timer == replica.timer else None)
            return
        replica.timer += 1   # a pending timer is void: this batch goes now
        replica.timer_pending = False

        def start() -> None:
            replica.running, replica.waiting = replica.waiting[:size], replica.waiting[size:]
            replica.batch_left = sum(replica.stage.service.sample(self.rng) for _ in replica.running)

        self._update(replica, start)

    def _add_replica(self, stage: _Stage, initial: bool = False) -> None:
        model, index = stage.model, self.stages.index(stage)
        node_at = self.now
        if model.replicas_per_node > 0:
            slot = len(stage.replicas)
            while slot // model.replicas_per_node >= len(stage.node_ready):
                stage.node_ready.append(self.now if initial else self.now + model.node_startup_s)
            node_at = max(self.now, stage.node_ready[slot // model.replicas_per_node])
        replica = _Replica(model, index, ready_at=self.now if initial else node_at + model.startup_s)
        stage.replicas.append(replica)
        if not initial:
            self.at(replica.ready_at, lambda: self._pull(stage, replica))

    def _remove_replica(self, stage: _Stage) -> None:
        """Serve stops starting replicas first, then the least busy; a busy one drains before it goes."""
        live = [r for r in stage.replicas if not r.draining]
        victim = min(live, key=lambda r: (r.ready_at <= self.now, r.held()))
        victim.draining = True
        if not victim.held():
            stage.replicas.remove(victim)

    # ----- the autoscaler and the recorder -------------------------------------------------------------

    def _control(self) -> None:
        graph = self.graph
        pushed = math.floor(self.now / graph.metrics_push_s) * graph.metrics_push_s
        for stage in self.stages:
            scaling = stage.model.scaling
            ongoing = sum(r.held() for r in stage.replicas) + len(stage.queued)
            stage.seen.append((self.now, ongoing + (len(self.backlog) if scaling.counts_backlog else 0)))
            while stage.seen and stage.seen[0][0] < pushed - graph.look_back_s:
                stage.seen.popleft()
            window = [value for t, value in stage.seen if t <= pushed]
            desired = desired_replicas(sum(window) / len(window) if window else 0.0, scaling)
            self._decide(stage, desired)
        if self._busy():
            self.at(self.now + graph.control_interval_s, self._control)

    def _decide(self, stage: _Stage, desired: int) -> None:
        """Serve's delay logic: act once the wish has held for the delay, on the wish of that moment."""
        scaling = stage.model.scaling
        if desired == stage.target:
            stage.decided_at = None
            return
        going_up = desired > stage.target
        stage.decided_at = self.now if stage.decided_at is None else stage.decided_at
        if self.now - stage.decided_at + 1e-9 < (scaling.upscale_delay_s if going_up else scaling.downscale_delay_s):
            return
        stage.target, stage.decided_at = desired, None
        while sum(not r.draining for r in stage.replicas) < desired:
            self._add_replica(stage)
        while sum(not r.draining for r in stage.replicas) > desired:
            self._remove_replica(stage)

    def _record(self) -> None:
        window = self.graph.latency_window_s
        while self.recent and self.recent[0][0] < self.now - window:
            self.recent.popleft()
        self.samples.append(Sample(
            self.now, len(self.backlog), self.inflight,
            {s.model.name: sum(self._serving(r) for r in s.replicas) for s in self.stages},
            {s.model.name: s.target for s in self.stages},
            percentile([latency for _, latency in self.recent], 0.95), len(self.finished)))
        if self._busy():
            self.at(self.now + self.graph.record_every_s, self._record)


def simulate(graph: GraphModel, arrivals: Sequence[float], *, seed: int = 0,
             until_s: float | None = None) -> SimulationResult:
    """Run jobs arriving (LPUSHed) at `arrivals` seconds through `graph` until all finish (or until_s)."""
    if not graph.stages or graph.max_inflight < 1:
        raise ValueError("a graph needs stages and max_inflight >= 1")
    return _Simulation(graph, sorted(arrivals), seed).run(until_s)
