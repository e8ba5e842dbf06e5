"""A server as routing sees it at one moment: its record, its load, what it has shown."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from workers.contract.model_names import model_key
from workers.contract.server_record import ServerRecord


@dataclass(frozen=True)
class ModelSpeed:
    """What this server has shown for one model: moving averages, None until measured."""

    tokens_per_s: float | None = None
    load_s: float | None = None


@dataclass(frozen=True)
class ServerView:
    """One server as the router sees it at one moment."""

    id: str
    capacity: int
    inflight: int
    models: frozenset[str] = frozenset()  # by their keys (model_names.model_key), as jobs' are
    loaded: frozenset[str] = frozenset()
    healthy: bool = True
    online: bool = True
    region: str = ""
    location: str = ""
    priority: int = 0
    ollama_url: str = ""
    worker_version: str = ""
    booted_at: float = 0.0  # the worker's start, on its own clock (as its jobs' starts are)
    last_beat: float = 0.0
    beat_interval_s: float = 0.0  # how often the worker beats (0: unknown)
    client_name: str = ""  # the name of the worker's Redis connections
    speeds: dict[str, ModelSpeed] = field(default_factory=dict, hash=False)
    failures: int = 0  # failed in a row (the circuit breaker)
    cooling_s: float = 0.0  # left out of routing this much longer

    @classmethod
    def from_record(cls, record: ServerRecord, inflight: int) -> ServerView:
        return cls(
            id=record.id,
            capacity=record.capacity,
            inflight=inflight,
            models=frozenset(model_key(model) for model in record.models),
            loaded=frozenset(model_key(model) for model in record.loaded),
            healthy=record.ollama_healthy,
            region=record.region,
            location=record.location,
            priority=record.priority,
            ollama_url=record.ollama_url,
            worker_version=record.worker_version,
            booted_at=record.booted_at,
            last_beat=record.last_beat,
            beat_interval_s=record.beat_interval_s,
            client_name=record.client_name,
        )

    @classmethod
    def offline(cls, server_id: str, inflight: int) -> ServerView:
        """A known server whose record is gone."""
        return cls(id=server_id, capacity=0, inflight=inflight, online=False, healthy=False)

    @property
    def cooling(self) -> bool:
        return self.cooling_s > 0

    @property
    def usable_capacity(self) -> int:
        """Slots routing may fill: none while cooling; one probe after failures, until a
        success closes the breaker."""
        if not (self.online and self.healthy) or self.cooling:
            return 0
        return min(self.capacity, 1) if self.failures else self.capacity

    @property
    def free_slots(self) -> int:
        return max(0, self.usable_capacity - self.inflight)

    def with_inflight(self, inflight: int) -> ServerView:
        return self if inflight == self.inflight else replace(self, inflight=inflight)


def speeds_from_latency(fields: dict[str, str]) -> dict[str, ModelSpeed]:
    """`{model}:tps` and `{model}:load_ms` moving averages, by model."""
    tps: dict[str, float] = {}
    load: dict[str, float] = {}
    for name, value in fields.items():
        model, _, measure = name.rpartition(":")
        try:
            number = float(value)
        except ValueError:
            continue
        if measure == "tps" and number > 0:
            tps[model] = number
        elif measure == "load_ms":
            load[model] = number / 1000
    return {
        model: ModelSpeed(tokens_per_s=tps.get(model), load_s=load.get(model))
        for model in tps.keys() | load.keys()
    }


def with_breaker(server: ServerView, breaker: dict[str, str], now: float) -> ServerView:
    """The server with its circuit breaker's state (failures in a row, cooldown left)."""
    if not breaker:
        return server
    try:
        failures = int(breaker.get("failures", "0"))
        until = float(breaker.get("until", "0"))
    except ValueError:
        return server
    return replace(server, failures=failures, cooling_s=max(0.0, until - now))
