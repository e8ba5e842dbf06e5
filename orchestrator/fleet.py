"""The fleet registry: server records written by heartbeats, and in-flight slots per server."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import redis

from orchestrator.redis_client import texts
from workers.keys import Keys

log = logging.getLogger(__name__)

# Take a slot only while the server has one free; a job already holding it keeps it.
RESERVE_SLOT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SADD', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class ServerView:
    """One server as the router sees it at one moment."""

    id: str
    capacity: int
    inflight: int
    models: frozenset[str] = frozenset()
    loaded: frozenset[str] = frozenset()
    healthy: bool = True
    online: bool = True
    region: str = ""
    location: str = ""
    priority: int = 0
    ollama_url: str = ""
    worker_version: str = ""
    last_beat: float = 0.0
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - self.inflight) if self.online and self.healthy else 0


def _names(raw: str | None) -> frozenset[str]:
    try:
        names = json.loads(raw or "[]")
    except ValueError:
        return frozenset()
    return frozenset(str(name) for name in names) if isinstance(names, list) else frozenset()


def server_from_record(server_id: str, record: dict[str, str], inflight: int) -> ServerView:
    if not record:
        return ServerView(id=server_id, capacity=0, inflight=inflight, online=False, healthy=False)
    try:
        capacity = int(record.get("capacity", "1"))
        priority = int(record.get("priority", "0"))
        last_beat = float(record.get("last_beat", "0"))
    except ValueError:
        capacity, priority, last_beat = 1, 0, 0.0
    return ServerView(
        id=server_id,
        capacity=capacity,
        inflight=inflight,
        models=_names(record.get("models")),
        loaded=_names(record.get("loaded")),
        healthy=record.get("ollama_healthy") == "1",
        region=record.get("region", ""),
        location=record.get("location", ""),
        priority=priority,
        ollama_url=record.get("ollama_url", ""),
        worker_version=record.get("worker_version", ""),
        last_beat=last_beat,
    )


class Fleet:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._reserve = client.register_script(RESERVE_SLOT)

    def read(self) -> list[ServerView]:
        """Every known server, online or not, in two round trips whatever the fleet's size."""
        server_ids = sorted(texts(self.redis.smembers(self.keys.servers)))
        if not server_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for server_id in server_ids:
            pipe.hgetall(self.keys.server(server_id))
            pipe.scard(self.keys.inflight(server_id))
        replies = pipe.execute()
        return [
            server_from_record(server_id, replies[2 * index], int(replies[2 * index + 1]))
            for index, server_id in enumerate(server_ids)
        ]

    def reserve(self, server_id: str, capacity: int, job_id: str) -> bool:
        """Atomically take one of the server's slots for a job: never more than `capacity`."""
        return bool(self._reserve(keys=[self.keys.inflight(server_id)], args=[capacity, job_id]))

    def release(self, server_id: str, job_id: str) -> bool:
        """Give the slot back and wake whoever waits for one."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.keys.inflight(server_id), job_id)
        pipe.publish(self.keys.slot_events, f"free:{server_id}")
        removed, _ = pipe.execute()
        return bool(removed)

    def inflight_jobs(self, server_id: str) -> set[str]:
        return set(texts(self.redis.smembers(self.keys.inflight(server_id))))

    def record_latency(self, server_id: str, model: str, wall_ms: float, tokens: int) -> None:
        """Moving averages per server and model: generation time, and tokens per second."""
        alpha = 0.2
        key = self.keys.latency(server_id)
        ms_field, tps_field = f"{model}:ms", f"{model}:tps"
        previous_ms, previous_tps = self.redis.hmget(key, [ms_field, tps_field])
        tps = tokens / (wall_ms / 1000) if wall_ms > 0 and tokens > 0 else 0.0
        new_ms = (
            wall_ms if previous_ms is None else (1 - alpha) * float(previous_ms) + alpha * wall_ms
        )
        mapping: dict[str, float] = {ms_field: new_ms, "updated": time.time()}
        if tps > 0:
            mapping[tps_field] = (
                tps if previous_tps is None else (1 - alpha) * float(previous_tps) + alpha * tps
            )
        self.redis.hset(key, mapping=mapping)  # type: ignore[arg-type]
