"""What a running worker holds: its settings, its server id, its Ollama client, Redis and its
steps on the ledger."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from workers.backends.ollama import OllamaClient
from workers.contract.attempts import AttemptLedger
from workers.contract.keys import Keys
from workers.settings import WorkerSettings


@dataclass
class WorkerRuntime:
    settings: WorkerSettings
    server_id: str
    keys: Keys
    redis: redis.Redis
    ollama: OllamaClient
    attempts: AttemptLedger

    @classmethod
    def build(cls, settings: WorkerSettings, server_id: str) -> WorkerRuntime:
        keys = Keys(settings.key_prefix)
        client = redis.Redis.from_url(
            settings.redis_url,
            client_name=keys.worker_client(server_id),
            decode_responses=True,
            health_check_interval=30,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry_on_timeout=True,
        )
        return cls(
            settings=settings,
            server_id=server_id,
            keys=keys,
            redis=client,
            attempts=AttemptLedger(client, keys),
            ollama=OllamaClient(
                settings.ollama_url,
                connect_timeout=settings.connect_timeout_s,
                read_timeout=settings.read_timeout_s,
            ),
        )

    def close(self) -> None:
        self.ollama.close()
        self.redis.close()


_current: WorkerRuntime | None = None
_lock = threading.Lock()


def install(runtime: WorkerRuntime) -> None:
    global _current  # noqa: PLW0603 - one runtime per worker process, set by its bootstep
    with _lock:
        _current = runtime


def current() -> WorkerRuntime:
    """The runtime the worker's bootstep installed."""
    if _current is None:
        raise RuntimeError("worker runtime not started (the Heartbeat bootstep installs it)")
    return _current


def uninstall() -> WorkerRuntime | None:
    global _current
    with _lock:
        runtime, _current = _current, None
    return runtime
