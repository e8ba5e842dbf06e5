"""`ollama-cloud web`: the fleet page, read-only. One snapshot of the fleet and the ledger (the
rows of `status`, the lists of `jobs`, the recent deliveries) as JSON, pushed to every open page
once a second over server-sent events; Prometheus metrics at /metrics; /healthz for checks.

A snapshot is read at most once per push interval, however many pages are open, in a few
round trips to Redis. Nothing here writes to Redis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from importlib import resources
from typing import Any

import anyio
import redis
import uvicorn
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.domain.job import JobKind
from orchestrator.ops import metrics
from orchestrator.ops.jobs import read_jobs
from orchestrator.ops.status import read_status
from orchestrator.services import State
from orchestrator.settings import Settings
from orchestrator.state.delivered import DeliveredRecord
from workers.contract.protocol import generate_task_id

log = logging.getLogger(__name__)

PUSH_INTERVAL_S = 1.0  # a snapshot to every open page this often
JOBS_LISTED = 50  # jobs in flight, and dead letters with lost scores, on the page
RECENT_LISTED = 30  # recent deliveries on the page
MINUTES_LISTED = 10  # totals per minute on the page
OPEN_PATHS = frozenset({"/healthz"})  # answered without credentials
REALM = 'Basic realm="ollama-cloud fleet", charset="UTF-8"'
# The page loads its own script and style and talks to its own origin, nothing else.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def static_dir() -> str:
    """The page's files (orchestrator/web_static: index.html, fleet.js, fleet.css)."""
    return str(resources.files("orchestrator") / "web_static")


# The snapshot -----------------------------------------------------------------------------------


def read_snapshot(state: State, flower_url: str) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready values: the fleet as `status` reads it, the
    jobs in flight and the letters as `jobs` lists them, the recent deliveries and the totals
    per minute."""
    now = time.time()
    fleet = read_status(state).as_json()
    jobs = read_jobs(state.ledger, JOBS_LISTED)
    recent, minutes = DeliveredRecord(state.redis, state.keys).read(
        RECENT_LISTED, MINUTES_LISTED, now
    )
    return {
        "at": now,
        "servers": fleet["servers"],
        "totals": fleet["totals"],
        "active": [asdict(row) for row in jobs.active],
        "active_total": jobs.active_total,
        "dead_letters": [asdict(row) for row in jobs.dead if row.kind == JobKind.REPLY],
        "lost_scores": [asdict(row) for row in jobs.dead if row.kind == JobKind.SCORE],
        "letters": asdict(jobs.letters),
        "recent": [
            {**asdict(entry), "task_id": generate_task_id(entry.job_id, entry.attempt)}
            for entry in recent
        ],
        "per_minute": [asdict(minute) for minute in minutes],
        "flower_url": flower_url,
    }


class SnapshotUnavailable(Exception):
    """No snapshot could be read; its message is fit for the page."""


class Snapshots:
    """The latest snapshot as JSON, read again once it is `max_age_s` old: one read per
    interval whatever the number of pages and requests."""

    def __init__(self, read: Callable[[], dict[str, Any]], max_age_s: float) -> None:
        self._read = read
        self.max_age_s = max_age_s
        self._lock = asyncio.Lock()
        self._body = ""
        self._read_at = float("-inf")
        self._failing = False
        self.reads = 0  # snapshots read from Redis so far

    async def latest(self) -> str:
        """The snapshot's JSON; raises `SnapshotUnavailable` when none could be read (Redis
        away, a record that does not read), logged once until one is read again."""
        async with self._lock:
            if time.monotonic() - self._read_at >= self.max_age_s:
                try:
                    snapshot = await anyio.to_thread.run_sync(self._read)
                except redis.RedisError as exc:
                    self._note_failure(f"Redis did not answer: {exc}")
                    raise SnapshotUnavailable("Redis did not answer") from exc
                except Exception as exc:  # a record that does not read must not end the page
                    self._note_failure(f"snapshot unreadable: {exc!r}")
                    raise SnapshotUnavailable(
                        "the snapshot could not be read: see the log"
                    ) from exc
                if self._failing:
                    log.info("fleet page: Redis answers again")
                self._failing = False
                self._body = json.dumps(snapshot, ensure_ascii=False)
                self._read_at = time.monotonic()
                self.reads += 1
            return self._body

    def _note_failure(self, what: str) -> None:
        if not self._failing:
            log.warning("fleet page: %s", what)
        self._failing = True


# Basic auth -------------------------------------------------------------------------------------


class BasicAuth(AuthenticationBackend):
    """One user and password for everything but the health check, compared in constant time."""

    def __init__(self, user: str, password: str) -> None:
        self._user = user.encode()
        self._password = password.encode()

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        if conn.url.path in OPEN_PATHS:
            return None
        scheme, _, encoded = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            raise AuthenticationError("credentials required")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AuthenticationError("credentials unreadable") from exc
        user, colon, password = decoded.partition(b":")
        # Both compared whatever the first gives, so the time taken tells nothing.
        user_ok = secrets.compare_digest(user, self._user)
        password_ok = secrets.compare_digest(password, self._password)
        if not (colon and user_ok and password_ok):
            raise AuthenticationError("credentials refused")
        return AuthCredentials(["authenticated"]), SimpleUser(user.decode(errors="replace"))


def refuse(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    return PlainTextResponse(
        "authentication required\n", status_code=401, headers={"WWW-Authenticate": REALM}
    )


# The app ----------------------------------------------------------------------------------------


class FleetPage:
    """The page's routes over one process's State, and the signal that the server is closing,
    so that open event streams end and the server can stop."""

    def __init__(self, state: State, settings: Settings) -> None:
        self.state = state
        self.settings = settings
        self.snapshots = Snapshots(
            lambda: read_snapshot(state, settings.flower_url.rstrip("/")), PUSH_INTERVAL_S
        )
        self.closing = asyncio.Event()
        self.push_interval_s = PUSH_INTERVAL_S

    def close(self) -> None:
        """Called in the server's event loop: every open stream ends within a moment."""
        self.closing.set()

    async def page(self, request: Request) -> Response:
        body = (resources.files("orchestrator") / "web_static" / "index.html").read_bytes()
        return Response(body, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def fleet(self, request: Request) -> Response:
        try:
            body = await self.snapshots.latest()
        except SnapshotUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def stream(self) -> AsyncIterator[str]:
        """A snapshot now and every interval after, until the client goes (Starlette ends
        the stream) or the server closes."""
        yield "retry: 2000\n\n"  # a page reconnects this soon after losing the stream
        while not self.closing.is_set():
            try:
                yield f"data: {await self.snapshots.latest()}\n\n"
            except SnapshotUnavailable as exc:
                yield f"event: problem\ndata: {json.dumps({'error': str(exc)})}\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), self.push_interval_s)

    async def metrics(self, request: Request) -> Response:
        try:
            body = await anyio.to_thread.run_sync(metrics.exposition, self.state)
        except redis.RedisError:
            return PlainTextResponse("Redis did not answer\n", status_code=503)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def app(self) -> Starlette:
        middleware = []
        credentials = self.settings.web_basic_auth_value()
        if credentials is not None:
            middleware.append(
                Middleware(
                    AuthenticationMiddleware, backend=BasicAuth(*credentials), on_error=refuse
                )
            )
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/api/fleet", self.fleet, methods=["GET"]),
            Route("/events", self.events, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        ]
        return Starlette(routes=routes, middleware=middleware)


# The server -------------------------------------------------------------------------------------


class PageServer(uvicorn.Server):
    """Uvicorn, told to stop by `stop` (set by the command's signal handlers, or a test), which
    first ends every open event stream so that it stops at once."""

    def __init__(self, config: uvicorn.Config, page: FleetPage, stop: threading.Event) -> None:
        super().__init__(config)
        self.page = page
        self.stop = stop

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the command's own handlers set `stop`

    async def serve(self, sockets: Any = None) -> None:
        watcher = asyncio.create_task(self.watch())
        try:
            await super().serve(sockets)
        finally:
            watcher.cancel()

    async def watch(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(0.1)  # as often as uvicorn looks at its own flag
        self.page.close()
        self.should_exit = True


def page_state(settings: Settings) -> State:
    """Redis for the page, tried once more at once rather than ridden out with backoff: a
    page says within a push that Redis does not answer, and asks again at the next."""
    state = State.from_settings(settings)
    state.redis.set_retry(Retry(NoBackoff(), retries=1))
    return state


def page_server(
    settings: Settings, stop: threading.Event, state: State | None = None
) -> PageServer:
    """The server for `settings.web_host` and `web_port`, not yet started."""
    page = FleetPage(state or page_state(settings), settings)
    config = uvicorn.Config(
        page.app(),
        host=settings.web_host,
        port=settings.web_port,
        log_config=None,  # our logging, one line per event
        access_log=False,  # a page asks once a second: not an event
        lifespan="off",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    return PageServer(config, page, stop)


def run_web(settings: Settings, stop: threading.Event) -> int:
    """Serve the fleet page until `stop` is set."""
    server = page_server(settings, stop)
    auth = "basic auth" if settings.web_basic_auth_value() else "no auth"
    log.info(
        "fleet page at http://%s:%d (%s), Flower at %s",
        settings.web_host, settings.web_port, auth, settings.flower_url,
    )  # fmt: skip
    try:
        server.run()
    finally:
        server.page.state.close()
    log.info("fleet page stopped")
    return 0 if server.started else 1
