"""kombu's Redis transport, made to ride out a lost connection to Redis.

Two of kombu's steps run on a channel whose connection is already gone after Redis drops
(a restart, a network blip), fail with an AttributeError and take the whole worker down as an
"Unrecoverable error": putting unacknowledged messages back into their queue as the channel
closes, and acknowledging a task that finished while the connection was away. Here neither
step is tried on a closed channel. Nothing is lost by it: an unacknowledged message stays in
Redis and comes back after the visibility timeout, where the attempt check drops it as stale,
and the ledger already moves a job whose attempt never began or whose result was never
delivered.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    restore_at_shutdown = False

    def _connected(self) -> bool:
        connection = getattr(self.channel, "connection", None)
        return connection is not None and getattr(connection, "client", None) is not None

    def ack(self, delivery_tag: Any) -> None:
        if not self._connected():
            log.warning("ack after the broker connection closed: redelivered later, as stale")
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if not self._connected():
            log.warning("reject after the broker connection closed: redelivered later")
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
