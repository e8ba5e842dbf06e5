"""Per-request time through the SSH transport: a chat request through `ssh://alias` against the
same request over direct HTTP to the same simulated server, and against the old way, a new SSH
session per request (`ssh alias curl …`).

    python bench/transport.py [--requests 400] [--ssh-requests 20]

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
flag in `parser` and one more function in `MEASURES`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.common import LLAMA, bench_parser, percentile
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
            if shutil.which("ssh") and shutil.which("curl"):
                ssh_ms = [old_way_ms(home, port, index) for index in range(args.ssh_requests)]
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


def parser() -> argparse.ArgumentParser:
    made = bench_parser(__doc__)
    made.add_argument("--requests", type=int, default=400, help="requests timed each way")
    made.add_argument(
        "--ssh-requests", type=int, default=20, help="requests timed the old way (ssh … curl)"
    )
    return made


# Each measure takes the parsed arguments and returns its figures, or none when its flag is
# not given; the printed object is their union.
MEASURES: list[Callable[[argparse.Namespace], dict[str, Any]]] = [per_request]


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
