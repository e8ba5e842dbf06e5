"""A server as routing sees it at one moment: its record, its load, what it has shown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
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
    lru: tuple[str, ...] = ()  # the loaded models, least recently used first, as told
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
    tailscale_ip: str = ""  # where its worker's machine is on the tailnet, when it is on one
    tailscale_name: str = ""
    speeds: dict[str, ModelSpeed] = field(default_factory=dict, hash=False)
    failures: int = 0  # failed in a row (the circuit breaker)
    cooling_s: float = 0.0  # left out of routing this much longer
    # What the backend tells (ServerRecord), by model key.
    backend: str = "ollama"
    model_slots: dict[str, int] = field(default_factory=dict, hash=False)  # a model's own
    max_loaded: int = 0  # most models loaded at once (0: unknown)
    loading: frozenset[str] = frozenset()
    own_speeds: dict[str, ModelSpeed] = field(default_factory=dict, hash=False)
    # The models of its jobs in flight, one count per model.
    inflight_models: dict[str, int] = field(default_factory=dict, hash=False)
    fault: str = ""  # why its model server does not answer, as its worker says

    @classmethod
    def from_record(cls, record: ServerRecord, inflight: Iterable[str] = ()) -> ServerView:
        return cls(
            id=record.id,
            capacity=record.capacity,
            inflight=0,
            models=frozenset(model_key(model) for model in record.models),
            loaded=frozenset(model_key(model) for model in record.loaded),
            lru=tuple(model_key(model) for model in record.loaded),
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
            tailscale_ip=record.tailscale_ip,
            tailscale_name=record.tailscale_name,
            backend=record.backend,
            fault=record.fault,
            model_slots={model_key(name): n for name, n in record.model_slots.items()},
            max_loaded=record.max_loaded,
            loading=frozenset(model_key(model) for model in record.loading),
            own_speeds=own_speeds(record),
        ).with_inflight(inflight)

    @classmethod
    def offline(cls, server_id: str, inflight: Iterable[str] = ()) -> ServerView:
        """A known server whose record is gone."""
        server = cls(id=server_id, capacity=0, inflight=0, online=False, healthy=False)
        return server.with_inflight(inflight)

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

    def model_capacity(self, model: str) -> int:
        """Slots a job for `model` may fill: the server's, and its model's own where it has
        them."""
        own = self.model_slots.get(model)
        return self.usable_capacity if own is None else min(own, self.usable_capacity)

    def free_for(self, model: str) -> int:
        """Free slots for a job for `model` now."""
        own = self.model_slots.get(model)
        if own is None:
            return self.free_slots
        return max(0, min(self.free_slots, own - self.inflight_models.get(model, 0)))

    def with_inflight(self, models: Iterable[str]) -> ServerView:
        """The server with these jobs in flight (their models, one entry per job)."""
        counts = dict(Counter(model_key(model) for model in models))
        inflight = sum(counts.values())
        if inflight == self.inflight and counts == self.inflight_models:
            return self
        return replace(self, inflight=inflight, inflight_models=counts)

    def with_one_more(self, model: str) -> ServerView:
        """The server with one more job for `model` in flight."""
        counts = dict(self.inflight_models)
        counts[model] = counts.get(model, 0) + 1
        return replace(self, inflight=self.inflight + 1, inflight_models=counts)


def own_speeds(record: ServerRecord) -> dict[str, ModelSpeed]:
    """What a server says of its own speed and load times, by model key."""
    tps = {model_key(name): value for name, value in record.tokens_per_s.items()}
    load = {model_key(name): value for name, value in record.load_s.items()}
    return {
        model: ModelSpeed(tokens_per_s=tps.get(model), load_s=load.get(model))
        for model in tps.keys() | load.keys()
    }


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
