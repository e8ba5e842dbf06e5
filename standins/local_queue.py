"""The local queue: the site queue's HTTP API (docs/site-queue.md), kept in SQLite.

It answers as the deployed queue does wherever a client could tell the difference
(`tests/test_site_contract.py` holds the cases), refuses some bodies the deployed queue
accepts by mistake (listed there and in docs/site-queue.md), and keeps its messages.

One SQLite connection behind one lock, one transaction per operation: claims are atomic the
way the Durable Object's one-request-at-a-time makes them, and a restart loses nothing.

The deployed queue keeps two lists: the messages it caches (the last 50,000 posted), and the
pending list the bot claims from. A message is in the pending list while its status column is
`pending`, or while `stale_in_pending` is set: completed while still pending, it stays listed
until a claim-next meets it and fails, as the deployed queue's does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from orchestrator.domain.messages import DEFAULT_DOMAIN, DEFAULT_PRIORITY, MAX_ID_LENGTH
from standins.http_server import uvicorn_server

log = logging.getLogger(__name__)

API_VERSION = "1.0.1"
ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 10
# As many messages as the deployed queue keeps in memory. Past it the oldest posted are
# dropped, but never one still in the pending list (the deployed queue can still claim those).
SITE_CACHE_SIZE = 50_000
# The deployed queue is JavaScript: integers past this are not exact there, nor storable here.
MAX_SAFE_INTEGER = 2**53 - 1
STATS_MODE = "sqlite"
NOT_IN_PENDING_QUEUE = "Message not found in pending queue"
NOT_FOUND = "Message not found"
# The deployed queue (a Cloudflare Worker) takes request bodies up to 100 MB; past this (100
# MiB: no less than either reading of it), 413.
MAX_BODY_BYTES = 100 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,        -- an id with a lone surrogate: its bytes as a BLOB (sql_key)
    timestamp INTEGER NOT NULL,
    status TEXT,                -- botParams.status; NULL for a message without botParams
    priority INTEGER NOT NULL,  -- the ordering priority: a missing or 0 priority is stored as 5
    claimed_by TEXT,            -- as id: a BLOB when it holds a lone surrogate
    body TEXT NOT NULL,         -- the message as JSON, in its wire shape (stored_json)
    stale_in_pending INTEGER NOT NULL DEFAULT 0  -- completed, yet still in the pending list
);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value REAL NOT NULL);
INSERT OR IGNORE INTO totals (name, value) VALUES ('globalScore', 0);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS messages_queue_order ON messages (status, priority DESC, timestamp);
CREATE INDEX IF NOT EXISTS messages_by_timestamp ON messages (timestamp);
CREATE INDEX IF NOT EXISTS messages_by_claimer ON messages (claimed_by);
CREATE INDEX IF NOT EXISTS messages_stale ON messages (stale_in_pending)
    WHERE stale_in_pending = 1;
"""
# In the pending list: still pending, or completed while pending (see the module's docstring).
LISTED = (
    "SELECT id, body FROM messages WHERE (status = 'pending' OR stale_in_pending = 1)"
    " ORDER BY priority DESC, timestamp, rowid LIMIT ?"
)
COUNT_LISTED = "SELECT COUNT(*) FROM messages WHERE (status = 'pending' OR stale_in_pending = 1)"
NEXT_PENDING = (
    "SELECT id, body FROM messages WHERE status = 'pending'"
    " ORDER BY priority DESC, timestamp, rowid LIMIT 1"
)
FIRST_STALE = (
    "SELECT id FROM messages WHERE stale_in_pending = 1"
    " ORDER BY priority DESC, timestamp, rowid LIMIT 1"
)
DROP_OLDEST = (
    "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages"
    " WHERE status IS NOT 'pending' AND stale_in_pending = 0 AND id != ?"
    " ORDER BY rowid LIMIT ?)"
)
# SQLite integers are 64-bit: a bound past them compares as the nearest end would.
SQLITE_MIN, SQLITE_MAX = -(2**63), 2**63 - 1


class Refused(Exception):
    """An operation the queue declines, with the status and answer the contract gives it."""

    def __init__(self, status_code: int, answer: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status_code}: {answer}")
        self.status_code = status_code
        self.answer = answer


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def as_number(value: float) -> int | float:
    """A stored REAL as the wire shows it: 7, not 7.0."""
    return int(value) if value.is_integer() else value


def js_truthy(value: Any) -> bool:
    """JavaScript's truth: the deployed queue's `a || b` falls through on these."""
    if value is None or value is False or value == "":
        return False
    return not (isinstance(value, int | float) and not isinstance(value, bool) and value == 0)


def js_or(*values: Any, default: Any) -> Any:
    """`a || b || default`, as the deployed queue fills in a field."""
    return next((value for value in values if js_truthy(value)), default)


def bot_params_of(message: dict[str, Any]) -> dict[str, Any]:
    """The message's botParams, created if missing (or not an object, in a hand-made row)."""
    bot_params = message.get("botParams")
    if not isinstance(bot_params, dict):
        bot_params = message["botParams"] = {}
    return bot_params


def invalid(detail: str | list[str]) -> Refused:
    return Refused(422, {"error": "Invalid request", "detail": detail})


# JSON as the deployed queue writes it ---------------------------------------------------------
#
# The site's JSON may carry a lone surrogate in a string ("\udc00"): JavaScript strings are
# UTF-16, and JSON.stringify writes one back as those six characters, every other character as
# it is. json.loads turns an escaped surrogate pair into one astral character, so a surrogate
# left in a str is lone: it is escaped the same way wherever it leaves this process (an answer,
# a stored body), and an id or a worker id holding one is kept in SQLite as its bytes.

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(text: str) -> str:
    """`text` with each lone surrogate as JSON's escape of it (`\\udc00`)."""
    if text.isascii() or LONE_SURROGATE.search(text) is None:
        return text
    return LONE_SURROGATE.sub(lambda found: f"\\u{ord(found[0]):04x}", text)


def stored_json(message: dict[str, Any]) -> str:
    """A message as its row keeps it: its JSON as the site writes it (SQLite's text is UTF-8,
    which a lone surrogate is not: it is stored escaped, and json.loads reads it back). NaN in
    a hand-made row is kept as it was (json.loads reads it back too; no answer can carry it)."""
    return escape_surrogates(json.dumps(message, ensure_ascii=False, separators=(",", ":")))


def parsed(body: str | bytes, key: str | bytes) -> dict[str, Any]:
    """A row's stored message; a 500 naming it when it is not JSON (a hand-made row)."""
    try:
        message: dict[str, Any] = json.loads(body)
    except (ValueError, RecursionError) as exc:
        error = f"Message {from_sql_key(key)} is stored broken: {exc}"
        raise Refused(500, {"error": error}) from exc
    return message


def render_json(content: Any) -> bytes:
    """An answer's JSON as JSON.stringify writes it: compact, UTF-8, every character as it is
    but a lone surrogate, escaped (the one code point UTF-8 cannot encode: backslashreplace
    writes it as JSON's escape, in the same pass). ValueError for NaN (a hand-made row)."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


class JsonAnswer(Response):
    """Every JSON answer of the local queue: `content` rendered by render_json, or already
    rendered (a `Rendered`)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content.body if isinstance(content, Rendered) else render_json(content)


@dataclass(frozen=True)
class Rendered:
    """An answer rendered before its operation commits: a claim that could not be answered
    must not be left made."""

    body: bytes
    success: bool = True

    @classmethod
    def of(cls, answer: dict[str, Any], message_id: str = "") -> Rendered:
        """Rendered, or a 500 that rolls the operation back (a hand-made row holding what JSON
        cannot carry, such as NaN)."""
        try:
            return cls(render_json(answer), answer.get("success") is not False)
        except (ValueError, TypeError, RecursionError) as exc:
            log.error("message=%s cannot be answered: %s", escape_surrogates(message_id), exc)
            error = f"Message {message_id} cannot be answered: {exc}"
            raise Refused(500, {"error": error}) from exc


def sql_key(value: str) -> str | bytes:
    """An id or worker id as SQLite keeps it: one with a lone surrogate (which SQLite's UTF-8
    text cannot hold) as its bytes, a BLOB, never equal to any text key."""
    if value.isascii() or LONE_SURROGATE.search(value) is None:
        return value
    return value.encode("utf-8", "surrogatepass")


def from_sql_key(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


# What a posted message becomes ----------------------------------------------------------------


class PostedFields:
    """Reads a posted body as the deployed queue does (`a || b || default`), refusing a field
    of the wrong type where the deployed queue would store it as it came."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        bot_params = body.get("botParams")
        self.bot_params: dict[str, Any] = {}
        self.problems: list[str] = []
        if isinstance(bot_params, dict):
            self.bot_params = bot_params
        elif bot_params is not None:
            self.problems.append("botParams: must be an object")

    def string(self, name: str, *, nested: bool = False, required: bool = False) -> str | None:
        where = self.bot_params if nested else self.body
        value = where.get(name)
        label = f"botParams.{name}" if nested else name
        if value is None:
            if required:
                self.problems.append(f"{label}: required")
            return None
        if not isinstance(value, str):
            self.problems.append(f"{label}: must be a string")
            return None
        return value

    def integer(self, name: str, *, nested: bool = False) -> int | None:
        value = (self.bot_params if nested else self.body).get(name)
        label = f"botParams.{name}" if nested else name
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{label}: must be an integer")
            return None
        if abs(value) > MAX_SAFE_INTEGER:
            self.problems.append(f"{label}: must be a safe integer")
            return None
        return value

    def number(self, name: str) -> int | float | None:
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.append(f"{name}: must be a number")
            return None
        if abs(value) > MAX_SAFE_INTEGER:
            self.problems.append(f"{name}: must be at most {MAX_SAFE_INTEGER} in size")
            return None
        return value

    def lines(self, name: str) -> list[str] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
            self.problems.append(f"{name}: must be a list of strings")
            return None
        return value


class Posted:
    """A posted message as the deployed queue stores it: a fixed set of fields."""

    def __init__(self, body: dict[str, Any]) -> None:
        fields = PostedFields(body)
        text = fields.string("text", required=True)
        username = fields.string("username", required=True)
        message_id = fields.string("id")
        if message_id is not None and len(message_id) > MAX_ID_LENGTH:
            fields.problems.append(f"id: at most {MAX_ID_LENGTH} characters")
        timestamp = fields.integer("timestamp")
        color = fields.string("color")
        domain = fields.string("domain")
        message_type = fields.string("message-type")
        if not js_truthy(message_type):
            message_type = fields.string("messageType")
        message_type = js_or(message_type, default="human")
        if message_type not in {"human", "AI"}:
            fields.problems.append('message-type: must be "human" or "AI"')
        reply_to = fields.string("replyTo")
        context = fields.lines("context")
        eq_score = fields.number("eqScore")
        entity = fields.string("entity", nested=True)
        ais = fields.string("ais", nested=True)
        session_id = fields.string("sessionId", nested=True)
        priority = fields.integer("priority", nested=True)
        if not js_truthy(priority):
            priority = fields.integer("priority")
        if fields.problems:
            raise invalid(fields.problems)

        self.id = message_id or None
        self.given_timestamp = timestamp or None
        self.is_ai = message_type == "AI"
        self.queued = not self.is_ai and js_truthy(entity)
        self.priority: int = js_or(priority, default=DEFAULT_PRIORITY)
        message: dict[str, Any] = {"text": text, "username": username}
        if color is not None:
            message["color"] = color
        message["domain"] = js_or(domain, default=DEFAULT_DOMAIN)
        message["message-type"] = message_type
        message["replyTo"] = js_or(reply_to, default=None)
        message["context"] = context
        message["eqScore"] = js_or(eq_score, default=0)
        if self.queued or self.is_ai:
            message["botParams"] = {
                "status": "complete" if self.is_ai else "pending",
                "priority": self.priority,
                "entity": js_or(entity, default=None),
                "ais": js_or(ais, default=None),
                "sessionId": js_or(session_id, default=None),
                "humanUsername": username,
                "humanColor": color,
                "claimedBy": None,
                "claimedAt": None,
                "completedAt": None,
            }
        self.fields = message

    def stored(self, message_id: str, timestamp: int) -> dict[str, Any]:
        message = {"id": message_id, "timestamp": timestamp, **self.fields}
        if self.is_ai:
            message["botParams"] = {**message["botParams"], "completedAt": timestamp}
        return message


# The store ------------------------------------------------------------------------------------


class QueueStore:
    """The site queue's operations on SQLite; each returns the contract's answer as a dict."""

    def __init__(self, path: Path | str, max_messages: int = SITE_CACHE_SIZE) -> None:
        self.path = str(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives any crash or restart of this process (only a power cut could
            # cost the last commits): enough for a stand-in, without an fsync per request.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
            if "stale_in_pending" not in columns:  # a file written before the column existed
                self._db.execute(
                    "ALTER TABLE messages ADD COLUMN stale_in_pending INTEGER NOT NULL DEFAULT 0"
                )
            self._db.executescript(INDEXES)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Messages --------------------------------------------------------------------------------

    def post_comment(self, posted: Posted) -> dict[str, Any]:
        with self._transaction() as db:
            if posted.id is not None:
                row = db.execute(
                    "SELECT timestamp FROM messages WHERE id = ?", (sql_key(posted.id),)
                ).fetchone()
                if row is not None:
                    return {"id": posted.id, "timestamp": row[0], "status": "duplicate"}
            message_id = posted.id or self._fresh_id(db)
            timestamp = posted.given_timestamp or now_ms()
            message = posted.stored(message_id, timestamp)
            status = message["botParams"]["status"] if "botParams" in message else None
            db.execute(
                "INSERT INTO messages (id, timestamp, status, priority, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (sql_key(message_id), timestamp, status, posted.priority, stored_json(message)),
            )
            dropped = self._keep_at_most(db, self.max_messages, message_id)
        log.debug(
            "message=%s posted%s",
            escape_surrogates(message_id), " (queued)" if posted.queued else "",
        )  # fmt: skip
        if dropped:
            log.info(
                "dropped the %d oldest messages: more than %d kept", dropped, self.max_messages
            )
        return {"id": message_id, "timestamp": timestamp, "status": "success"}

    @staticmethod
    def _keep_at_most(db: sqlite3.Connection, most: int, newest_id: str) -> int:
        """Drop the oldest posted messages past `most`, as the deployed queue's cache does,
        but not one in the pending list, nor the message just posted."""
        (count,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        if count <= most:
            return 0
        dropped: int = db.execute(DROP_OLDEST, (sql_key(newest_id), count - most)).rowcount
        return dropped

    @staticmethod
    def _fresh_id(db: sqlite3.Connection) -> str:
        while True:
            candidate = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
            if db.execute("SELECT 1 FROM messages WHERE id = ?", (candidate,)).fetchone() is None:
                return candidate

    def comments_after(self, after_ms: int | None) -> dict[str, Any]:
        """Every kept message with a later timestamp, newest posted first (None matches none)."""
        messages: list[dict[str, Any]] = []
        with self._transaction() as db:
            if after_ms is not None:
                rows = db.execute(
                    "SELECT id, body FROM messages WHERE timestamp > ? ORDER BY rowid DESC",
                    (min(max(after_ms, SQLITE_MIN), SQLITE_MAX),),
                )
                # One stored body at a time: only the parsed messages are held.
                messages.extend(parsed(body, key) for key, body in rows)
            global_score = self._global_score(db)
        return {"messages": messages, "version": API_VERSION, "globalScore": global_score}

    def patch_eq(self, message_id: str, score: float | None) -> Rendered:
        """Set the message's eqScore (None: leave it) and add a positive one to the total;
        answered before it commits, so a message that cannot be sent changes nothing."""
        with self._transaction() as db:
            message = self._load(db, message_id)
            if score is not None:
                message["eqScore"] = score
                db.execute(
                    "UPDATE messages SET body = ? WHERE id = ?",
                    (stored_json(message), sql_key(message_id)),
                )
            if score is not None and score > 0:
                # Added on every call, as the deployed queue does: callers guard against repeats.
                db.execute(
                    "UPDATE totals SET value = value + ? WHERE name = 'globalScore'", (score,)
                )
            global_score = self._global_score(db)
            answer = {"success": True, "message": message, "globalScore": global_score}
            rendered = Rendered.of(answer, message_id)
        log.info(
            "message=%s eqScore %s, globalScore %s",
            escape_surrogates(message_id), score, global_score,
        )  # fmt: skip
        return rendered

    @staticmethod
    def _load(db: sqlite3.Connection, message_id: str) -> dict[str, Any]:
        key = sql_key(message_id)
        row = db.execute("SELECT body FROM messages WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise Refused(404, {"success": False, "error": NOT_FOUND})
        return parsed(row[0], key)

    @staticmethod
    def _global_score(db: sqlite3.Connection) -> int | float:
        (value,) = db.execute("SELECT value FROM totals WHERE name = 'globalScore'").fetchone()
        return as_number(float(value))

    # The bot's queue -------------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> dict[str, Any]:
        """The pending list in claim order: all of it, or `limit` as JavaScript's
        `slice(0, limit)` reads it (a negative limit leaves out that many at the end)."""
        with self._transaction() as db:
            take_all = limit is None or limit < 0
            rows = db.execute(LISTED, (-1 if take_all else limit,)).fetchall()
        if limit is not None and limit < 0:
            rows = rows[:limit]
        return {
            "pending": [parsed(body, key) for key, body in rows],
            "platformOnly": [],
            "kvStats": {"reads": 0, "writes": 0},
        }

    def claim(self, message_id: str, worker_id: str) -> Rendered:
        """Claim the message; answered before the claim commits (see Rendered)."""
        key = sql_key(message_id)
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, stale_in_pending, body FROM messages WHERE id = ?", (key,)
            ).fetchone()
            if row is None or (row[0] != "pending" and not row[1]):
                # Never queued, claimed already (it left the pending list), or unknown.
                raise Refused(404, {"success": False, "error": NOT_IN_PENDING_QUEUE})
            if row[0] != "pending":
                error = f"Message status is {row[0]}, not pending"
                raise Refused(409, {"success": False, "error": error})
            message = parsed(row[2], key)
            del row  # the stored body: not held while the claim is stored and answered
            self._mark_claimed(db, key, message, worker_id)
            return Rendered.of({"success": True, "message": message}, message_id)

    def claim_next(self, worker_id: str) -> Rendered:
        """Claim the first message of the pending list; answered before the claim commits."""
        with self._transaction() as db:
            (total_pending,) = db.execute(COUNT_LISTED).fetchone()
            stale = db.execute(FIRST_STALE).fetchone()
            if stale is None:
                row = db.execute(NEXT_PENDING).fetchone()
                if row is None:
                    answer: dict[str, Any] = {
                        "success": False,
                        "message": None,
                        "reason": "no_pending_messages",
                        "totalPending": 0,
                        "remainingPending": 0,
                    }
                    return Rendered.of(answer)
                key, message = row[0], parsed(row[1], row[0])
                del row  # the stored body: not held while the claim is stored and answered
                self._mark_claimed(db, key, message, worker_id)
                answer = {
                    "success": True,
                    "message": message,
                    "totalPending": total_pending,
                    "remainingPending": total_pending - 1,
                }
                return Rendered.of(answer, from_sql_key(key))
            # The deployed queue fails on a completed message left in its pending list, and
            # the failure takes it out: one 500, then claims go on.
            db.execute("UPDATE messages SET stale_in_pending = 0 WHERE id = ?", stale)
        stale_id = from_sql_key(stale[0])
        log.warning(
            "message=%s completed while pending: claim-next fails once",
            escape_surrogates(stale_id),
        )
        error = f"Message {stale_id} in the pending queue is complete, not pending"
        raise Refused(500, {"error": error})

    @staticmethod
    def _mark_claimed(
        db: sqlite3.Connection, key: str | bytes, message: dict[str, Any], worker_id: str
    ) -> None:
        bot_params_of(message).update(status="processing", claimedBy=worker_id, claimedAt=now_ms())
        db.execute(
            "UPDATE messages SET status = 'processing', claimed_by = ?, body = ? WHERE id = ?",
            (sql_key(worker_id), stored_json(message), key),
        )
        log.info(
            "message=%s claimed by %s",
            escape_surrogates(from_sql_key(key)), escape_surrogates(worker_id),
        )  # fmt: skip

    def complete(self, message_id: str) -> dict[str, Any]:
        """Mark the message complete whatever its status; one still pending stays in the
        pending list, as on the deployed queue. A message without botParams is left as it is."""
        key = sql_key(message_id)
        with self._transaction() as db:
            row = db.execute("SELECT status, body FROM messages WHERE id = ?", (key,)).fetchone()
            if row is None:
                raise Refused(404, {"success": False, "error": NOT_FOUND})
            message = parsed(row[1], key)
            bot_params = message.get("botParams")
            if isinstance(bot_params, dict):
                bot_params.update(status="complete", completedAt=now_ms())
                db.execute(
                    "UPDATE messages SET status = 'complete', body = ?,"
                    " stale_in_pending = MAX(stale_in_pending, ?) WHERE id = ?",
                    (stored_json(message), row[0] == "pending", key),
                )
        log.info("message=%s complete", escape_surrogates(message_id))
        return {"success": True}

    # Admin -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._transaction() as db:
            (cached,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
            (listed,) = db.execute(COUNT_LISTED).fetchone()
            global_score = self._global_score(db)
        return {
            "mode": STATS_MODE,
            "recentMessages": cached,
            "pendingQueue": listed,
            "maxCacheSize": self.max_messages,
            "storageReads": 0,
            "storageWrites": 0,
            "globalScore": global_score,
        }

    def purge(self) -> dict[str, Any]:
        with self._transaction() as db:
            purged = db.execute("DELETE FROM messages").rowcount
            global_score = self._global_score(db)
        log.warning("purged %d messages (globalScore %s kept)", purged, global_score)
        return {"success": True, "message": f"Purged {purged} messages from memory"}


# HTTP ----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


def too_large() -> Refused:
    return Refused(413, {"error": f"Body too large: more than {MAX_BODY_BYTES} bytes"})


async def body_bytes(request: Request) -> bytearray:
    """The request's body, up to MAX_BODY_BYTES (413 past it, read no further), in one
    buffer: no list of chunks joined into a second copy."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large()
    return body


async def json_body(request: Request) -> Any:
    """The request's JSON body: 400 when it is not JSON (the deployed queue answers 500).

    UTF-8 only, as the deployed queue reads it: a surrogate encoded in the bytes is not UTF-8
    (400), while one escaped in the JSON ("\\udc00") is a string the site keeps, and so is it
    here."""
    try:
        text = (await body_bytes(request)).decode("utf-8-sig")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise Refused(400, {"error": f"Body is not valid JSON: {exc}"}) from exc


async def json_object(request: Request) -> dict[str, Any]:
    """A JSON object body: 422 for any other JSON (a message or a score must be an object)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Refused(422, {"error": "Body must be a JSON object", "detail": type(body).__name__})
    return body


async def json_fields(request: Request) -> dict[str, Any]:
    """The fields of a queue call's body: JSON that is not an object has none, as the
    deployed queue reads it."""
    body = await json_body(request)
    return body if isinstance(body, dict) else {}


def worker_id_of(fields: dict[str, Any]) -> str | None:
    """The workerId when one is given; 422 for one that is not a string."""
    worker_id = fields.get("workerId")
    if not js_truthy(worker_id):
        return None
    if not isinstance(worker_id, str):
        raise invalid("workerId: must be a string")
    return worker_id


def message_id_of(fields: dict[str, Any]) -> str | None:
    """The messageId when it could name a message: ids are strings, nothing else matches."""
    message_id = fields.get("messageId")
    return message_id if isinstance(message_id, str) and message_id else None


def path_message_id(request: Request, prefix: bytes = b"/api/comments/") -> str:
    """The id in the path, percent-decoded from the raw path: a lone surrogate is sent as its
    three UTF-8-style bytes (`%ED%B0%80`), which the server's own decoding makes U+FFFD; an
    escaped pair of them is one character, as json.loads reads one."""
    decoded: str = request.path_params["message_id"]
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes) or not raw.startswith(prefix):
        return decoded
    try:
        text = unquote_to_bytes(raw[len(prefix) :]).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return decoded  # not UTF-8 even with surrogates: U+FFFD, as decoded
    if text.isascii() or LONE_SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def first_query_value(request: Request, name: str) -> str | None:
    """The first value of a query parameter, as URLSearchParams.get gives it."""
    values = request.query_params.getlist(name)
    return values[0] if values else None


# What parseInt skips first: JavaScript's white space and line terminators.
JS_SPACE = (
    " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
DIGITS = {10: set(string.digits), 16: set(string.hexdigits)}
HUGE = 10**20  # past any bound that matters: compares as JavaScript's large values do


def js_parse_int(text: str) -> int | None:
    """JavaScript's parseInt(text): the integer prefix (`12.5` → 12, `0x1f` → 31), None for
    NaN (`abc`, ``)."""
    rest = text.lstrip(JS_SPACE)
    sign = 1
    if rest[:1] in {"+", "-"}:
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    base = 10
    if rest[:2] in {"0x", "0X"}:
        base, rest = 16, rest[2:]
    digits = ""
    for char in rest:
        if char not in DIGITS[base]:
            break
        digits += char
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return sign * (HUGE if len(digits) > 20 else int(digits, base))


@dataclass
class Faults:
    """What `POST /local/faults` asks of the local queue (the site has no such route): the
    next `claims` claim-next answers are held back `claim_delay_s` after the claim is made, as
    an answer lost on its way would leave a client that never hears of its claim."""

    claim_delay_s: float = 0.0
    claims: int = 0


class QueueRoutes:
    """Each route translates between the wire and one store operation."""

    def __init__(self, store: QueueStore) -> None:
        self.store = store
        self.faults = Faults()

    def routes(self) -> list[Route]:
        return [
            Route("/api/comments", self.post_comment, methods=["POST"]),
            Route("/api/comments", self.comments_after, methods=["GET"]),
            Route("/api/comments/{message_id:path}", self.patch_eq, methods=["PATCH"]),
            Route("/api/queue/pending", self.pending, methods=["GET"]),
            Route("/api/queue/claim", self.claim, methods=["POST"]),
            Route("/api/queue/claim-next", self.claim_next, methods=["POST"]),
            Route("/api/queue/complete", self.complete, methods=["POST"]),
            Route("/api/admin/stats", self.stats, methods=["GET"]),
            Route("/api/admin/purge", self.purge, methods=["POST"]),
            Route("/local/faults", self.set_faults, methods=["POST"]),
        ]

    async def post_comment(self, request: Request) -> Response:
        return JsonAnswer(self.store.post_comment(Posted(await json_object(request))))

    async def comments_after(self, request: Request) -> Response:
        # `after || since || "0"`, read by parseInt: `after=abc` is NaN and matches nothing.
        after = first_query_value(request, "after") or first_query_value(request, "since")
        return JsonAnswer(self.store.comments_after(js_parse_int(after or "0")))

    async def patch_eq(self, request: Request) -> Response:
        score = (await json_object(request)).get("eqScore")
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise invalid("eqScore: must be a number")
            if abs(score) > MAX_SAFE_INTEGER:
                raise invalid(f"eqScore: must be at most {MAX_SAFE_INTEGER} in size")
        return JsonAnswer(self.store.patch_eq(path_message_id(request), score))

    async def pending(self, request: Request) -> Response:
        text = first_query_value(request, "limit")
        limit = None if not text else js_parse_int(text) or 0
        return JsonAnswer(self.store.pending(limit))

    async def claim(self, request: Request) -> Response:
        fields = await json_fields(request)
        message_id = message_id_of(fields)
        worker_id = None if message_id is None else worker_id_of(fields)
        if message_id is None or worker_id is None:
            raise Refused(404, {"success": False, "error": NOT_IN_PENDING_QUEUE})
        return JsonAnswer(self.store.claim(message_id, worker_id))

    async def claim_next(self, request: Request) -> Response:
        worker_id = worker_id_of(await json_fields(request))
        if worker_id is None:
            refused = {"success": False, "message": None, "error": "workerId required"}
            raise Refused(400, refused)
        answer = self.store.claim_next(worker_id)
        if self.faults.claims > 0 and answer.success:
            self.faults.claims -= 1
            await asyncio.sleep(self.faults.claim_delay_s)
        return JsonAnswer(answer)

    async def complete(self, request: Request) -> Response:
        message_id = message_id_of(await json_fields(request))
        if message_id is None:
            raise Refused(404, {"success": False, "error": NOT_FOUND})
        return JsonAnswer(self.store.complete(message_id))

    async def stats(self, request: Request) -> Response:
        return JsonAnswer(self.store.stats())

    async def purge(self, request: Request) -> Response:
        return JsonAnswer(self.store.purge())

    async def set_faults(self, request: Request) -> Response:
        fields = await json_object(request)
        delay, claims = fields.get("claim_delay_s", 0), fields.get("claims", 0)
        if not isinstance(delay, int | float) or not isinstance(claims, int) or delay < 0:
            raise invalid("claim_delay_s: a number of seconds; claims: a count")
        self.faults = Faults(float(delay), claims)
        return JsonAnswer({"success": True, **asdict(self.faults)})


class OpenCorsAndToken:
    """CORS open to every origin; the bearer token, when set, on every request but a preflight."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] == "OPTIONS":
            # A browser's preflight carries no credentials: answer it before the token check.
            asked = headers.get(b"access-control-request-headers", b"Authorization, Content-Type")
            preflight = {
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
                "Access-Control-Allow-Headers": asked.decode("latin-1"),
                "Access-Control-Max-Age": "86400",
            }
            await Response(status_code=204, headers=preflight)(scope, receive, send)
            return

        async def send_with_cors(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("Access-Control-Allow-Origin", "*")
            await send(message)

        given = headers.get(b"authorization", b"")
        if self.expected is not None and not hmac.compare_digest(given, self.expected):
            unauthorized = JsonAnswer(
                {"error": "Unauthorized"}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
            await unauthorized(scope, receive, send_with_cors)
            return
        await self.app(scope, receive, send_with_cors)


async def answer_refused(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, Refused):
        raise exc
    return JsonAnswer(exc.answer, exc.status_code)


async def answer_not_found(request: Request, exc: Exception) -> Response:
    # A known path with another method is an unknown route too, as on the deployed queue.
    return JsonAnswer({"error": "Not found"}, 404)


async def answer_internal_error(request: Request, exc: Exception) -> Response:
    return JsonAnswer({"error": "Internal error"}, 500)


def build_app(store: QueueStore, token: str | None = None) -> Starlette:
    return Starlette(
        routes=QueueRoutes(store).routes(),
        middleware=[Middleware(OpenCorsAndToken, token=token)],
        exception_handlers={
            Refused: answer_refused,
            404: answer_not_found,
            405: answer_not_found,
            500: answer_internal_error,
        },
    )


def serve(host: str, port: int, db_path: Path, token: str | None) -> None:
    """Serve the local queue until interrupted (blocking)."""
    store = QueueStore(db_path)
    log.info(
        "local queue on http://%s:%d, db %s, token %s",
        host, port, db_path, "required" if token else "off",
    )  # fmt: skip
    try:
        uvicorn_server(build_app(store, token), host, port).run()
    finally:
        store.close()
