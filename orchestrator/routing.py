"""Which server gets a job: pure policy over a snapshot of the fleet, no I/O."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from orchestrator.fleet import ServerView


@dataclass(frozen=True)
class Decision:
    server: ServerView | None
    reason: str


def able_servers(servers: Iterable[ServerView], model: str) -> list[ServerView]:
    """Servers that are online, whose Ollama answers, and that have the model installed."""
    return [
        server for server in servers if server.online and server.healthy and model in server.models
    ]


def choose_server(
    servers: Iterable[ServerView],
    model: str,
    *,
    exclude: Collection[str] = (),
    region: str = "",
    rng: random.Random | None = None,
) -> Decision:
    """A server with a free slot for `model`, or None with the reason.

    Among free servers: the model already loaded first (no load time), then the larger share
    of free slots, then the message's region, then priority; ties at random.
    """
    able = [server for server in able_servers(servers, model) if server.id not in exclude]
    if not able:
        return Decision(None, f"no online server has model {model}")
    free = [server for server in able if server.free_slots > 0]
    if not free:
        return Decision(None, f"all {len(able)} servers with {model} are full")
    chooser = rng or random.Random()

    def rank(server: ServerView) -> tuple[bool, float, bool, int, float]:
        return (
            model in server.loaded,
            server.free_slots / max(server.capacity, 1),
            bool(region) and server.region == region,
            server.priority,
            chooser.random(),
        )

    best = max(free, key=rank)
    warm = "warm" if model in best.loaded else "cold"
    return Decision(
        best, f"{best.id}: {warm}, {best.free_slots}/{best.capacity} free of {len(able)} able"
    )
