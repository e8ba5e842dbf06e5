"""A mesh: one host serving many SSH nodes, each an alias in `~/.ssh/config`.

Each node is a server whose id is its alias, with a queue of that name, its backend at
`ssh://alias` and a heartbeat of its own; all of them run in one Celery worker, whose threads
they share, and whose SSH connections (one per node) one `Tunnels` keeps. `run_mesh` keeps
that worker serving the nodes the config names: it watches the file, and when the set of nodes
changes it restarts the worker warmly (running jobs finish; a node taken out has its record
removed, so `status` shows it offline)."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from workers.backends.build import ssh_options
from workers.heartbeat import HeartbeatThread
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings, per_model
from workers.tailscale import NOT_ON_TAILNET
from workers.transport import Tunnels

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 2.0  # how often the SSH config's modification time is looked at
STOP_WAIT_S = 60.0  # a warm shutdown lets running jobs finish; past this the worker is killed
PATTERN_CHARS = frozenset("*?!")


# Which nodes -------------------------------------------------------------------------------------


def host_aliases(config_text: str) -> list[str]:
    """The aliases of an OpenSSH client config's `Host` lines, in order, without the patterns
    (`Host *`, `Host *.lan`, `Host !x`), which name no one node."""
    aliases: list[str] = []
    for line in config_text.splitlines():
        words = line.strip().replace("=", " ", 1).split(None, 1)
        if len(words) != 2 or words[0].lower() != "host":
            continue
        for alias in shlex.split(words[1], comments=True):
            if not PATTERN_CHARS & set(alias) and alias not in aliases:
                aliases.append(alias)
    return aliases


def select_nodes(aliases: list[str], patterns: list[str], names: list[str]) -> list[str]:
    """The aliases matched by any of `patterns` (fnmatch, case-sensitive as SSH's), and those
    of `names` that the config has; in the config's order."""
    chosen = set(names)
    return [
        alias
        for alias in aliases
        if alias in chosen or any(fnmatch.fnmatchcase(alias, p) for p in patterns)
    ]


def read_nodes(config: Path, patterns: list[str], names: list[str]) -> list[str]:
    """The nodes the config at `config` names now; a missing file names none."""
    try:
        text = config.read_text()
    except FileNotFoundError:
        return []
    return select_nodes(host_aliases(text), patterns, names)


# The nodes inside the worker ---------------------------------------------------------------------


def node_address(settings: WorkerSettings, alias: str) -> str:
    port = per_model(dict(settings.mesh_ports), alias)
    return f"ssh://{alias}/:{port}" if port else f"ssh://{alias}"


def node_settings(settings: WorkerSettings, alias: str) -> WorkerSettings:
    """The settings of one node: the mesh's, with the node's id and its backend's address."""
    address = node_address(settings, alias)
    field_name = {"ollama": "ollama_url", "openai": "model_server_url", "pool": "pool_url"}.get(
        settings.backend
    )
    if field_name is None:
        raise ValueError(f"a mesh serves ollama, openai or pool backends, not {settings.backend}")
    return settings.model_copy(update={"server_id": alias, field_name: address})


def node_capacity(settings: WorkerSettings) -> int:
    return settings.capacity or settings.concurrency


@dataclass
class MeshNodes:
    """The runtimes and heartbeats of a mesh worker's nodes, sharing one set of tunnels."""

    settings: WorkerSettings
    booted_at: float
    tunnels: Tunnels = field(init=False)
    heartbeats: list[HeartbeatThread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tunnels = Tunnels(ssh_options(self.settings))

    def start(self) -> list[WorkerRuntime]:
        from workers import runtime as worker_runtime  # noqa: PLC0415 - the registry itself

        runtimes = []
        capacity = node_capacity(self.settings)
        for alias in self.settings.mesh_nodes:
            rt = WorkerRuntime.build(node_settings(self.settings, alias), alias, self.tunnels)
            worker_runtime.install(rt)
            # A node's own tailnet is not this host's: its record names none.
            beat = HeartbeatThread(rt, capacity, self.booted_at, tailnet=lambda: NOT_ON_TAILNET)
            beat.start()
            self.heartbeats.append(beat)
            runtimes.append(rt)
            log.info(
                "server=%s mesh node up: %s=%s capacity=%d",
                alias, rt.backend.kind, rt.backend.address, capacity,
            )  # fmt: skip
        return runtimes

    def stop(self) -> None:
        from workers import runtime as worker_runtime  # noqa: PLC0415

        for beat in self.heartbeats:
            beat.stop()
            log.info("server=%s mesh node down: record removed", beat.rt.server_id)
            rt = worker_runtime.uninstall(beat.rt.server_id)
            if rt is not None:
                rt.close()
        self.heartbeats = []
        self.tunnels.close()


# The process that keeps the worker serving the config's nodes ------------------------------------


def worker_command(nodes: list[str], concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers", "worker",
        "-Q", ",".join(nodes), "-n", f"mesh-{os.getpid()}@%h", "-c", str(concurrency),
        "--without-mingle", "--without-gossip", "-l", "info",
    ]  # fmt: skip


class MeshWorker:
    """The one Celery worker process that serves the current nodes."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.nodes: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    def serve(self, nodes: list[str]) -> None:
        """Serve `nodes` from now on: the worker is restarted for a new set, stopped for
        none."""
        if nodes == self.nodes and (self.process is None or self.process.poll() is None):
            return
        self.stop()
        self.nodes = list(nodes)
        if not nodes:
            log.info("mesh serves no node: the config names none")
            return
        env = dict(os.environ)
        env["OLLAMA_CLOUD_MESH_NODES"] = ",".join(nodes)
        if self.settings.mesh_ports:
            env["OLLAMA_CLOUD_MESH_PORTS"] = ",".join(
                f"{alias}={port}" for alias, port in self.settings.mesh_ports.items()
            )
        env["OLLAMA_CLOUD_BACKEND"] = self.settings.backend
        env["OLLAMA_CLOUD_LOG_FORMAT"] = self.settings.log_format
        concurrency = node_capacity(self.settings) * len(nodes)
        self.process = subprocess.Popen(worker_command(nodes, concurrency), env=env)
        log.info(
            "mesh serves %d nodes (%s) from worker pid=%d",
            len(nodes), ",".join(nodes), self.process.pid,
        )  # fmt: skip

    def stop(self) -> None:
        """A warm shutdown of the worker, by its pid: running jobs end, records are removed."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("mesh worker pid=%d not stopped in time: killed", process.pid)
            process.kill()
            process.wait()


def config_stamp(config: Path) -> float | None:
    with contextlib.suppress(FileNotFoundError):
        return config.stat().st_mtime_ns / 1e9
    return None


def run_mesh(
    settings: WorkerSettings,
    patterns: list[str],
    names: list[str],
    stop: threading.Event,
    watch_interval_s: float = WATCH_INTERVAL_S,
) -> None:
    """Serve the nodes of the SSH config that `patterns` or `names` choose until `stop` is set,
    following the config's changes; a worker that exits by itself is started again."""
    config = Path(os.path.expanduser(settings.ssh_config))
    worker = MeshWorker(settings)
    seen: float | None = -1.0
    try:
        while not stop.is_set():
            stamp = config_stamp(config)
            returncode = worker.process.poll() if worker.process is not None else None
            if stamp != seen or returncode is not None:
                if returncode is not None:
                    log.warning("mesh worker exited with %d: started again", returncode)
                    worker.process = None
                seen = stamp
                worker.serve(read_nodes(config, patterns, names))
            stop.wait(watch_interval_s)
    finally:
        worker.stop()
