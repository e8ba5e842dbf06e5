"""Per-request time through the SSH transport: a chat request through `ssh://alias` against the
same request over direct HTTP to the same simulated server, and against the old way, a new SSH
session per request (`ssh alias curl …`).

    python bench/transport.py [--requests 400] [--ssh-requests 20] [--nodes 100]

All on loopback: one simulated Ollama (zero latency), an SSH server standing in for the node's
sshd (asyncssh, a host key made for the run), and a home folder with `~/.ssh/config` naming the
node `node-1` (HostName, Port, User, IdentityFile, known_hosts). Each request is the worker's
own: `OllamaClient.chat`, a streamed `/api/chat` of a short reply. Direct and tunnelled requests
alternate, after a warm-up of each; the tunnel is one SSH connection for the whole run.

The old way runs `ssh -F CONFIG node-1 curl … http://127.0.0.1:PORT/api/chat` per request, the
body on the session's standard input: a TCP connection, key exchange, login and a command each
time. It needs the `ssh` command (OpenSSH's client); without it its figure is null.

Prints one JSON object as its last line: direct_ms_p50, tunnel_ms_p50, tunnel_ms_p99,
tunnel_added_ms_p50 (tunnel p50 less direct p50), ssh_per_request_ms_p50, ssh_vs_tunnel_p50
(how many times slower the old way is), the SSH connections the tunnel made and the requests
timed. Targets: the tunnel adds at most 2 ms at p50 and is at least 10 times faster than an
SSH session per request (`meets_targets`).

Each measure is a function of the parsed arguments that returns its figures (`MEASURES`); the
JSON object is their union, so another measure (many nodes served from one host) is one more
flag in `parser` and one more function in `MEASURES`. `--nodes N` adds one: `ollama-cloud mesh`
serving N simulated nodes behind one loopback SSH server (mesh_nodes, mesh_online_s,
mesh_worker_rss_mb, mesh_watcher_rss_mb, mesh_ssh_connections; Linux's /proc for memory).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.common import LLAMA, bench_parser, percentile
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec, SimulatorFleet
from standins.ssh_server import LoopbackSshd, SshHome
from workers.backends import OllamaClient
from workers.contract.protocol import ChatRequest, ChatTurn
from workers.transport import Links, SshOptions

ALIAS = "node-1"
WARM_UP = 20
TARGET_ADDED_MS = 2.0
TARGET_SPEEDUP = 10.0
SSH_TIMEOUT_S = 30.0


def request(index: int) -> ChatRequest:
    return ChatRequest(
        model=LLAMA,
        messages=[ChatTurn(role="user", content=f"question {index}")],
        max_tokens=16,
    )


def timed_ms(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return (time.perf_counter() - began) * 1000


def old_way_ms(home: SshHome, port: int, index: int) -> float:
    """One request as the old orchestrator sent it: a new SSH session running curl."""
    body = json.dumps({**request(index).ollama_body(), "stream": False}).encode()
    argv = [
        "ssh", "-F", str(home.config), "-o", "BatchMode=yes", ALIAS,
        "curl", "-sf", "--data-binary", "@-", f"http://127.0.0.1:{port}/api/chat",
    ]  # fmt: skip
    began = time.perf_counter()
    answer = subprocess.run(
        argv, input=body, capture_output=True, timeout=SSH_TIMEOUT_S, check=False
    )
    took = (time.perf_counter() - began) * 1000
    if answer.returncode != 0 or b'"done":true' not in answer.stdout.replace(b" ", b""):
        raise RuntimeError(f"ssh {ALIAS} curl failed: {answer.stderr.decode()[-300:]}")
    return took


def per_request(args: argparse.Namespace) -> dict[str, Any]:
    """Direct, tunnelled and old-way request times to one simulated Ollama."""
    spec = SimServerSpec(name=ALIAS, models=[LLAMA], loaded=[LLAMA], parallel=4)
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as folder:
        home = SshHome(Path(folder))
        with SimulatorFleet([spec]) as sims, LoopbackSshd([home.key], run_commands=True) as sshd:
            home.add_node(ALIAS, sshd)
            port = sims.specs[0].port
            links = Links(SshOptions(config=str(home.config)))
            direct = OllamaClient(sims.urls[ALIAS])
            tunnel = OllamaClient(f"ssh://{ALIAS}/127.0.0.1:{port}", links=links)
            try:
                for index in range(WARM_UP):
                    direct.chat(request(index))
                    tunnel.chat(request(index))
                direct_ms: list[float] = []
                tunnel_ms: list[float] = []
                for index in range(args.requests):
                    asked = request(index)
                    direct_ms.append(timed_ms(partial(direct.chat, asked)))
                    tunnel_ms.append(timed_ms(partial(tunnel.chat, asked)))
            finally:
                direct.close()
                tunnel.close()
            tunnel_connections = sshd.connections_made
            ssh_ms: list[float] = []
            # The timed requests above take a second in all, with no bar drawing beside them;
            # these, a tenth of a second each.
            if shutil.which("ssh") and shutil.which("curl"):
                with ProgressReport("ssh … curl requests", total=args.ssh_requests) as progress:
                    for index in range(args.ssh_requests):
                        ssh_ms.append(old_way_ms(home, port, index))
                        progress.advance()
    direct_p50 = percentile(direct_ms, 0.5)
    tunnel_p50 = percentile(tunnel_ms, 0.5)
    ssh_p50 = percentile(ssh_ms, 0.5) if ssh_ms else None
    added = tunnel_p50 - direct_p50
    speedup = ssh_p50 / tunnel_p50 if ssh_p50 is not None else None
    return {
        "requests": args.requests,
        "direct_ms_p50": round(direct_p50, 3),
        "direct_ms_p99": round(percentile(direct_ms, 0.99), 3),
        "tunnel_ms_p50": round(tunnel_p50, 3),
        "tunnel_ms_p99": round(percentile(tunnel_ms, 0.99), 3),
        "tunnel_added_ms_p50": round(added, 3),
        "tunnel_ssh_connections": tunnel_connections,
        "ssh_requests": len(ssh_ms),
        "ssh_per_request_ms_p50": round(ssh_p50, 3) if ssh_p50 is not None else None,
        "ssh_vs_tunnel_p50": round(speedup, 1) if speedup is not None else None,
        "meets_targets": added <= TARGET_ADDED_MS
        and (speedup is None or speedup >= TARGET_SPEEDUP),
    }


def resident_mb(pid: int) -> float:
    """A process's resident memory, from Linux's /proc (0 elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return round(kb / 1024, 1)


def mesh_nodes(args: argparse.Namespace) -> dict[str, Any]:
    """`ollama-cloud mesh` serving `--nodes` simulated Ollama servers, each an alias behind the
    one loopback SSH server: the time for all to come online, and the resident memory of the
    mesh's worker and of the process that watches the config."""
    if not args.nodes:
        return {}
    from orchestrator.services import State  # noqa: PLC0415
    from standins.embedded_redis import EmbeddedRedis  # noqa: PLC0415
    from standins.processes import ManagedProcess, python_command  # noqa: PLC0415
    from standins.waiting import wait_for  # noqa: PLC0415
    from workers.contract.keys import DEFAULT_PREFIX  # noqa: PLC0415

    aliases = [f"node-{index}" for index in range(args.nodes)]
    specs = [SimServerSpec(name=alias, models=[LLAMA], loaded=[LLAMA]) for alias in aliases]
    work = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
    home = SshHome(work / "home")
    (work / "redis").mkdir()
    redis_server = EmbeddedRedis(data_dir=work / "redis")
    redis_server.start()
    try:
        with SimulatorFleet(specs) as sims, LoopbackSshd([home.key]) as sshd:
            for alias in aliases:
                home.add_node(alias, sshd)
            env = {name: value for name, value in os.environ.items()
                   if not name.startswith("OLLAMA_CLOUD_")}  # fmt: skip
            env.update(OLLAMA_CLOUD_REDIS_URL=redis_server.url, OLLAMA_CLOUD_CAPACITY="2",
                       OLLAMA_CLOUD_SSH_CONFIG=str(home.config))  # fmt: skip
            ports = [arg for spec in sims.specs for arg in ("--port", f"{spec.name}={spec.port}")]
            argv = python_command("-m", "orchestrator", "mesh", "--hosts", "node-*", *ports)
            mesh = ManagedProcess("mesh", argv, env, work / "mesh.log")
            state = State.connect(redis_server.url, DEFAULT_PREFIX)
            began = time.perf_counter()
            mesh.start()
            try:

                def online() -> bool:
                    up = {server.id for server in state.fleet.read() if server.healthy}
                    progress.update(len(set(aliases) & up))
                    return set(aliases) <= up

                with ProgressReport("mesh nodes online", total=args.nodes) as progress:
                    wait_for(
                        online, 60 + args.nodes, interval=0.1, what=f"{args.nodes} nodes online"
                    )
                took = time.perf_counter() - began
                assert mesh.pid is not None
                children = Path(f"/proc/{mesh.pid}/task/{mesh.pid}/children").read_text().split()
                worker_mb = resident_mb(int(children[0])) if children else 0.0
                return {
                    "mesh_nodes": args.nodes,
                    "mesh_online_s": round(took, 2),
                    "mesh_worker_rss_mb": worker_mb,
                    "mesh_watcher_rss_mb": resident_mb(mesh.pid),
                    "mesh_ssh_connections": sshd.open_connections,
                }
            finally:
                mesh.stop()
                state.close()
    finally:
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    made = bench_parser(__doc__)
    made.add_argument("--requests", type=int, default=400, help="requests timed each way")
    made.add_argument(
        "--ssh-requests", type=int, default=20, help="requests timed the old way (ssh … curl)"
    )
    made.add_argument(
        "--nodes", type=int, default=0, help="also: one `mesh` serving this many nodes"
    )
    return made


# Each measure takes the parsed arguments and returns its figures, or none when its flag is
# not given; the printed object is their union.
MEASURES: list[Callable[[argparse.Namespace], dict[str, Any]]] = [per_request, mesh_nodes]


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    figures: dict[str, Any] = {}
    for measure in MEASURES:
        figures.update(measure(args))
    return figures


def main() -> None:
    print(json.dumps(run()))


if __name__ == "__main__":
    main()
