"""The worker's heartbeat: a thread that keeps this server's record in Redis current.

Liveness comes from this thread, never from a task that could wait behind others in a queue.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, ClassVar

import redis
from celery import bootsteps

from workers import runtime as worker_runtime
from workers.errors import OllamaError
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings
from workers.version import __version__

log = logging.getLogger(__name__)

SYSTEM_QUEUES = {"celery", "control"}


def server_record(
    rt: WorkerRuntime, capacity: int, known_models: list[str] | None = None
) -> dict[str, str]:
    """Ask Ollama what it has, and describe this server as the fleet registry stores it. While
    Ollama does not answer, the models it last listed stay in the record (marked unhealthy),
    so work for them waits for it rather than being given up."""
    try:
        installed = rt.ollama.installed_models()
        loaded = rt.ollama.loaded_models()
        healthy = True
    except OllamaError as exc:
        log.debug("server=%s ollama not answering: %s", rt.server_id, exc)
        installed, loaded, healthy = list(known_models or []), [], False
    settings = rt.settings
    return {
        "id": rt.server_id,
        "ollama_url": settings.ollama_url,
        "location": settings.location,
        "region": settings.region,
        "priority": str(settings.priority),
        "capacity": str(capacity),
        "models": json.dumps(installed),
        "loaded": json.dumps(loaded),
        "ollama_healthy": "1" if healthy else "0",
        "worker_version": __version__,
    }


class HeartbeatThread(threading.Thread):
    def __init__(self, rt: WorkerRuntime, capacity: int, booted_at: float) -> None:
        super().__init__(name=f"heartbeat-{rt.server_id}", daemon=True)
        self.rt = rt
        self.capacity = capacity
        self.stopping = threading.Event()
        self._was_healthy: bool | None = None
        self._models: list[str] = []
        # This worker's start, on the clock that also stamps the starts of its jobs: a job
        # begun before it was begun by an earlier run of the worker, and is lost with it.
        self.booted_at = f"{booted_at:.3f}"

    def beat(self) -> None:
        record = server_record(self.rt, self.capacity, self._models)
        self._models = json.loads(record["models"])
        keys = self.rt.keys
        ttl_ms = int(self.rt.settings.heartbeat_ttl_s * 1000)
        # Stamped with Redis's clock, which every reader shares, not this Mac's.
        seconds, micros = self.rt.redis.time()
        now = seconds + micros / 1e6
        record["last_beat"] = f"{now:.3f}"
        record["booted_at"] = self.booted_at
        record["client_name"] = keys.worker_client(self.rt.server_id)
        record["beat_interval_s"] = f"{self.rt.settings.heartbeat_interval_s:g}"
        pipe = self.rt.redis.pipeline(transaction=True)
        mapping: dict[Any, Any] = record
        pipe.hset(keys.server(self.rt.server_id), mapping=mapping)
        pipe.pexpire(keys.server(self.rt.server_id), ttl_ms)
        pipe.sadd(keys.servers, self.rt.server_id)
        pipe.zadd(keys.last_seen, {self.rt.server_id: now})
        pipe.execute()
        healthy = record["ollama_healthy"] == "1"
        if healthy != self._was_healthy:
            log.log(
                logging.INFO if healthy else logging.WARNING,
                "server=%s ollama %s at %s",
                self.rt.server_id,
                "answering" if healthy else "NOT answering",
                self.rt.settings.ollama_url,
            )
            # A server that just came up (or back) may be what a waiting bridge needs.
            self.rt.redis.publish(keys.slot_events, f"server:{self.rt.server_id}")
            self._was_healthy = healthy

    def run(self) -> None:
        interval = self.rt.settings.heartbeat_interval_s
        while not self.stopping.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("server=%s heartbeat failed: %s", self.rt.server_id, exc)
            # Event.wait, so stop() ends the thread at once.
            self.stopping.wait(interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        try:
            pipe = self.rt.redis.pipeline(transaction=True)
            # The record goes at once; the id stays known, so `status` shows it offline.
            pipe.delete(self.rt.keys.server(self.rt.server_id))
            pipe.zadd(self.rt.keys.last_seen, {self.rt.server_id: time.time()})
            pipe.publish(self.rt.keys.slot_events, f"gone:{self.rt.server_id}")
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("server=%s could not remove its record: %s", self.rt.server_id, exc)


def server_id_from_queues(queue_names: list[str]) -> str:
    """The server id is the one queue this worker consumes (`-Q mac-1`)."""
    candidates = sorted(name for name in queue_names if name not in SYSTEM_QUEUES)
    if len(candidates) != 1:
        raise RuntimeError(
            f"a server worker consumes exactly one server queue (-Q <server-id>), got {queue_names}"
        )
    return candidates[0]


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: starts the runtime and heartbeat with the worker; removes both on stop."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: HeartbeatThread | None = None
        self.booted_at = time.time()  # before the pool or the consumer can begin a task

    def start(self, worker: Any) -> None:
        settings = WorkerSettings()
        server_id = settings.server_id or server_id_from_queues(
            list(worker.app.amqp.queues.consume_from)
        )
        rt = WorkerRuntime.build(settings, server_id)
        worker_runtime.install(rt)
        concurrency = int(worker.concurrency)
        capacity = min(settings.capacity or concurrency, concurrency)
        if settings.capacity and settings.capacity > concurrency:
            # More slots than threads: jobs would wait in the queue, counted as running.
            log.warning(
                "server=%s capacity %d exceeds the worker's concurrency %d: using %d",
                server_id, settings.capacity, concurrency, concurrency,
            )  # fmt: skip
        self.thread = HeartbeatThread(rt, capacity, self.booted_at)
        self.thread.start()
        log.info(
            "server=%s worker up: ollama=%s capacity=%d", server_id, settings.ollama_url, capacity
        )

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            log.info("server=%s worker down: record removed", self.thread.rt.server_id)
            self.thread = None
        rt = worker_runtime.uninstall()
        if rt is not None:
            rt.close()

    shutdown = stop
