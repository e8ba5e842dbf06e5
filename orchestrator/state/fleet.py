"""The fleet registry: server records written by heartbeats, and in-flight slots per server."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import redis

from orchestrator.state.redis_codec import text, texts
from workers.contract.keys import Keys
from workers.contract.protocol import ChatTimings

log = logging.getLogger(__name__)

# Take a slot only while the server has one free (a job already holding it keeps it), and in
# the same step record the job as dispatched there: a slot is never taken for a job the ledger
# does not place on that server. With an owner given, only a job that bridge holds (claimed or
# waiting, by its id) may be placed: one taken away meanwhile (given up, moved) answers -1.
RESERVE_SLOT = """
if ARGV[3] ~= '' then
  local state, owner = unpack(redis.call('HMGET', KEYS[2], 'state', 'bridge_id'))
  if (state ~= 'claimed' and state ~= 'waiting') or owner ~= ARGV[3] then return -1 end
end
local held = redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1
if not held and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
if not held then redis.call('SADD', KEYS[1], ARGV[2]) end
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
return 1
"""

# Redis's clock, then every server record with its in-flight count, measured speeds and
# breaker, in one round trip. Heartbeats are stamped with Redis's clock too, so a Mac whose
# clock is off is not taken for silent.
READ_FLEET = """
local now = redis.call('TIME')
local out = {now[1] .. '.' .. string.format('%06d', now[2])}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. id)
  out[#out + 1] = redis.call('SCARD', ARGV[2] .. id)
  out[#out + 1] = redis.call('HGETALL', ARGV[3] .. id)
  out[#out + 1] = redis.call('HGETALL', ARGV[4] .. id)
end
return out
"""
FIELDS_PER_SERVER = 5

# Free a server's slots held by jobs that no longer hold them (ended, vanished, moved on).
# KEYS: inflight set. ARGV: job key prefix, server id, event channel.
RELEASE_LEAKED = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local state, server = unpack(redis.call('HMGET', ARGV[1] .. id, 'state', 'server_id'))
  if state ~= 'dispatched' or server ~= ARGV[2] then
    redis.call('SREM', KEYS[1], id)
    out[#out + 1] = id
  end
end
if #out > 0 then redis.call('PUBLISH', ARGV[3], 'free:' .. ARGV[2]) end
return out
"""

# A failure: one more in a row, and a cooldown that doubles with each (circuit breaker).
# KEYS: breaker. ARGV: now, base cooldown, longest cooldown, event channel, server id.
RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local cooldown = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (failures - 1))
local ends = tonumber(ARGV[1]) + cooldown
redis.call('HSET', KEYS[1], 'until', string.format('%.3f', ends))
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('PUBLISH', ARGV[4], 'cool:' .. ARGV[5])
return tostring(cooldown)
"""

# Each listed server's in-flight count, in one step.
REFRESH_INFLIGHT = """
local out = {}
for index = 2, #ARGV do
  out[#out + 1] = redis.call('SCARD', ARGV[1] .. ARGV[index])
end
return out
"""

# Moving averages of a server's generation time and speed for one model.
RECORD_LATENCY = """
local alpha = tonumber(ARGV[5])
local function blend(field, value)
  local previous = redis.call('HGET', KEYS[1], field)
  if previous then value = (1 - alpha) * tonumber(previous) + alpha * value end
  redis.call('HSET', KEYS[1], field, tostring(value))
end
blend(ARGV[1], tonumber(ARGV[3]))
if tonumber(ARGV[4]) > 0 then blend(ARGV[2], tonumber(ARGV[4])) end
if tonumber(ARGV[7]) > 0 then blend(ARGV[6], tonumber(ARGV[7])) end
return 1
"""
LATENCY_ALPHA = 0.2

# A gone worker's record goes, unless it beat again meanwhile. KEYS: record, event channel.
# ARGV: the last beat it was judged by, server id.
REMOVE_GONE = """
if redis.call('HGET', KEYS[1], 'last_beat') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], 'gone:' .. ARGV[2])
return 1
"""
# A worker with no connection to Redis left is taken for gone once its next beat is this many
# intervals late: not on a connection that blinked between two beats.
GONE_AFTER_BEATS = 1.5
# Ollama reports a few milliseconds of load for a model already in memory; more is a cold load.
COLD_LOAD_MS = 250.0


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
    models: frozenset[str] = frozenset()
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
        booted_at = float(record.get("booted_at") or 0)
        beat_interval_s = float(record.get("beat_interval_s") or 0)
    except ValueError:
        capacity, priority, last_beat, booted_at, beat_interval_s = 1, 0, 0.0, 0.0, 0.0
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
        booted_at=booted_at,
        last_beat=last_beat,
        beat_interval_s=beat_interval_s,
        client_name=record.get("client_name", ""),
    )


def pairs_to_dict(flat: list[str | bytes]) -> dict[str, str]:
    items = texts(flat)
    return dict(zip(items[::2], items[1::2], strict=True))


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
    if not breaker:
        return server
    try:
        failures = int(breaker.get("failures", "0"))
        until = float(breaker.get("until", "0"))
    except ValueError:
        return server
    return replace(server, failures=failures, cooling_s=max(0.0, until - now))


class Fleet:
    def __init__(self, client: redis.Redis, keys: Keys, lost_after_s: float = 3.0) -> None:
        self.redis = client
        self.keys = keys
        self.lost_after_s = lost_after_s
        self._reserve = client.register_script(RESERVE_SLOT)
        self._read = client.register_script(READ_FLEET)
        self._refresh = client.register_script(REFRESH_INFLIGHT)
        self._latency = client.register_script(RECORD_LATENCY)
        self._failure = client.register_script(RECORD_FAILURE)
        self._release_leaked = client.register_script(RELEASE_LEAKED)
        self._remove_gone = client.register_script(REMOVE_GONE)

    def release_leaked(self, server_id: str) -> list[str]:
        """Free the server's slots held by jobs that no longer hold them; their ids."""
        freed = self._release_leaked(
            keys=[self.keys.inflight(server_id)],
            args=[self.keys.job(""), server_id, self.keys.slot_events],
        )
        return texts(freed)

    def read(self) -> list[ServerView]:
        """Every known server, online or not, in one round trip whatever the fleet's size.
        A server whose record is there but whose beats stopped `lost_after_s` ago is offline."""
        return self.read_at()[1]

    def read_at(self) -> tuple[float, list[ServerView]]:
        """Redis's clock and the fleet as of it."""
        flat = self._read(
            keys=[self.keys.servers],
            args=[
                self.keys.server(""),
                self.keys.inflight(""),
                self.keys.latency(""),
                self.keys.breaker(""),
            ],
        )
        now = float(text(flat[0]))
        servers = []
        for index in range(1, len(flat), FIELDS_PER_SERVER):
            record = pairs_to_dict(flat[index + 1])
            server = server_from_record(text(flat[index]), record, int(flat[index + 2]))
            if server.online and now - server.last_beat > self.lost_after_s:
                server = replace(server, online=False)
            speeds = speeds_from_latency(pairs_to_dict(flat[index + 3]))
            if speeds:
                server = replace(server, speeds=speeds)
            servers.append(with_breaker(server, pairs_to_dict(flat[index + 4]), now))
        return now, sorted(servers, key=lambda server: server.id)

    def gone_workers(self, servers: Collection[ServerView], now: float) -> list[ServerView]:
        """Online servers whose worker process is gone: a beat overdue and not one of its
        Redis connections left open. The kernel closes a killed process's sockets, so a crashed
        worker is found in about a beat, long before its record would expire; a Mac cut off
        without a word is still found by its beats stopping. After a Redis restart, while
        workers reconnect, nobody is judged by connections."""
        overdue = [
            server
            for server in servers
            if server.online
            and server.client_name
            and server.beat_interval_s > 0
            and now - server.last_beat > GONE_AFTER_BEATS * server.beat_interval_s
        ]
        if not overdue:
            return []
        try:
            if int(self.redis.info("server").get("uptime_in_seconds", 0)) < self.lost_after_s:
                return []
            clients = self.redis.client_list(_type="normal")
        except redis.ResponseError as exc:  # CLIENT or INFO not allowed: beats alone tell
            log.debug("worker connections not visible: %s", exc)
            return []
        connected = {str(client.get("name", "")) for client in clients}
        if not connected & {server.client_name for server in servers if server.online}:
            return []  # no worker's name shows (a proxy in between): beats alone tell
        return [server for server in overdue if server.client_name not in connected]

    def remove_gone(self, server: ServerView) -> bool:
        """Take a gone worker's record away (its next beat, if any, writes it again) and tell
        the bridges, which stop placing work there at once."""
        removed = self._remove_gone(
            keys=[self.keys.server(server.id), self.keys.slot_events],
            args=[f"{server.last_beat:.3f}", server.id],
        )
        return bool(removed)

    def record_failure(self, server_id: str, base_s: float, longest_s: float) -> float:
        """One more failure in a row: the server cools down for longer each time. Returns the
        cooldown in seconds."""
        cooldown = self._failure(
            keys=[self.keys.breaker(server_id)],
            args=[time.time(), base_s, longest_s, self.keys.slot_events, server_id],
        )
        return float(text(cooldown))

    def queue_success(self, pipe: redis.client.Pipeline, server_id: str) -> None:
        """A success closes the server's breaker (added to a caller's pipeline)."""
        pipe.delete(self.keys.breaker(server_id))

    def refresh_inflight(self, servers: list[ServerView]) -> list[ServerView]:
        """The same servers with their in-flight counts read again: one round trip, cheap
        enough for every step, while the records themselves change only with heartbeats (a
        server that stops or is found gone says so on the event channel)."""
        if not servers:
            return []
        counts = self._refresh(args=[self.keys.inflight(""), *(s.id for s in servers)])
        return [
            known if known.inflight == count else replace(known, inflight=count)
            for known, count in zip(servers, map(int, counts), strict=True)
        ]

    def reserve(
        self,
        server_id: str,
        capacity: int,
        job_id: str,
        job_fields: dict[str, str] | None = None,
        owner: str = "",
    ) -> int:
        """Atomically take one of the server's slots for a job: never more than `capacity`.
        `job_fields` are written to the job's ledger entry in the same step. 1 taken, 0 full,
        -1 the job is no longer `owner`'s to place."""
        flat = [item for pair in (job_fields or {}).items() for item in pair]
        return int(
            self._reserve(
                keys=[self.keys.inflight(server_id), self.keys.job(job_id)],
                args=[capacity, job_id, owner, *flat],
            )
        )

    def release(self, server_id: str, job_id: str) -> bool:
        """Give the slot back and wake whoever waits for one."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.keys.inflight(server_id), job_id)
        pipe.publish(self.keys.slot_events, f"free:{server_id}")
        removed, _ = pipe.execute()
        return bool(removed)

    def inflight_jobs(self, server_id: str) -> set[str]:
        return set(texts(self.redis.smembers(self.keys.inflight(server_id))))

    def queue_latency(
        self,
        pipe: redis.client.Pipeline,
        server_id: str,
        model: str,
        timings: ChatTimings,
    ) -> None:
        """Moving averages per server and model, added to a caller's pipeline: the whole
        request's time, the generation speed, and the model's load time when it was cold."""
        eval_s = timings.eval_ms / 1000
        tps = timings.eval_count / eval_s if eval_s > 0 and timings.eval_count > 0 else 0.0
        cold_load_ms = timings.load_ms if timings.load_ms >= COLD_LOAD_MS else 0.0
        self._latency(
            keys=[self.keys.latency(server_id)],
            args=[
                f"{model}:ms", f"{model}:tps", timings.wall_ms, tps, LATENCY_ALPHA,
                f"{model}:load_ms", cold_load_ms,
            ],
            client=pipe,
        )  # fmt: skip
