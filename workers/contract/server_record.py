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
    loaded: list[str] = Field(default_factory=list)  # in memory now (`/api/ps`)
    ollama_healthy: bool = True
    worker_version: str = ""
    last_beat: float = 0.0  # Redis's clock
    booted_at: float = 0.0  # the worker's start, on its own clock (as its jobs' starts are)
    client_name: str = ""  # the name of the worker's Redis connections
    beat_interval_s: float = 0.0  # how often the worker beats (0: unknown)

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
        }

    @classmethod
    def from_hash(cls, server_id: str, fields: dict[str, str]) -> ServerRecord:
        """Whatever the hash holds: a field that does not parse takes its default, so one odd
        record never hides the rest of the fleet."""
        values: dict[str, Any] = {"id": server_id}
        for name in ("ollama_url", "location", "region", "worker_version", "client_name"):
            values[name] = fields.get(name, "")
        values["priority"] = _number(fields.get("priority"), int, 0)
        values["capacity"] = _number(fields.get("capacity"), int, 1)
        for name in ("last_beat", "booted_at", "beat_interval_s"):
            values[name] = _number(fields.get(name), float, 0.0)
        values["models"] = _names(fields.get("models"))
        values["loaded"] = _names(fields.get("loaded"))
        values["ollama_healthy"] = fields.get("ollama_healthy") == "1"
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
