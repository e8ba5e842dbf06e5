"""The site queue client maps every failure to our errors, against real servers on loopback."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from orchestrator.domain.messages import Message
from orchestrator.errors import (
    BadQueueAnswer,
    MessageGone,
    QueueClientError,
    QueueError,
    QueueServerError,
    QueueUnreachable,
)
from orchestrator.site_queue import SiteQueueClient
from standins.embedded_redis import free_port
from standins.http_server import ThreadedServer
from standins.local_queue import QueueStore, build_app

HOLD_S = 5.0  # how long the slow route holds an answer: far past the client's read timeout
Call = Callable[[SiteQueueClient], object]
EVERY_CALL: dict[str, Call] = {
    "claim_next": lambda queue: queue.claim_next("bridge-1"),
    "claim": lambda queue: queue.claim("m1", "bridge-1"),
    "pending": lambda queue: queue.pending(),
    "post_comment": lambda queue: queue.post_comment({"text": "t", "username": "u"}),
    "complete": lambda queue: queue.complete("m1"),
    "patch_eq": lambda queue: queue.patch_eq("m1", 3),
    "comments_after": lambda queue: queue.comments_after(0),
    "stats": lambda queue: queue.stats(),
    "purge": lambda queue: queue.purge(),
}
GONE_ON_404 = {"claim", "complete", "patch_eq"}


def misbehaving_app(release: threading.Event) -> Starlette:
    """A queue that answers every route by the first path segment: /500/api/..., /slow/api/..."""
    answers: dict[str, Callable[[], Response]] = {
        "500": lambda: PlainTextResponse("boom", 500),
        "503": lambda: JSONResponse({"error": "overloaded"}, 503),
        "418": lambda: JSONResponse({"error": "short and stout"}, 418),
        "404": lambda: JSONResponse({"error": "Not found"}, 404),
        "html": lambda: PlainTextResponse("<html>maintenance</html>"),
        "list": lambda: JSONResponse(["not", "an", "object"]),
        "empty-object": lambda: JSONResponse({}),
        "message-not-object": lambda: JSONResponse({"success": True, "message": "text"}),
        "success-without-message": lambda: JSONResponse({"success": True, "message": None}),
        "redirect": lambda: RedirectResponse("/elsewhere", 302),
    }

    async def answer(request: Request) -> Response:
        mode = request.path_params["mode"]
        if mode == "slow":
            await anyio.to_thread.run_sync(release.wait, HOLD_S)
            return JSONResponse({})
        return answers[mode]()

    methods = ["GET", "POST", "PATCH"]
    return Starlette(routes=[Route("/{mode}/{rest:path}", answer, methods=methods)])


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    release = threading.Event()
    with ThreadedServer(misbehaving_app(release)) as server:
        yield server.url
        release.set()  # let held answers finish so the server stops at once


@pytest.fixture
def local_queue(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db_path = tmp_path / "queue.sqlite3"
    store = QueueStore(db_path)
    try:
        with ThreadedServer(build_app(store)) as server:
            yield server.url, db_path
    finally:
        store.close()


# No answer -----------------------------------------------------------------------------------


def test_refused_connection_is_unreachable_at_once() -> None:
    started = time.monotonic()
    with (
        SiteQueueClient(f"http://127.0.0.1:{free_port()}") as queue,
        pytest.raises(QueueUnreachable),
    ):
        queue.claim_next("bridge-1")
    assert time.monotonic() - started < 2


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port whose accept queue is full: a new connection hangs, as to an unreachable host."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.create_connection(listener.getsockname(), timeout=5)
            fillers.append(filler)
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(probe)
            probe.settimeout(0.2)
            try:
                probe.connect(listener.getsockname())
            except TimeoutError:
                break
        else:
            pytest.skip("this kernel accepts past a full listen backlog")
        yield int(listener.getsockname()[1])
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_server_that_does_not_accept_is_given_up_on_at_the_connect_timeout(
    unaccepting_port: int,
) -> None:
    started = time.monotonic()
    with (
        SiteQueueClient(f"http://127.0.0.1:{unaccepting_port}", connect_timeout=0.3) as queue,
        pytest.raises(QueueUnreachable),
    ):
        queue.stats()
    assert time.monotonic() - started < 2


def test_a_slow_answer_is_unreachable_at_the_read_timeout(misbehaving: str) -> None:
    started = time.monotonic()
    with SiteQueueClient(f"{misbehaving}/slow", timeout=0.3) as queue:
        with pytest.raises(QueueUnreachable):
            queue.claim_next("bridge-1")
        with pytest.raises(QueueUnreachable):
            queue.complete("m1")
    assert time.monotonic() - started < 2


# Error answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVERY_CALL)
def test_5xx_is_a_server_error(misbehaving: str, name: str) -> None:
    with SiteQueueClient(f"{misbehaving}/500") as queue, pytest.raises(QueueServerError) as error:
        EVERY_CALL[name](queue)
    assert (error.value.status_code, error.value.detail) == (500, "boom")
    with SiteQueueClient(f"{misbehaving}/503") as queue, pytest.raises(QueueServerError) as error:
        EVERY_CALL[name](queue)
    assert (error.value.status_code, error.value.detail) == (503, "overloaded")


@pytest.mark.parametrize("name", EVERY_CALL)
def test_4xx_is_a_client_error_and_404_on_a_message_is_gone(misbehaving: str, name: str) -> None:
    with SiteQueueClient(f"{misbehaving}/418") as queue, pytest.raises(QueueClientError) as error:
        EVERY_CALL[name](queue)
    assert (error.value.status_code, error.value.detail) == (418, "short and stout")
    expected = MessageGone if name in GONE_ON_404 else QueueClientError
    with SiteQueueClient(f"{misbehaving}/404") as queue, pytest.raises(expected) as gone:
        EVERY_CALL[name](queue)
    if isinstance(gone.value, MessageGone):
        assert gone.value.message_id == "m1"


@pytest.mark.parametrize("mode", ["html", "list", "empty-object", "redirect"])
@pytest.mark.parametrize("name", EVERY_CALL)
def test_an_answer_that_is_not_the_contract_is_bad(misbehaving: str, mode: str, name: str) -> None:
    if mode == "empty-object" and name in {"stats", "purge"}:
        return  # the contract names no field of these answers: any object will do
    with SiteQueueClient(f"{misbehaving}/{mode}") as queue, pytest.raises(BadQueueAnswer):
        EVERY_CALL[name](queue)


@pytest.mark.parametrize("mode", ["message-not-object", "success-without-message"])
def test_claim_next_without_a_usable_message_is_bad(misbehaving: str, mode: str) -> None:
    with SiteQueueClient(f"{misbehaving}/{mode}") as queue:
        with pytest.raises(BadQueueAnswer):
            queue.claim_next("bridge-1")
        with pytest.raises(BadQueueAnswer):
            queue.claim("m1", "bridge-1")


def test_every_error_is_a_queue_error() -> None:
    for error in (
        QueueUnreachable,
        QueueClientError,
        QueueServerError,
        MessageGone,
        BadQueueAnswer,
    ):
        assert issubclass(error, QueueError)


# Against the local queue ---------------------------------------------------------------------


def test_404_on_complete_and_patch_is_gone(local_queue: tuple[str, Path]) -> None:
    url, _ = local_queue
    with SiteQueueClient(url) as queue:
        with pytest.raises(MessageGone):
            queue.complete("vanished")
        with pytest.raises(MessageGone):
            queue.patch_eq("vanished", 10)
        assert queue.stats()["globalScore"] == 0


def insert_raw(db_path: Path, row_id: str, body: dict[str, Any]) -> None:
    """A message the local queue would never accept by POST, as a buggy site could hold one."""
    with sqlite3.connect(db_path) as db:
        db.execute(
            "INSERT INTO messages (id, timestamp, status, priority, body)"
            " VALUES (?, 1, 'pending', 5, ?)",
            (row_id, json.dumps(body)),
        )
    db.close()


def test_claim_next_passes_a_malformed_message_through_raw(local_queue: tuple[str, Path]) -> None:
    url, db_path = local_queue
    wrong_types = {"id": "odd-1", "timestamp": "noon", "text": ["not", "text"], "botParams": 7}
    insert_raw(db_path, "odd-1", wrong_types)
    insert_raw(db_path, "odd-2", {"text": "no id, no username"})
    with SiteQueueClient(url) as queue:
        first = queue.claim_next("bridge-1").message
        second = queue.claim_next("bridge-1").message
    assert first is not None
    assert second is not None
    assert first["text"] == ["not", "text"]
    assert first["timestamp"] == "noon"
    assert first["botParams"]["claimedBy"] == "bridge-1"
    assert "id" not in second
    for malformed in (first, second):
        with pytest.raises(ValidationError):
            Message.model_validate(malformed)


def test_extra_fields_come_through_claim_next(local_queue: tuple[str, Path]) -> None:
    """The site stores a fixed set of fields today; fields it may add later come through."""
    url, db_path = local_queue
    stored = {
        "id": "extra-1",
        "timestamp": 1,
        "text": "hello",
        "username": "Alice",
        "sparkle": {"deep": [1, 2, None]},
        "botParams": {"entity": "the-eternal", "status": "pending", "mood": "curious"},
    }
    with sqlite3.connect(db_path) as db:
        db.execute(
            "INSERT INTO messages (id, timestamp, status, priority, body) VALUES (?, 1, ?, 5, ?)",
            ("extra-1", "pending", json.dumps(stored)),
        )
    with SiteQueueClient(url) as queue:
        claimed = queue.claim_next("bridge-1")
    assert claimed.message is not None
    assert claimed.message["sparkle"] == {"deep": [1, 2, None]}
    assert claimed.message["botParams"]["mood"] == "curious"
    assert Message.model_validate(claimed.message).bot_params is not None
