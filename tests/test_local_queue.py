"""What the local queue has beyond the site queue's contract (tests/test_site_contract.py holds
the contract): durability across restarts, the bearer token, open CORS with it, atomic claims
under concurrency, and our own client and bridge speaking to it. Real HTTP on loopback."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.bridge import Bridge
from orchestrator.celery import make_app
from orchestrator.domain.messages import Message, NewMessage
from orchestrator.errors import MessageGone, QueueClientError, QueueServerError
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.site_queue import SiteQueueClient
from standins import SAMPLE_ENTITIES_DIR
from standins.http_server import ThreadedServer
from standins.local_queue import MAX_BODY_BYTES, QueueStore, build_app

TOKEN = "s3cret-token"


class LocalQueues:
    """Local queues on one SQLite file: a restart is `stop_all()` then `start()`."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.running: list[tuple[ThreadedServer, QueueStore]] = []

    def start(self, token: str | None = None) -> str:
        store = QueueStore(self.db_path)
        server = ThreadedServer(build_app(store, token))
        server.start()
        self.running.append((server, store))
        return server.url

    def stop_all(self) -> None:
        while self.running:
            server, store = self.running.pop()
            server.stop()
            store.close()


@pytest.fixture
def queues(tmp_path: Path) -> Iterator[LocalQueues]:
    started = LocalQueues(tmp_path / "queue.sqlite3")
    yield started
    started.stop_all()


@pytest.fixture
def queue_url(queues: LocalQueues) -> str:
    return queues.start()


@pytest.fixture
def queue(queue_url: str) -> Iterator[SiteQueueClient]:
    with SiteQueueClient(queue_url) as client:
        yield client


def human(
    message_id: str, timestamp: int, entity: str | None = "the-eternal", **bot: Any
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": message_id,
        "timestamp": timestamp,
        "text": f"hello from {message_id}",
        "username": "Alice",
        "color": "080150227",
    }
    if entity is not None:
        message["botParams"] = {"entity": entity, **bot}
    return message


def by_id(queue: SiteQueueClient) -> dict[str, dict[str, Any]]:
    return {message["id"]: message for message in queue.comments_after(0)}


# Durability ----------------------------------------------------------------------------------


def test_a_restart_loses_nothing(queues: LocalQueues) -> None:
    with SiteQueueClient(queues.start()) as queue:
        queue.post_comment(human("kept", 1))
        queue.post_comment(human("claimed", 2, priority=9))
        queue.post_comment(human("completed-while-pending", 3, priority=1))
        queue.claim_next("bridge-1")
        queue.complete("completed-while-pending")
        queue.patch_eq("kept", 25)
        before = by_id(queue)
        stats = queue.stats()
        pending = queue.pending()
    assert stats["pendingQueue"] == 2
    queues.stop_all()
    with SiteQueueClient(queues.start()) as queue:
        assert by_id(queue) == before
        assert queue.stats() == stats
        assert queue.pending() == pending
        assert queue.post_comment(human("kept", 4)).status == "duplicate"
        # The completed message is still in the pending list: the claim after it fails once.
        with pytest.raises(QueueServerError):
            queue.claim_next("bridge-1")
        claimed = queue.claim_next("bridge-1").message
        assert claimed is not None
        assert claimed["id"] == "kept"


def test_a_queue_file_from_before_the_pending_list_column_opens(tmp_path: Path) -> None:
    """A file written before a completed message could stay in the pending list: its pending
    messages are the pending list, and the rest of the queue goes on as it was."""
    db_path = tmp_path / "queue.sqlite3"
    with sqlite3.connect(db_path) as db:
        db.executescript(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL, status TEXT,"
            " priority INTEGER NOT NULL, claimed_by TEXT, body TEXT NOT NULL);"
            "CREATE TABLE totals (name TEXT PRIMARY KEY, value REAL NOT NULL);"
            "INSERT INTO totals VALUES ('globalScore', 30);"
        )
        for message_id, status in (("old-pending", "pending"), ("old-done", "complete")):
            body = human(message_id, 1)
            body["botParams"]["status"] = status
            db.execute(
                "INSERT INTO messages (id, timestamp, status, priority, body)"
                " VALUES (?, 1, ?, 5, ?)",
                (message_id, status, json.dumps(body)),
            )
    db.close()
    store = QueueStore(db_path)
    try:
        with ThreadedServer(build_app(store)) as server, SiteQueueClient(server.url) as queue:
            assert [message["id"] for message in queue.pending()] == ["old-pending"]
            stats = queue.stats()
            assert (stats["recentMessages"], stats["pendingQueue"], stats["globalScore"]) == (
                2,
                1,
                30,
            )
            queue.complete("old-pending")
            assert [message["id"] for message in queue.pending()] == ["old-pending"]
            with pytest.raises(QueueServerError):
                queue.claim_next("bridge-1")
            assert queue.claim_next("bridge-1").message is None
    finally:
        store.close()


# The token and CORS --------------------------------------------------------------------------


def test_token_is_enforced_on_every_route(queues: LocalQueues) -> None:
    url = queues.start(TOKEN)
    with httpx.Client(base_url=url, timeout=5) as raw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in (
                ("GET", "/api/admin/stats"),
                ("POST", "/api/queue/claim-next"),
                ("POST", "/api/comments"),
                ("GET", "/api/comments"),
                ("PATCH", "/api/comments/x"),
                ("POST", "/api/admin/purge"),
                ("GET", "/nowhere"),
            ):
                response = raw.request(method, path, headers=headers, json={"workerId": "w"})
                assert response.status_code == 401
                assert response.json() == {"error": "Unauthorized"}
                assert response.headers["access-control-allow-origin"] == "*"
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        assert raw.get("/api/admin/stats", headers=authorized).status_code == 200
        assert raw.get("/nowhere", headers=authorized).status_code == 404
    with SiteQueueClient(url) as anonymous, pytest.raises(QueueClientError) as refused:
        anonymous.stats()
    assert refused.value.status_code == 401
    with SiteQueueClient(url, TOKEN) as queue:
        queue.post_comment(human("with-token", 1))
        claimed = queue.claim_next("bridge-1").message
        assert claimed is not None
        assert claimed["id"] == "with-token"
        assert queue.stats()["recentMessages"] == 1


def test_cors_is_open_and_preflight_needs_no_token(queues: LocalQueues) -> None:
    url = queues.start(TOKEN)
    with httpx.Client(base_url=url, timeout=5) as raw:
        preflight = raw.options(
            "/api/queue/claim-next",
            headers={
                "Origin": "https://saywhatwant.app",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        answer = raw.get("/api/admin/stats", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.headers["access-control-allow-origin"] == "*"
        assert raw.get("/api/admin/stats").headers["access-control-allow-origin"] == "*"


# Concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("claimers", [2, 8])
def test_concurrent_claimers_never_share_a_message(
    queue: SiteQueueClient, queue_url: str, claimers: int
) -> None:
    posted = {f"c{index}" for index in range(200)}
    for index, message_id in enumerate(sorted(posted)):
        queue.post_comment(human(message_id, index + 1))
    taken: list[list[str]] = [[] for _ in range(claimers)]
    start = threading.Barrier(claimers)

    def claim_all(mine: list[str]) -> None:
        with SiteQueueClient(queue_url) as client:
            start.wait(timeout=5)
            while (claimed := client.claim_next(f"worker-{id(mine)}").message) is not None:
                mine.append(claimed["id"])

    threads = [threading.Thread(target=claim_all, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    everything = [message_id for mine in taken for message_id in mine]
    assert len(everything) == len(set(everything)) == 200
    assert set(everything) == posted
    assert queue.stats()["pendingQueue"] == 0
    statuses = {message["botParams"]["status"] for message in queue.comments_after(0)}
    assert statuses == {"processing"}


def test_concurrent_posts_past_the_cap_keep_every_pending_message(tmp_path: Path) -> None:
    """Posters racing past the cap: the cache stays at its size in plain messages, and every
    pending message is kept and claimable."""
    store = QueueStore(tmp_path / "queue.sqlite3", max_messages=20)
    try:
        with ThreadedServer(build_app(store)) as server:

            def post_many(prefix: str) -> None:
                with SiteQueueClient(server.url) as client:
                    for index in range(40):
                        entity = "the-eternal" if index % 4 == 0 else None
                        client.post_comment(human(f"{prefix}-{index}", index + 1, entity))

            threads = [threading.Thread(target=post_many, args=(f"poster{n}",)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=20)
            assert not any(thread.is_alive() for thread in threads)
            with SiteQueueClient(server.url) as queue:
                stats = queue.stats()
                assert stats["pendingQueue"] == 40
                assert stats["recentMessages"] == 40 + 1  # the newest plain message is kept
                claimed = 0
                while queue.claim_next("bridge-1").message is not None:
                    claimed += 1
                assert claimed == 40
    finally:
        store.close()


# Our client and bridge against it ------------------------------------------------------------


def test_the_site_client_reads_every_answer(queue: SiteQueueClient) -> None:
    first = queue.post_comment(NewMessage(text="hi", username="Bob"))
    assert first.status == "success"
    assert queue.post_comment(human("h1", 1)).status == "success"
    assert queue.post_comment(human("h1", 2)).status == "duplicate"
    assert queue.post_comment(human("h2", 3)).status == "success"
    assert [message["id"] for message in queue.pending()] == ["h1", "h2"]

    claimed = queue.claim_next("bridge-1")
    assert claimed.message is not None
    assert (claimed.message["id"], claimed.total_pending, claimed.remaining_pending) == (
        "h1",
        2,
        1,
    )
    Message.model_validate(claimed.message)
    assert queue.claim("h2", "bridge-1")["botParams"]["claimedBy"] == "bridge-1"
    assert queue.claim_next("bridge-1").reason == "no_pending_messages"
    for message in queue.comments_after(0):
        Message.model_validate(message)

    assert queue.patch_eq("h1", 40) == 40
    assert queue.patch_eq("h1", 40) == 80
    queue.complete("h1")
    with pytest.raises(MessageGone):
        queue.claim("h1", "bridge-1")  # claimed already: no longer in the pending list
    for gone in (queue.complete, lambda message_id: queue.patch_eq(message_id, 5)):
        with pytest.raises(MessageGone):
            gone("unknown")
    assert queue.stats()["globalScore"] == 80
    queue.purge()
    assert queue.comments_after(0) == []
    assert queue.stats()["globalScore"] == 80


def test_the_site_client_sees_the_defect_as_a_server_error_once(queue: SiteQueueClient) -> None:
    queue.post_comment(human("early", 1))
    queue.post_comment(human("later", 2))
    queue.complete("early")
    with pytest.raises(QueueClientError) as conflict:
        queue.claim("early", "bridge-1")
    assert conflict.value.status_code == 409
    with pytest.raises(QueueServerError) as defect:
        queue.claim_next("bridge-1")
    assert defect.value.status_code == 500
    claimed = queue.claim_next("bridge-1").message
    assert claimed is not None
    assert claimed["id"] == "later"


def test_the_bridge_survives_the_defect_and_claims_again(
    redis_url: str, queue_url: str, queue: SiteQueueClient
) -> None:
    queue.post_comment(human("early", 1))
    queue.post_comment(human("later", 2))
    queue.complete("early")
    settings = Settings(
        redis_url=redis_url,
        queue_url=queue_url,
        entities_dir=SAMPLE_ENTITIES_DIR,
        bridge_id="bridge-defect",
        eq_enabled=False,
    )
    services = Services.build(settings)
    try:
        bridge = Bridge(services, make_app(settings))
        fleet = services.fleet.read()
        assert bridge.claim_one(fleet) is False  # the 500: logged, backed off, no crash
        assert bridge.claim_one(fleet) is True
    finally:
        services.close()
    # Claimed by the bridge (then given up: no server has its model here).
    assert by_id(queue)["later"]["botParams"]["claimedBy"] == "bridge-defect"


def test_patch_reaches_ids_that_need_quoting(queue: SiteQueueClient) -> None:
    queue.post_comment(human("odd id/with?chars#", 1))
    assert queue.patch_eq("odd id/with?chars#", 3) == 3
    assert by_id(queue)["odd id/with?chars#"]["eqScore"] == 3


# What the site's JSON can carry --------------------------------------------------------------

LONE = "\udc00"  # a lone surrogate: a JavaScript string can hold one, JSON.stringify escapes it
LONE_ID = f"h-surr-{LONE}"


def as_the_site_writes(content: Any) -> bytes:
    """JSON as JSON.stringify writes it: a lone surrogate escaped, every other character as it
    is, in UTF-8."""
    return json.dumps(content, ensure_ascii=False).encode("utf-8", "backslashreplace")


def lone_surrogate_message(message_id: str, timestamp: int) -> dict[str, Any]:
    return {
        **human(message_id, timestamp, entity=f"the-{LONE}eternal", sessionId=f"s{LONE}"),
        "text": f"a{LONE}b \U0001f600 \u00e9",
        "username": f"Al{LONE}ice",
        "context": [f"bo{LONE}: hi", "Alice: \ud800"],
    }


def sent_as_the_site_sends(response: httpx.Response) -> Any:
    """The answer's JSON, checked to be what the site would send: valid UTF-8, each lone
    surrogate escaped (as its six characters), every other character as it is."""
    assert response.status_code == 200, response.text[:500]
    text = response.content.decode("utf-8")  # strict: a raw surrogate is not UTF-8
    assert "\\udc00" in text
    assert "\U0001f600 \u00e9" in text
    return response.json()


def test_a_lone_surrogate_in_any_string_is_kept_and_answered_escaped(queues: LocalQueues) -> None:
    posted = lone_surrogate_message(LONE_ID, 1)
    with httpx.Client(base_url=queues.start(), timeout=10) as raw:

        def post(body: dict[str, Any]) -> Any:
            headers = {"Content-Type": "application/json"}
            response = raw.post("/api/comments", content=as_the_site_writes(body), headers=headers)
            assert response.status_code == 200, response.text
            return response.json()

        def call(path: str, body: dict[str, Any]) -> httpx.Response:
            return raw.post(path, content=as_the_site_writes(body))

        assert post(posted) == {"id": LONE_ID, "timestamp": 1, "status": "success"}
        assert post(posted)["status"] == "duplicate"
        post(human("h-after-1", 2))
        post(lone_surrogate_message(f"h-surr-\ud800-{LONE}", 3))
        post(human("h-after-2", 4))

        listed = sent_as_the_site_sends(raw.get("/api/queue/pending"))["pending"]
        first = listed[0]
        assert [message["id"] for message in listed] == [
            LONE_ID, "h-after-1", f"h-surr-\ud800-{LONE}", "h-after-2"
        ]  # fmt: skip
        for field in ("id", "text", "username", "context"):
            assert first[field] == posted[field]
        assert first["botParams"]["entity"] == f"the-{LONE}eternal"
        assert first["botParams"]["humanUsername"] == f"Al{LONE}ice"

        claimed = sent_as_the_site_sends(call("/api/queue/claim-next", {"workerId": "bridge-1"}))
        assert claimed["message"] == {
            **first,
            "botParams": {**first["botParams"], **claimed["message"]["botParams"]},
        }
        assert claimed["message"]["botParams"]["status"] == "processing"
        # The claims after it go on (no 500), and a claim by a lone-surrogate id answers too.
        following = call("/api/queue/claim-next", {"workerId": "bridge-1"})
        assert following.status_code == 200, following.text
        assert following.json()["message"]["id"] == "h-after-1"
        by_claim = call(
            "/api/queue/claim", {"messageId": f"h-surr-\ud800-{LONE}", "workerId": f"w{LONE}"}
        )
        assert sent_as_the_site_sends(by_claim)["message"]["botParams"]["claimedBy"] == f"w{LONE}"
        last = call("/api/queue/claim-next", {"workerId": "bridge-1"}).json()
        assert last["message"]["id"] == "h-after-2"

        # PATCH with the id percent-encoded (the lone surrogate as its three bytes).
        patched = sent_as_the_site_sends(
            raw.patch("/api/comments/h-surr-%ED%B0%80", json={"eqScore": 7})
        )
        assert (patched["message"]["id"], patched["message"]["eqScore"]) == (LONE_ID, 7)
        assert patched["globalScore"] == 7
        assert raw.patch("/api/comments/h-surr-%EF%BF%BD", json={"eqScore": 1}).status_code == 404
        completed = call("/api/queue/complete", {"messageId": LONE_ID})
        assert (completed.status_code, completed.json()) == (200, {"success": True})

        answer = sent_as_the_site_sends(raw.get("/api/comments", params={"after": "0"}))
        kept = {message["id"]: message for message in answer["messages"]}
        assert kept[LONE_ID]["text"] == posted["text"]
        assert kept[LONE_ID]["eqScore"] == 7
        assert kept[LONE_ID]["botParams"]["status"] == "complete"
    queues.stop_all()
    with httpx.Client(base_url=queues.start(), timeout=10) as raw:
        after_restart = sent_as_the_site_sends(raw.get("/api/comments", params={"after": "0"}))
        assert after_restart["messages"] == answer["messages"]


def test_a_claim_that_cannot_be_answered_is_not_made(queues: LocalQueues) -> None:
    """A hand-made row holding what JSON cannot carry: claim-next and claim answer 500, and the
    message stays pending, unclaimed, as it was."""
    url = queues.start()
    row = human("nan-score", 1)
    row["eqScore"] = float("nan")
    row["botParams"]["status"] = "pending"
    with sqlite3.connect(queues.db_path) as db:
        db.execute(
            "INSERT INTO messages (id, timestamp, status, priority, body)"
            " VALUES ('nan-score', 1, 'pending', 5, ?)",
            (json.dumps(row),),
        )
    db.close()
    with httpx.Client(base_url=url, timeout=10) as raw:
        for path, body in (
            ("/api/queue/claim-next", {"workerId": "bridge-1"}),
            ("/api/queue/claim", {"messageId": "nan-score", "workerId": "bridge-1"}),
        ):
            response = raw.post(path, json=body)
            assert response.status_code == 500
            assert "nan-score" in response.json()["error"]
    with sqlite3.connect(queues.db_path) as db:
        status, claimed_by, body = db.execute(
            "SELECT status, claimed_by, body FROM messages WHERE id = 'nan-score'"
        ).fetchone()
    db.close()
    assert (status, claimed_by, body) == ("pending", None, json.dumps(row))


# Request bodies as large as the site takes ---------------------------------------------------

FIFTY_MB = 50 * 1024 * 1024


@pytest.mark.e2e  # no process of its own, but seconds of work and hundreds of MB: not the edit loop
def test_a_50_mb_message_is_posted_claimed_and_listed(queue_url: str) -> None:
    """The deployed queue takes bodies up to 100 MB: a 50 MB text, or context, is kept and
    answered whole."""
    big = {
        "big-text": {"text": "x" * FIFTY_MB},
        "big-context": {"context": ["ada: " + "y" * (FIFTY_MB // 200)] * 200},
    }
    with httpx.Client(base_url=queue_url, timeout=60) as raw:
        for message_id, fields in big.items():
            response = raw.post("/api/comments", json={**human(message_id, 1), **fields})
            assert response.status_code == 200, response.text[:500]
        for message_id, fields in big.items():
            claimed = raw.post("/api/queue/claim-next", json={"workerId": "bridge-1"})
            assert claimed.status_code == 200, claimed.text[:500]
            message = claimed.json()["message"]
            assert message["id"] == message_id
            assert {name: message[name] for name in fields} == fields
        listed = raw.get("/api/comments", params={"after": "0"}).json()["messages"]
    assert [message["id"] for message in listed] == ["big-context", "big-text"]
    for message in listed:
        fields = big[message["id"]]
        assert {name: message[name] for name in fields} == fields


def test_a_body_past_100_mb_is_refused_with_413(queue_url: str) -> None:
    with httpx.Client(base_url=queue_url, timeout=60) as raw:
        # Declared too large: refused before it is read.
        host, port = queue_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /api/comments HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
            )
            head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 413 "), head[:200]

        # Streamed without a length: refused once past the cap.
        chunk = b" " * (1024 * 1024)

        def too_much() -> Iterator[bytes]:
            yield b'{"text": "'
            for _ in range(MAX_BODY_BYTES // len(chunk) + 1):
                yield chunk
            yield b'", "username": "u"}'

        response = raw.post("/api/comments", content=too_much())
        assert response.status_code == 413
        assert "too large" in response.json()["error"]
        assert raw.get("/api/admin/stats").json()["recentMessages"] == 0
