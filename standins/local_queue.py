"""The local queue: the site queue's HTTP API (docs/site-queue.md), kept in SQLite.

One SQLite connection behind one lock, one transaction per operation: claims are atomic the
way the Durable Object's one-request-at-a-time makes them, and a restart loses nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from orchestrator.domain.messages import DEFAULT_DOMAIN, DEFAULT_PRIORITY, NewMessage
from standins.http_server import uvicorn_server

log = logging.getLogger(__name__)

API_VERSION = "1.0.1"
ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 10
DEFAULT_PENDING_LIMIT = 50
# The deployed queue is JavaScript: integers past this are not exact there, nor storable here.
MAX_SAFE_INTEGER = 2**53 - 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    timestamp INTEGER NOT NULL,
    status TEXT,                -- botParams.status once queued; NULL for a message never queued
    priority INTEGER NOT NULL,  -- the ordering priority: a missing or 0 priority is stored as 5
    claimed_by TEXT,
    body TEXT NOT NULL          -- the message as JSON, in its wire shape
);
CREATE INDEX IF NOT EXISTS messages_queue_order ON messages (status, priority DESC, timestamp);
CREATE INDEX IF NOT EXISTS messages_by_timestamp ON messages (timestamp);
CREATE INDEX IF NOT EXISTS messages_by_claimer ON messages (claimed_by);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value REAL NOT NULL);
INSERT OR IGNORE INTO totals (name, value) VALUES ('globalScore', 0);
"""
NEXT_PENDING = (
    "SELECT id, body FROM messages WHERE status = 'pending'"
    " ORDER BY priority DESC, timestamp, rowid LIMIT ?"
)


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


def ordering_priority(posted: NewMessage) -> int:
    priority = posted.bot_params.priority if posted.bot_params else DEFAULT_PRIORITY
    return priority or DEFAULT_PRIORITY


def bot_params_of(message: dict[str, Any]) -> dict[str, Any]:
    """The message's botParams, created if missing (or not an object, in a hand-made row)."""
    bot_params = message.get("botParams")
    if not isinstance(bot_params, dict):
        bot_params = message["botParams"] = {}
    return bot_params


def not_found(message_id: str) -> Refused:
    return Refused(404, {"success": False, "error": f"Message {message_id} not found"})


class QueueStore:
    """The site queue's operations on SQLite; each returns the contract's answer as a dict."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives any crash or restart of this process (only a power cut could
            # cost the last commits): enough for a stand-in, without an fsync per request.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

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

    def post_comment(self, posted: NewMessage) -> dict[str, Any]:
        # Kept as posted, with only the defaults the deployed queue fills in.
        message = posted.model_dump(by_alias=True, exclude_unset=True, mode="json")
        message.setdefault("domain", DEFAULT_DOMAIN)
        message.setdefault("message-type", "human")
        message.setdefault("eqScore", 0)
        entity = posted.bot_params.entity if posted.bot_params else None
        queued = posted.message_type == "human" and bool(entity)
        if queued:
            bot_params = bot_params_of(message)
            bot_params["status"] = "pending"
            bot_params.setdefault("priority", DEFAULT_PRIORITY)
        with self._transaction() as db:
            if posted.id is not None:
                row = db.execute(
                    "SELECT timestamp FROM messages WHERE id = ?", (posted.id,)
                ).fetchone()
                if row is not None:
                    return {"id": posted.id, "timestamp": row[0], "status": "duplicate"}
            message_id = posted.id or self._fresh_id(db)
            timestamp = posted.timestamp if posted.timestamp is not None else now_ms()
            message = {"id": message_id, "timestamp": timestamp, **message}
            db.execute(
                "INSERT INTO messages (id, timestamp, status, priority, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    message_id,
                    timestamp,
                    "pending" if queued else None,
                    ordering_priority(posted),
                    json.dumps(message),
                ),
            )
        log.debug("message=%s posted%s", message_id, " (queued)" if queued else "")
        return {"id": message_id, "timestamp": timestamp, "status": "success"}

    @staticmethod
    def _fresh_id(db: sqlite3.Connection) -> str:
        while True:
            candidate = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
            if db.execute("SELECT 1 FROM messages WHERE id = ?", (candidate,)).fetchone() is None:
                return candidate

    def comments_after(self, after_ms: int, limit: int | None = None) -> dict[str, Any]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT body FROM messages WHERE timestamp > ?"
                " ORDER BY timestamp DESC, rowid DESC LIMIT ?",
                (after_ms, -1 if limit is None else limit),
            ).fetchall()
            global_score = self._global_score(db)
        return {
            "messages": [json.loads(body) for (body,) in rows],
            "version": API_VERSION,
            "globalScore": global_score,
        }

    def patch_eq(self, message_id: str, score: float) -> dict[str, Any]:
        with self._transaction() as db:
            message = self._load(db, message_id)
            message["eqScore"] = score
            db.execute(
                "UPDATE messages SET body = ? WHERE id = ?", (json.dumps(message), message_id)
            )
            if score > 0:
                # Added on every call, as the deployed queue does: callers guard against repeats.
                db.execute(
                    "UPDATE totals SET value = value + ? WHERE name = 'globalScore'", (score,)
                )
            global_score = self._global_score(db)
        log.info("message=%s eqScore %s, globalScore %s", message_id, score, global_score)
        return {"success": True, "message": message, "globalScore": global_score}

    @staticmethod
    def _load(db: sqlite3.Connection, message_id: str) -> dict[str, Any]:
        row = db.execute("SELECT body FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise not_found(message_id)
        message: dict[str, Any] = json.loads(row[0])
        return message

    @staticmethod
    def _global_score(db: sqlite3.Connection) -> int | float:
        (value,) = db.execute("SELECT value FROM totals WHERE name = 'globalScore'").fetchone()
        return as_number(float(value))

    # The bot's queue -------------------------------------------------------------------------

    def pending(self, limit: int = DEFAULT_PENDING_LIMIT) -> dict[str, Any]:
        with self._transaction() as db:
            rows = db.execute(NEXT_PENDING, (limit,)).fetchall()
            counts = self._counts(db)
        return {
            "pending": [json.loads(body) for _, body in rows],
            "platformOnly": [],
            "kvStats": counts,
        }

    def claim(self, message_id: str, worker_id: str) -> dict[str, Any]:
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, body FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            # Queued but taken: 409. Never queued, completed (left the queue) or unknown: 404.
            if row is not None and row[0] == "processing":
                raise Refused(409, {"success": False, "error": f"{message_id} is processing"})
            if row is None or row[0] != "pending":
                raise Refused(404, {"success": False, "error": f"{message_id} is not pending"})
            message = self._mark_claimed(db, message_id, json.loads(row[1]), worker_id)
        return {"success": True, "message": message}

    def claim_next(self, worker_id: str) -> dict[str, Any]:
        with self._transaction() as db:
            (total_pending,) = db.execute(
                "SELECT COUNT(*) FROM messages WHERE status = 'pending'"
            ).fetchone()
            row = db.execute(NEXT_PENDING, (1,)).fetchone()
            if row is None:
                return {
                    "success": False,
                    "message": None,
                    "reason": "no_pending_messages",
                    "totalPending": 0,
                    "remainingPending": 0,
                }
            message = self._mark_claimed(db, row[0], json.loads(row[1]), worker_id)
        return {
            "success": True,
            "message": message,
            "totalPending": total_pending,
            "remainingPending": total_pending - 1,
        }

    @staticmethod
    def _mark_claimed(
        db: sqlite3.Connection, message_id: str, message: dict[str, Any], worker_id: str
    ) -> dict[str, Any]:
        bot_params_of(message).update(status="processing", claimedBy=worker_id, claimedAt=now_ms())
        db.execute(
            "UPDATE messages SET status = 'processing', claimed_by = ?, body = ? WHERE id = ?",
            (worker_id, json.dumps(message), message_id),
        )
        log.info("message=%s claimed by %s", message_id, worker_id)
        return message

    def complete(self, message_id: str) -> dict[str, Any]:
        with self._transaction() as db:
            message = self._load(db, message_id)
            bot_params_of(message).update(status="complete", completedAt=now_ms())
            db.execute(
                "UPDATE messages SET status = 'complete', body = ? WHERE id = ?",
                (json.dumps(message), message_id),
            )
        log.info("message=%s complete", message_id)
        return {"success": True}

    # Admin -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._transaction() as db:
            return {**self._counts(db), "globalScore": self._global_score(db)}

    def purge(self) -> dict[str, Any]:
        with self._transaction() as db:
            purged = db.execute("DELETE FROM messages").rowcount
            global_score = self._global_score(db)
        log.warning("purged %d messages (globalScore %s kept)", purged, global_score)
        return {"success": True, "purged": purged, "globalScore": global_score}

    @staticmethod
    def _counts(db: sqlite3.Connection) -> dict[str, int]:
        by_status = dict(
            db.execute("SELECT status, COUNT(*) FROM messages GROUP BY status").fetchall()
        )
        return {
            "totalMessages": sum(by_status.values()),
            "pending": by_status.get("pending", 0),
            "processing": by_status.get("processing", 0),
            "complete": by_status.get("complete", 0),
        }


# HTTP ----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body: 400 when it is not JSON, 422 when it is not an object."""
    try:
        body = json.loads(
            await request.body(), parse_constant=_reject_constant, parse_float=_finite_float
        )
        # A lone surrogate ("\ud800") parses, but could be neither stored nor sent back.
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:
        raise Refused(400, {"error": f"Body is not valid JSON: {exc}"}) from exc
    if not isinstance(body, dict):
        raise Refused(422, {"error": "Body must be a JSON object", "detail": type(body).__name__})
    return body


def invalid(detail: str | list[str]) -> Refused:
    return Refused(422, {"error": "Invalid request", "detail": detail})


def required_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise Refused(400, {"success": False, "error": f"{name} required"})
    if not isinstance(value, str):
        raise invalid(f"{name}: must be a string")
    return value


def query_int(
    request: Request, names: tuple[str, ...], default: int | None, minimum: int
) -> int | None:
    for name in names:
        text = request.query_params.get(name)
        if text is None:
            continue
        try:
            value = int(text)
        except ValueError:
            raise invalid(f"{name}: not an integer") from None
        if not minimum <= value <= MAX_SAFE_INTEGER:
            raise invalid(f"{name}: must be between {minimum} and {MAX_SAFE_INTEGER}")
        return value
    return default


def new_message(body: dict[str, Any]) -> NewMessage:
    try:
        posted = NewMessage.model_validate(body)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()]
        raise invalid(problems) from exc
    priority = posted.bot_params.priority if posted.bot_params else 0
    if abs(priority) > MAX_SAFE_INTEGER or abs(posted.timestamp or 0) > MAX_SAFE_INTEGER:
        raise invalid("timestamp and botParams.priority must be safe integers")
    return posted


class QueueRoutes:
    """Each route translates between the wire and one store operation."""

    def __init__(self, store: QueueStore) -> None:
        self.store = store

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
        ]

    async def post_comment(self, request: Request) -> Response:
        return JSONResponse(self.store.post_comment(new_message(await json_object(request))))

    async def comments_after(self, request: Request) -> Response:
        after_ms = query_int(request, ("after", "since"), default=0, minimum=-MAX_SAFE_INTEGER)
        limit = query_int(request, ("limit",), default=None, minimum=0)
        return JSONResponse(self.store.comments_after(after_ms or 0, limit))

    async def patch_eq(self, request: Request) -> Response:
        score = (await json_object(request)).get("eqScore")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise invalid("eqScore: must be a number")
        if abs(score) > MAX_SAFE_INTEGER:
            raise invalid(f"eqScore: must be at most {MAX_SAFE_INTEGER} in size")
        return JSONResponse(self.store.patch_eq(request.path_params["message_id"], score))

    async def pending(self, request: Request) -> Response:
        limit = query_int(request, ("limit",), default=DEFAULT_PENDING_LIMIT, minimum=0)
        return JSONResponse(self.store.pending(limit or 0))

    async def claim(self, request: Request) -> Response:
        body = await json_object(request)
        message_id = required_string(body, "messageId")
        return JSONResponse(self.store.claim(message_id, required_string(body, "workerId")))

    async def claim_next(self, request: Request) -> Response:
        worker_id = required_string(await json_object(request), "workerId")
        return JSONResponse(self.store.claim_next(worker_id))

    async def complete(self, request: Request) -> Response:
        message_id = required_string(await json_object(request), "messageId")
        return JSONResponse(self.store.complete(message_id))

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.store.stats())

    async def purge(self, request: Request) -> Response:
        return JSONResponse(self.store.purge())


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
            unauthorized = JSONResponse(
                {"error": "Unauthorized"}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
            await unauthorized(scope, receive, send_with_cors)
            return
        await self.app(scope, receive, send_with_cors)


async def answer_refused(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, Refused):
        raise exc
    return JSONResponse(exc.answer, exc.status_code)


async def answer_not_found(request: Request, exc: Exception) -> Response:
    # A known path with another method is an unknown route too, as on the deployed queue.
    return JSONResponse({"error": "Not found"}, 404)


async def answer_internal_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "Internal error"}, 500)


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
