"""kombu's Redis transport, made to ride out a lost connection to Redis and to refuse poison.

**A lost connection.** Two of kombu's steps run on a channel whose connection is already gone
after Redis drops (a restart, a network blip), fail with an AttributeError and take the whole
worker down as an "Unrecoverable error": putting unacknowledged messages back into their queue
as the channel closes, and acknowledging a task that finished while the connection was away.
Here neither step is tried on a closed channel. Nothing is lost by it: an unacknowledged message
stays in Redis and comes back after the visibility timeout, where the attempt check drops it as
stale, and the ledger already moves a job whose attempt never began or whose result was never
delivered.

**Poison.** Anyone who can write to Redis can push anything into a queue. kombu decodes an item
before any code of ours runs, and an item that is not JSON, or whose body is not the base64 it
claims, raises inside the transport and stops the consumer. Here every item taken from a queue
passes a gate first (`inspect_item`): its size, its JSON, the envelope, the body's encoding and
content type, the task's name and its argument. An item that fails is moved, with its reason,
an excerpt and a hash, to the broker's dead-letter list (bounded), logged on one line, and the
consumer takes the next item. Each app says which tasks it takes (`accepted_tasks` in the
transport options); anything else in its queues is poison too.

**Its name.** The broker URL keeps its `redis://` or `rediss://` scheme, and kombu resolves
those two names to this transport (`register_transport`), so every tool that reads the scheme
(Flower's broker page and queue lengths among them) knows it as Redis, while every process
still takes its items through the gate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from pydantic import ValidationError

from workers.contract.logs import excerpt
from workers.contract.protocol import TASK_ARGUMENT

log = logging.getLogger(__name__)

DEAD_LETTERS = "dead-letters"  # under the broker's prefix (Keys.broker_dead_letters)
DEFAULT_MAX_ITEM_BYTES = 4 * 1024 * 1024
DEFAULT_DEAD_LETTERS_KEPT = 1000
EXCERPT_CHARS = 400
ACCEPTED_CONTENT = "application/json"
PIDBOX = ".pidbox"  # Celery's remote-control queues: kombu messages, not tasks


class Poison(Exception):
    """An item a consumer must not take: the reason is the message."""


def inspect_item(
    raw: bytes, queue: str, accepted_tasks: frozenset[str] | None, max_bytes: int
) -> dict[str, Any]:
    """The kombu envelope of a queue's item if it is fit to hand to Celery; raises Poison."""
    if len(raw) > max_bytes:
        raise Poison(f"item of {len(raw)} bytes, over the {max_bytes}-byte cap")
    try:
        envelope = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Poison(f"not JSON: {exc}") from exc
    body = check_envelope(envelope)
    if queue.endswith(PIDBOX):
        return dict(envelope)  # Celery's remote control checks its own messages
    check_task(envelope, body, accepted_tasks)
    return dict(envelope)


def check_envelope(envelope: Any) -> str | bytes:
    """What kombu reads of every message before it hands it on; its body, decoded."""
    if not isinstance(envelope, dict):
        raise Poison(f"not a message envelope: a JSON {type(envelope).__name__}")
    properties = envelope.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        raise Poison("envelope without properties.delivery_tag")
    body = envelope.get("body")
    if not isinstance(body, str):
        raise Poison("envelope without a text body")
    encoding = properties.get("body_encoding")
    decoded: str | bytes = body
    if encoding == "base64":
        try:
            decoded = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Poison(f"body is not valid base64: {exc}") from exc
    elif encoding is not None:
        raise Poison(f"unknown body encoding {excerpt(str(encoding), 40)!r}")
    content_type = envelope.get("content-type")
    if content_type != ACCEPTED_CONTENT:
        raise Poison(f"content type {excerpt(str(content_type), 60)!r} is not accepted")
    if envelope.get("content-encoding", "utf-8") != "utf-8":
        raise Poison("content encoding is not utf-8")
    headers = envelope.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise Poison("headers are not an object")
    return decoded


def check_task(
    envelope: dict[str, Any], body: str | bytes, accepted_tasks: frozenset[str] | None
) -> None:
    """A Celery task message (protocol 2) of a task this app takes, with its argument; `body`
    is its body as `check_envelope` decoded it."""
    headers = envelope.get("headers") or {}
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not isinstance(task_id, str):
        raise Poison("not a task message: headers without task and id")
    if accepted_tasks is not None and task not in accepted_tasks:
        raise Poison(f"unknown task {excerpt(task, 80)!r}")
    try:
        decoded = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Poison(f"task body is not JSON: {exc}") from exc
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or not isinstance(decoded[0], list)
        or not isinstance(decoded[1], dict)
        or not isinstance(decoded[2], dict | None)
    ):
        raise Poison("task body is not [args, kwargs, embed]")
    args, kwargs = decoded[0], decoded[1]
    if task not in TASK_ARGUMENT:
        return  # another app's task (a bench's): its name was accepted
    model = TASK_ARGUMENT[task]
    if model is None:
        if args or kwargs:
            raise Poison(f"{task} takes no arguments")
        return
    if len(args) != 1 or kwargs:
        raise Poison(f"{task} takes one argument")
    try:
        model.model_validate(args[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Poison(f"{task} argument: {where}: {first['msg']}") from exc


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        options = self.connection.client.transport_options
        accepted: Iterable[str] | None = options.get("accepted_tasks")
        self.accepted_tasks = None if accepted is None else frozenset(accepted)
        self.max_item_bytes = int(options.get("max_item_bytes", DEFAULT_MAX_ITEM_BYTES))
        self.dead_letters_kept = int(options.get("dead_letters_kept", DEFAULT_DEAD_LETTERS_KEPT))

    # Every item from a queue passes the gate: kombu's two readers, with it.

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                answer = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not answer:
                raise Empty()
            dest, item = answer
            queue = str(bytes_to_str(dest)).rsplit(self.sep, 1)[0]  # type: ignore[no-untyped-call]
            self._queue_cycle.rotate(queue)
            envelope = self._admit(queue, item)
            if envelope is not None:
                self.connection._deliver(envelope, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        with self.conn_or_acquire() as client:
            for priority in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, priority))  # type: ignore[no-untyped-call]
                if item:
                    self._maybe_update_queues_expire(client, queue)  # type: ignore[no-untyped-call]
                    envelope = self._admit(queue, item)
                    if envelope is not None:
                        return envelope
            self._maybe_update_queues_expire(client, queue)  # type: ignore[no-untyped-call]
            raise Empty()

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Callable[..., Any], consumer_tag: str, **kw: Any
    ) -> Any:
        """kombu's own, with a guard where it makes its message (the fan-out messages of
        remote control reach here without the gate)."""
        answer = super().basic_consume(queue, no_ack, callback, consumer_tag, **kw)  # type: ignore[no-untyped-call]
        unguarded = self.connection._callbacks[queue]

        def guarded(raw_message: Any) -> Any:
            try:
                check_envelope(raw_message)
            except Poison as exc:
                self._dead_letter(queue, json.dumps(raw_message, default=str).encode(), str(exc))
                return None
            return unguarded(raw_message)

        self.connection._callbacks[queue] = guarded
        return answer

    def _admit(self, queue: str, item: bytes | str) -> dict[str, Any] | None:
        raw = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
        try:
            return inspect_item(raw, queue, self.accepted_tasks, self.max_item_bytes)
        except Poison as exc:
            self._dead_letter(queue, raw, str(exc))
            return None

    def _dead_letter(self, queue: str, raw: bytes, reason: str) -> None:
        digest = hashlib.sha256(raw).hexdigest()
        entry = {
            "at": round(time.time(), 3),
            "queue": queue,
            "reason": reason,
            "bytes": len(raw),
            "sha256": digest,
            "excerpt": excerpt(raw, EXCERPT_CHARS),
        }
        log.error(
            "queue=%s poison item dead-lettered: %s (%d bytes, sha256 %s): %s",
            queue, reason, len(raw), digest[:16], excerpt(raw),
        )  # fmt: skip
        try:
            with self.conn_or_acquire() as client:
                client.lpush(DEAD_LETTERS, json.dumps(entry))  # kombu adds the broker's prefix
                client.ltrim(self.global_keyprefix + DEAD_LETTERS, 0, self.dead_letters_kept - 1)
        except self.connection_errors as exc:
            log.error("queue=%s poison item not kept (Redis): %s", queue, exc)


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
URL_SCHEMES = ("redis", "rediss")


def register_transport() -> None:
    """Make kombu resolve the `redis` and `rediss` schemes to this transport, in this process.
    Naming the transport by its import path instead would put that path in the URL Celery
    shows (`workers.contract.broker:Transport://...`), which no tool reading the scheme knows.
    kombu keeps each name's class once resolved: that is dropped so the new one is taken."""
    for scheme in URL_SCHEMES:
        if kombu_transports.TRANSPORT_ALIASES.get(scheme) != TRANSPORT:
            kombu_transports.TRANSPORT_ALIASES[scheme] = TRANSPORT
            kombu_transports._transport_cache.pop(scheme, None)
