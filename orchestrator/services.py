"""The one place the orchestrator's clients are built: Redis, the key names, the ledger, the
fleet registry, the site queue client and the entities, from one process's settings."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from orchestrator.entity_folder import EntityFolder
from orchestrator.settings import Settings
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.fleet import Fleet
from orchestrator.state.ledger import Ledger
from orchestrator.state.metrics import Metrics
from workers.contract.keys import DEFAULT_PREFIX, Keys

log = logging.getLogger(__name__)


def connect_redis(url: str) -> redis.Redis:
    """A client that decodes to str and rides out a Redis restart with backoff."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=10,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def site_queue_client(settings: Settings, metrics: Metrics | None = None) -> SiteQueueClient:
    """The site queue's client; its failed calls are counted by kind when `metrics` is given."""
    return SiteQueueClient(
        settings.queue_url,
        settings.queue_token_value(),
        timeout=settings.queue_timeout_s,
        max_answer_bytes=settings.max_answer_bytes,
        max_comments_bytes=settings.max_comments_bytes,
        on_error=metrics.note_site_error if metrics is not None else None,
    )


@dataclass
class State:
    """Redis and what the system keeps in it: enough for `status`, `jobs` and beat."""

    redis: redis.Redis
    keys: Keys
    ledger: Ledger
    fleet: Fleet

    @classmethod
    def connect(
        cls,
        redis_url: str,
        key_prefix: str = DEFAULT_PREFIX,
        lost_after_s: float = 3.0,
        finished_retention_s: float = 86400.0,
        dead_retention_s: float = 7 * 86400.0,
    ) -> State:
        client = connect_redis(redis_url)
        keys = Keys(key_prefix)
        return cls(
            redis=client,
            keys=keys,
            ledger=Ledger(client, keys, finished_retention_s, dead_retention_s),
            fleet=Fleet(client, keys, lost_after_s=lost_after_s),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> State:
        return cls.connect(
            settings.redis_url,
            settings.key_prefix,
            settings.server_lost_after_s,
            settings.finished_retention_s,
            settings.dead_letter_retention_s,
        )

    def close(self) -> None:
        self.redis.close()


@dataclass
class Services:
    """Everything a bridge or a control worker talks to."""

    settings: Settings
    redis: redis.Redis
    keys: Keys
    ledger: Ledger
    fleet: Fleet
    queue: SiteQueueClient
    entities: EntityFolder  # read again when its files change
    metrics: Metrics  # counts of events, for the fleet page's /metrics

    @classmethod
    def build(cls, settings: Settings) -> Services:
        state = State.from_settings(settings)
        entities = EntityFolder(settings.entities_dir)
        metrics = Metrics(state.redis, state.keys)
        return cls(
            settings=settings,
            redis=state.redis,
            keys=state.keys,
            ledger=state.ledger,
            fleet=state.fleet,
            queue=site_queue_client(settings, metrics),
            entities=entities,
            metrics=metrics,
        )

    def close(self) -> None:
        self.queue.close()
        self.redis.close()


_process_services: Services | None = None
_lock = threading.Lock()


def process_services() -> Services:
    """This process's services, built on first use from the environment and config file."""
    global _process_services  # noqa: PLW0603 - one set of connections per control process
    with _lock:
        if _process_services is None:
            _process_services = Services.build(Settings.load())
        return _process_services


def close_process_services() -> None:
    """Close this process's connections (the control worker's shutdown); the next use builds
    them again from the settings of that moment."""
    global _process_services  # noqa: PLW0603
    with _lock:
        if _process_services is not None:
            _process_services.close()
            _process_services = None
