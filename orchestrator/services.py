"""The connections one orchestrator process holds, built once from its settings."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis

from orchestrator.domain.entities import EntityCatalog, load_entities
from orchestrator.settings import Settings, load_settings
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.fleet import Fleet
from orchestrator.state.ledger import Ledger
from orchestrator.state.redis_codec import connect
from workers.contract.keys import Keys

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    ledger: Ledger
    fleet: Fleet
    queue: SiteQueueClient
    entities: EntityCatalog

    @classmethod
    def build(cls, settings: Settings) -> Services:
        client = connect(settings.redis_url)
        keys = Keys(settings.key_prefix)
        entities = load_entities(settings.entities_dir)
        log.info("loaded %d entities from %s", len(entities), settings.entities_dir)
        return cls(
            settings=settings,
            redis=client,
            keys=keys,
            ledger=Ledger(client, keys),
            fleet=Fleet(client, keys, lost_after_s=settings.server_lost_after_s),
            queue=SiteQueueClient(
                settings.queue_url,
                settings.queue_token_value(),
                timeout=settings.queue_timeout_s,
            ),
            entities=entities,
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
            _process_services = Services.build(load_settings())
        return _process_services
