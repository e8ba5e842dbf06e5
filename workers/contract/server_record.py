"""A server's record in Redis, as its worker's heartbeat writes it and the fleet reads it: a
hash of strings with a time to live."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field


class ServerRecord(BaseModel):
    id: str
    ollama_url: str = ""
    location: str = ""
    region: str = ""
    priority: int = 0
    capacity: int = 1
    models: list[str] = Field(default_factory=list)  # installed (`/api/tags`)
    # In memory now (`/api/ps`; a pool's running servers), least recently used first.
    loaded: list[str] = Field(default_factory=list)
    ollama_healthy: bool = True
    worker_version: str = ""
    last_beat: float = 0.0  # Redis's clock
    booted_at: float = 0.0  # the worker's start, on its own clock (as its jobs' starts are)
    client_name: str = ""  # the name of the worker's Redis connections
    beat_interval_s: float = 0.0  # how often the worker beats (0: unknown)
    # What the backend tells of itself (workers.backends): its kind, and per model what it
    # knows. A model in `model_slots` has slots of its own (one llama-server per model): a job
    # for it needs one of them free as well as one of the server's `capacity`.
    backend: str = "ollama"
    model_slots: dict[str, int] = Field(default_factory=dict)
    max_loaded: int = 0  # most models in memory (or model servers running) at once; 0: unknown
    loading: list[str] = Field(default_factory=list)  # being loaded or started now
    tokens_per_s: dict[str, float] = Field(default_factory=dict)  # its own measure, per model
    load_s: dict[str, float] = Field(default_factory=dict)  # a cold load or start, per model
    context: dict[str, int] = Field(default_factory=dict)  # tokens of context per slot
    fault: str = ""  # why the model server does not answer, while it does not
    # Where the worker's machine is on its tailnet (workers.tailscale), empty off one. Never part
    # of the id: a Mac that changes network keeps its id and its queue.
    tailscale_ip: str = ""
    tailscale_name: str = ""

    def to_hash(self) -> dict[str, str]:
        return {
            "id": self.id,
            "ollama_url": self.ollama_url,
            "location": self.location,
            "region": self.region,
            "priority": str(self.priority),
            "capacity": str(self.capacity),
            "models": json.dumps(self.models),
            "loaded": json.dumps(self.loaded),
            "ollama_healthy": "1" if self.ollama_healthy else "0",
            "worker_version": self.worker_version,
            "last_beat": f"{self.last_beat:.3f}",
            "booted_at": f"{self.booted_at:.3f}",
            "client_name": self.client_name,
            "beat_interval_s": f"{self.beat_interval_s:g}",
            "backend": self.backend,
            "model_slots": json.dumps(self.model_slots),
            "max_loaded": str(self.max_loaded),
            "loading": json.dumps(self.loading),
            "tokens_per_s": json.dumps(self.tokens_per_s),
            "load_s": json.dumps(self.load_s),
            "context": json.dumps(self.context),
            "fault": self.fault,
            "tailscale_ip": self.tailscale_ip,
            "tailscale_name": self.tailscale_name,
        }

    @classmethod
    def from_hash(cls, server_id: str, fields: dict[str, str]) -> ServerRecord:
        """Whatever the hash holds: a field that does not parse takes its default, so one odd
        record never hides the rest of the fleet."""
        values: dict[str, Any] = {"id": server_id}
        for name in (
            "ollama_url",
            "location",
            "region",
            "worker_version",
            "client_name",
            "tailscale_ip",
            "tailscale_name",
        ):
            values[name] = fields.get(name, "")
        values["priority"] = _number(fields.get("priority"), int, 0)
        values["capacity"] = _number(fields.get("capacity"), int, 1)
        for name in ("last_beat", "booted_at", "beat_interval_s"):
            values[name] = _number(fields.get(name), float, 0.0)
        values["models"] = _names(fields.get("models"))
        values["loaded"] = _names(fields.get("loaded"))
        values["ollama_healthy"] = fields.get("ollama_healthy") == "1"
        values["backend"] = fields.get("backend") or "ollama"
        values["fault"] = fields.get("fault", "")
        values["max_loaded"] = _number(fields.get("max_loaded"), int, 0)
        values["loading"] = _names(fields.get("loading"))
        values["model_slots"] = _per_model(fields.get("model_slots"), int)
        values["tokens_per_s"] = _per_model(fields.get("tokens_per_s"), float)
        values["load_s"] = _per_model(fields.get("load_s"), float)
        values["context"] = _per_model(fields.get("context"), int)
        return cls.model_validate(values)


def _number(raw: str | None, kind: type[int] | type[float], default: float) -> Any:
    try:
        return kind(raw) if raw else default
    except ValueError:
        return default


def _names(raw: str | None) -> list[str]:
    try:
        names = json.loads(raw or "[]")
    except ValueError:
        return []
    return [str(name) for name in names] if isinstance(names, list) else []


def _per_model(raw: str | None, kind: type[int] | type[float]) -> dict[str, Any]:
    """A JSON object of model → positive number; anything else in it is left out."""
    try:
        entries = json.loads(raw or "{}")
    except ValueError:
        return {}
    if not isinstance(entries, dict):
        return {}
    kept: dict[str, Any] = {}
    for name, value in entries.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            kept[str(name)] = kind(value)
    return kept
