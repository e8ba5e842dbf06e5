"""The worker's heartbeat: a thread that keeps this server's record in Redis current.

Liveness comes from this thread, never from a task that could wait behind others in a queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from workers.backends.base import Inventory
from workers.contract.keys import Keys
from workers.contract.server_record import ServerRecord
from workers.errors import BackendError
from workers.runtime import WorkerRuntime
from workers.tailscale import NOT_ON_TAILNET, TailnetAddress, TailscaleProbe
from workers.version import __version__

log = logging.getLogger(__name__)
MAX_FAULT_CHARS = 300


def server_record(
    rt: WorkerRuntime,
    capacity: int,
    known_models: list[str] | None = None,
    tailnet: TailnetAddress = NOT_ON_TAILNET,
) -> ServerRecord:
    """Ask the backend what it has, and describe this server as the fleet registry stores it.
    While the backend does not answer, the models it last listed stay in the record (marked
    unhealthy), so work for them waits for it rather than being given up. `tailnet` is where
    the worker's machine is on its tailnet; the id stays the queue's name wherever that is."""
    backend = rt.backend
    fault = ""  # why the backend does not answer, for `status`
    try:
        inventory = backend.inventory()
    except BackendError as exc:
        log.debug("server=%s %s not answering: %s", rt.server_id, backend.kind, exc)
        inventory = Inventory(models=list(known_models or []), healthy=False)
        fault = str(exc)[:MAX_FAULT_CHARS]
    if inventory.healthy:
        rt.note_loaded(inventory.loaded)
    settings = rt.settings
    return ServerRecord(
        id=rt.server_id,
        ollama_url=backend.address,
        location=settings.location,
        region=settings.region,
        priority=settings.priority,
        capacity=capacity,
        models=inventory.models,
        loaded=inventory.loaded,
        ollama_healthy=inventory.healthy,
        worker_version=__version__,
        client_name=rt.keys.worker_client(rt.server_id),
        beat_interval_s=settings.heartbeat_interval_s,
        backend=backend.kind,
        model_slots=inventory.model_slots,
        max_loaded=inventory.max_loaded,
        loading=inventory.loading,
        tokens_per_s=inventory.tokens_per_s,
        load_s=inventory.load_s,
        context=inventory.context,
        fault=fault,
        tailscale_ip=tailnet.ip,
        tailscale_name=tailnet.name,
    )


def redis_hint(client: redis.Redis) -> str:
    """What to do when the orchestrator's Redis does not answer: a Mac with no VPN reaches it
    through an SSH tunnel on its own loopback, which must be running."""
    kwargs = client.connection_pool.connection_kwargs
    host, port = kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379)
    if host in ("127.0.0.1", "localhost", "::1"):
        return (
            f"nothing answers at {host}:{port}: if the orchestrator's Redis is reached through "
            f"an SSH tunnel, start it (ssh -N -L {port}:127.0.0.1:6379 <orchestrator host>, "
            "README: Redis over SSH), else start Redis here"
        )
    return (
        f"Redis at {host}:{port} does not answer: check that this Mac reaches that host (VPN, "
        "Tailscale) and that Redis listens there; without either, use an SSH tunnel (README: "
        "Redis over SSH)"
    )


def slots_at_once(record: ServerRecord) -> int:
    """How many jobs a backend of models with slots of their own (a pool, a map of model
    servers) can run at once: the slots of as many models as it keeps loaded, the largest
    first; 0 when its slots are not per model."""
    if not record.model_slots:
        return 0
    slots = sorted(record.model_slots.values(), reverse=True)
    return sum(slots[: record.max_loaded] if record.max_loaded else slots)


def write_record(client: redis.Redis, keys: Keys, record: ServerRecord, ttl_s: float) -> None:
    """One beat: the record, its time to live, and the server's place among the known ones."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.server(record.id), mapping=record.to_hash())  # type: ignore[arg-type]
    pipe.pexpire(keys.server(record.id), int(ttl_s * 1000))
    pipe.sadd(keys.servers, record.id)
    pipe.zadd(keys.last_seen, {record.id: record.last_beat})
    pipe.execute()


def remove_record(client: redis.Redis, keys: Keys, server_id: str) -> None:
    """The record goes at once; the id stays known, so `status` shows the server offline."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.server(server_id))
    pipe.zadd(keys.last_seen, {server_id: time.time()})
    pipe.publish(keys.slot_events, f"gone:{server_id}")
    pipe.execute()


class HeartbeatThread(threading.Thread):
    def __init__(
        self,
        rt: WorkerRuntime,
        capacity: int,
        booted_at: float,
        tailnet: Callable[[], TailnetAddress] | None = None,
    ) -> None:
        """`tailnet` tells where this machine is on its tailnet; by default the `tailscale`
        command is asked (every 30 s, not every beat)."""
        super().__init__(name=f"heartbeat-{rt.server_id}", daemon=True)
        self.rt = rt
        self.capacity = capacity
        self.tailnet = tailnet or TailscaleProbe(rt.server_id).address
        self.stopping = threading.Event()
        self._was_healthy: bool | None = None
        self._models: list[str] = []
        self._told_capacity = 0  # what the backend could run at once, when last said
        self._redis_told = False  # the hint on reaching Redis given, since the last beat
        # This worker's start, on the clock that also stamps the starts of its jobs: a job
        # begun before it was begun by an earlier run of the worker, and is lost with it.
        self.booted_at = booted_at

    def beat(self) -> None:
        record = server_record(self.rt, self.capacity, self._models, self.tailnet())
        self._models = record.models
        # Stamped with Redis's clock, which every reader shares, not this Mac's.
        seconds, micros = self.rt.redis.time()
        record = record.model_copy(
            update={"last_beat": seconds + micros / 1e6, "booted_at": self.booted_at}
        )
        write_record(self.rt.redis, self.rt.keys, record, self.rt.settings.heartbeat_ttl_s)
        if record.ollama_healthy != self._was_healthy:
            log.log(
                logging.INFO if record.ollama_healthy else logging.WARNING,
                "server=%s %s %s at %s",
                self.rt.server_id,
                record.backend,
                "answering" if record.ollama_healthy else "NOT answering",
                record.ollama_url,
            )
            # A server that just came up (or back) may be what a waiting bridge needs.
            self.rt.redis.publish(self.rt.keys.slot_events, f"server:{self.rt.server_id}")
            self._was_healthy = record.ollama_healthy
        wanted = slots_at_once(record)
        if wanted > self.capacity and wanted != self._told_capacity:
            log.warning(
                "server=%s runs %d jobs at once but its %s can run %d: give the worker more "
                "threads (celery -c %d, or OLLAMA_CLOUD_CAPACITY and OLLAMA_CLOUD_CONCURRENCY)",
                self.rt.server_id, self.capacity, record.backend, wanted, wanted,
            )  # fmt: skip
            self._told_capacity = wanted

    def run(self) -> None:
        interval = self.rt.settings.heartbeat_interval_s
        while not self.stopping.is_set():
            try:
                self.beat()
                self._redis_told = False
            except redis.RedisError as exc:
                log.warning("server=%s heartbeat failed: %s", self.rt.server_id, exc)
                if isinstance(exc, redis.ConnectionError) and not self._redis_told:
                    log.warning("server=%s %s", self.rt.server_id, redis_hint(self.rt.redis))
                    self._redis_told = True
            # Event.wait, so stop() ends the thread at once.
            self.stopping.wait(interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        try:
            remove_record(self.rt.redis, self.rt.keys, self.rt.server_id)
        except redis.RedisError as exc:
            log.warning("server=%s could not remove its record: %s", self.rt.server_id, exc)
