"""A multi-node Ray cluster on one machine, made the way an operator makes one: `ray start --head`, then
`ray start --address=...` per worker node, each raylet with its own ports and labels.

A node is "lost" by SIGKILL of its raylet and everything under it (workers, agents): what a dead
machine looks like to the GCS, which notices through its health checks. The cluster is torn down by
killing every process that names its temp dir, never with `ray stop` (that would stop any other Ray on
the machine, such as the test session's own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.testing.redis_server import free_port

RAY_CLI = str(Path(sys.executable).with_name("ray"))
SERVE_CLI = str(Path(sys.executable).with_name("serve"))


@dataclass
class RayNode:
    name: str
    labels: dict[str, str]
    node_manager_port: int
    alive: bool = True

    def raylet_pid(self) -> int | None:
        marker = f"--node_manager_port={self.node_manager_port}".encode()
        for pid, cmdline in _processes():
            if b"raylet" in cmdline.split(b"\0", 1)[0] and marker in cmdline:
                return pid
        return None


@dataclass
class LocalRayCluster:
    """Ray nodes on this machine; `env` is every node's environment (replicas inherit it)."""

    env: dict[str, str]
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="r", dir="/tmp")))
    nodes: list[RayNode] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, labels: dict[str, str], num_cpus: int) -> RayNode:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        return self._start("head", labels, num_cpus, 0, [
            "--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}", "--disable-usage-stats"])

    def add_node(self, name: str, labels: dict[str, str], num_cpus: int, num_gpus: int = 0) -> RayNode:
        return self._start(name, labels, num_cpus, num_gpus, [f"--address=127.0.0.1:{self.gcs_port}"])

    def _start(self, name: str, labels: dict[str, str], num_cpus: int, num_gpus: int, extra: list[str]) -> RayNode:
        node = RayNode(name, labels, free_port())
        argv = [RAY_CLI, "start", *extra, f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
                "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
                f"--node-manager-port={node.node_manager_port}", f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                "--min-worker-port=0", "--max-worker-port=0", f"--object-store-memory={200 * 1024**2}"]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"`ray start` of {name} failed:\n{done.stdout}\n{done.stderr}")
        self.nodes.append(node)
        return node

    def node(self, name: str) -> RayNode:
        return next(n for n in self.nodes if n.name == name and n.alive)

    def node_of(self, pid: int) -> RayNode | None:
        """The node whose raylet `pid` (a replica's worker process) descends from."""
        raylets = {n.raylet_pid(): n for n in self.nodes if n.alive}
        while pid > 1:
            if pid in raylets:
                return raylets[pid]
            pid = _parent(pid)
        return None

    def kill_node(self, node: RayNode) -> None:
        """SIGKILL the node's raylet and every process under it, all at once (a machine that vanished)."""
        raylet = node.raylet_pid()
        if raylet is None:
            raise RuntimeError(f"no raylet for node {node.name}")
        _kill([raylet, *_descendants(raylet)])
        node.alive = False

    def serve(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """The `serve` CLI against this cluster's dashboard (as an operator runs it)."""
        argv = [SERVE_CLI, *args]
        if args and args[0] in ("deploy", "status", "config", "shutdown"):
            argv += ["-a", self.dashboard_url]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def logs_dir(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"

    def shutdown(self) -> None:
        """Kill every process of this cluster: those naming its temp dir, and everything under them."""
        roots = [pid for pid, cmdline in _processes() if str(self.temp_dir).encode() in cmdline]
        roots += [pid for n in self.nodes if n.alive and (pid := n.raylet_pid()) is not None]
        _kill({p for root in roots for p in (root, *_descendants(root))})
        for node in self.nodes:
            node.alive = False


def _processes() -> Iterable[tuple[int, bytes]]:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(proc.name), (proc / "cmdline").read_bytes()


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, _ in _processes():
        children.setdefault(_parent(pid), []).append(pid)
    found, frontier = [], [root]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
