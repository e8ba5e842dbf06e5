"""The fleet registry in Redis: server records written by heartbeats, in-flight counts, each
server's measured speeds and its circuit breaker, and the servers whose jobs were moved away.

Slots themselves (the in-flight hashes, job id to model) are taken and given back with a job's
steps, by the ledger; the fleet only reads how full they are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, replace

import redis

from orchestrator.domain.servers import ServerView, speeds_from_latency, with_breaker
from workers.contract.keys import Keys
from workers.contract.protocol import ChatTimings
from workers.contract.scripts import pairs_to_dict, register
from workers.contract.server_record import ServerRecord

log = logging.getLogger(__name__)

FIELDS_PER_SERVER = 5  # what read_fleet returns for each server
LATENCY_ALPHA = 0.2  # weight of a new measure in the moving averages
# A worker with no connection to Redis left is taken for gone once its next beat is this many
# intervals late: not on a connection that blinked between two beats.
GONE_AFTER_BEATS = 1.5
# Ollama reports a few milliseconds of load for a model already in memory; more is a cold load.
COLD_LOAD_MS = 250.0
# A server that reports no load: this much time beyond its prompt and generation is a load.
UNREPORTED_LOAD_MS = 1000.0


@dataclass(frozen=True)
class ServerReport:
    """What `status` shows of a server beyond its record."""

    queued: int  # tasks waiting in its Celery queue
    latency_ms: float | None  # mean of its per-model moving averages
    last_seen: float | None  # its last heartbeat, kept after its record expires


class Fleet:
    def __init__(self, client: redis.Redis, keys: Keys, lost_after_s: float = 3.0) -> None:
        self.redis = client
        self.keys = keys
        self.lost_after_s = lost_after_s
        self._read = register(client, "read_fleet")
        self._inflight_counts = register(client, "inflight_counts")
        self._latency = register(client, "record_latency")
        self._failure = register(client, "record_failure")
        self._remove_gone = register(client, "remove_gone")

    def read(self) -> list[ServerView]:
        """Every known server, online or not, in one round trip whatever the fleet's size.
        A server whose record is there but whose beats stopped `lost_after_s` ago is offline."""
        return self.read_at()[1]

    def read_at(self) -> tuple[float, list[ServerView]]:
        """Redis's clock and the fleet as of it."""
        keys = self.keys
        flat = self._read(
            keys=[keys.servers],
            args=[
                keys.server_prefix,
                keys.inflight_prefix,
                keys.latency_prefix,
                keys.breaker_prefix,
            ],
        )
        now = float(flat[0])
        servers = []
        for index in range(1, len(flat), FIELDS_PER_SERVER):
            server_id, fields, inflight = flat[index], flat[index + 1], flat[index + 2]
            if fields:
                record = ServerRecord.from_hash(server_id, pairs_to_dict(fields))
                server = ServerView.from_record(record, inflight)
                if now - server.last_beat > self.lost_after_s:
                    server = replace(server, online=False)  # silent: its record not yet expired
            else:
                server = ServerView.offline(server_id, inflight)
            speeds = speeds_from_latency(pairs_to_dict(flat[index + 3]))
            if speeds:
                server = replace(server, speeds=speeds)
            servers.append(with_breaker(server, pairs_to_dict(flat[index + 4]), now))
        return now, sorted(servers, key=lambda server: server.id)

    def refresh_inflight(self, servers: list[ServerView]) -> list[ServerView]:
        """The same servers with their in-flight counts read again: one round trip, cheap
        enough for every step, while the records themselves change only with heartbeats (a
        server that stops or is found gone says so on the event channel)."""
        if not servers:
            return []
        models = self._inflight_counts(args=[self.keys.inflight_prefix, *(s.id for s in servers)])
        return [known.with_inflight(jobs) for known, jobs in zip(servers, models, strict=True)]

    def inflight_jobs(self, server_id: str) -> set[str]:
        return set(self.redis.hkeys(self.keys.inflight(server_id)))  # type: ignore[arg-type]

    # Workers that went away --------------------------------------------------------------

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

    def mark_lost(self, server_id: str) -> None:
        """Jobs were moved off this server: purge its queue of them when it comes back."""
        self.redis.sadd(self.keys.lost_servers, server_id)

    def lost_servers(self) -> list[str]:
        return sorted(self.redis.smembers(self.keys.lost_servers))  # type: ignore[arg-type]

    def clear_lost(self, server_id: str) -> None:
        self.redis.srem(self.keys.lost_servers, server_id)

    def reports(self, server_ids: list[str]) -> list[ServerReport]:
        """Each server's queue length, latency and last heartbeat, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for server_id in server_ids:
            pipe.llen(self.keys.broker_queue(server_id))
            pipe.hgetall(self.keys.latency(server_id))
            pipe.zscore(self.keys.last_seen, server_id)
        replies = pipe.execute()
        reports = []
        for index in range(len(server_ids)):
            queued, latencies, last_seen = replies[3 * index : 3 * index + 3]
            averages = [float(value) for name, value in latencies.items() if name.endswith(":ms")]
            reports.append(
                ServerReport(
                    queued=int(queued),
                    latency_ms=sum(averages) / len(averages) if averages else None,
                    last_seen=float(last_seen) if last_seen is not None else None,
                )
            )
        return reports

    def queued_tasks(self, server_id: str) -> list[str]:
        """The tasks waiting in the server's Celery queue, as kombu keeps them."""
        return list(self.redis.lrange(self.keys.broker_queue(server_id), 0, -1))  # type: ignore[arg-type]

    def remove_queued(self, server_id: str, raw: str) -> int:
        """Take one task out of the server's Celery queue before its worker gets to it."""
        return int(self.redis.lrem(self.keys.broker_queue(server_id), 1, raw))

    # Health and speed ----------------------------------------------------------------------

    def record_failure(self, server_id: str, base_s: float, longest_s: float) -> float:
        """One more failure in a row: the server cools down for longer each time. Returns the
        cooldown in seconds."""
        cooldown = self._failure(
            keys=[self.keys.breaker(server_id)],
            args=[time.time(), base_s, longest_s, self.keys.slot_events, server_id],
        )
        return float(cooldown)

    def queue_success(self, pipe: redis.client.Pipeline, server_id: str) -> None:
        """A success closes the server's breaker (added to a caller's pipeline)."""
        pipe.delete(self.keys.breaker(server_id))

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
        self._latency(
            keys=[self.keys.latency(server_id)],
            args=[
                f"{model}:ms", f"{model}:tps", timings.wall_ms, tps, LATENCY_ALPHA,
                f"{model}:load_ms", cold_load_ms(timings),
            ],
            client=pipe,
        )  # fmt: skip


def cold_load_ms(timings: ChatTimings) -> float:
    """The time a request spent loading its model, 0 when it was loaded: as the server reports
    it (Ollama's `load_duration`, a pool's cold start), else, where the server tells its prompt
    and generation times but no load, the time beyond them when that is plainly a load."""
    if timings.load_ms:
        return timings.load_ms if timings.load_ms >= COLD_LOAD_MS else 0.0
    if timings.eval_ms <= 0:
        return 0.0
    extra_ms = timings.wall_ms - timings.prompt_eval_ms - timings.eval_ms
    return extra_ms if extra_ms >= UNREPORTED_LOAD_MS else 0.0
