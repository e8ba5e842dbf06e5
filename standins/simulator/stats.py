"""What a simulated server counts: requests, completions, cold loads, busy time, per model; and
for llama-servers and their pool, which model produced each reply for which model asked."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelStats:
    requests: int = 0
    completed: int = 0
    eval_tokens: int = 0
    cold_loads: int = 0


@dataclass
class SimStats:
    requests: int = 0
    completed: int = 0
    max_active: int = 0
    refused_full: int = 0
    cold_loads: int = 0
    failures_injected: int = 0
    busy_seconds: float = 0.0
    per_model: dict[str, ModelStats] = field(default_factory=dict)

    def model(self, name: str) -> ModelStats:
        return self.per_model.setdefault(name, ModelStats())


def generations_report(generations: Counter[tuple[str, str]]) -> dict[str, Any]:
    """Replies by (the model the request named, the model that produced it), and how many of
    them came from a model other than the one asked for."""
    return {
        "generations": [
            {"requested": requested, "actual": actual, "count": count}
            for (requested, actual), count in sorted(generations.items())
        ],
        "mismatched": sum(
            count for (requested, actual), count in generations.items() if requested != actual
        ),
    }


@dataclass
class LlamaStats:
    """One llama-server's counts. A generation is counted once its whole reply is produced;
    `dropped` counts the generations cut off because the server was stopped."""

    requests: int = 0
    completed: int = 0
    dropped: int = 0
    max_active: int = 0
    max_queued: int = 0
    refused_loading: int = 0
    context_overflows: int = 0
    failures_injected: int = 0
    busy_seconds: float = 0.0
    generations: Counter[tuple[str, str]] = field(default_factory=Counter)

    def report(self) -> dict[str, Any]:
        counts = {name: value for name, value in vars(self).items() if name != "generations"}
        return {**counts, **generations_report(self.generations)}


@dataclass
class PoolStats:
    """The pool manager's counts; the generations are summed over every server it started."""

    get_server_calls: int = 0
    unknown_models: int = 0
    cold_starts: int = 0
    joined_starts: int = 0  # with hazards off: a call that waited for another call's start
    start_failures: int = 0
    evictions: int = 0  # to make room (least recently used)
    busy_evictions: int = 0  # evictions and idle stops of a server that was answering
    forced_evictions: int = 0  # through /sim/evict
    idle_stops: int = 0
    leaked_servers: int = 0  # started, then lost from the table: never evicted nor stopped
    max_servers_running: int = 0  # starting and leaked ones included
    cold_starts_per_model: Counter[str] = field(default_factory=Counter)
    servers_started_per_model: Counter[str] = field(default_factory=Counter)
