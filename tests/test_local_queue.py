"""The local queue speaks the site queue's contract (docs/site-queue.md), over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.domain.messages import Message, NewMessage
from orchestrator.errors import MessageGone, QueueClientError
from orchestrator.site_queue import SiteQueueClient
from standins.http_server import ThreadedServer
from standins.local_queue import QueueStore, build_app

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


@pytest.fixture
def raw(queue_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=queue_url, timeout=5) as client:
        yield client


@pytest.fixture(scope="module")
def shared_raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One queue for the tests of the HTTP edge, which read nothing that another test writes."""
    started = LocalQueues(tmp_path_factory.mktemp("shared") / "queue.sqlite3")
    with httpx.Client(base_url=started.start(), timeout=5) as client:
        yield client
    started.stop_all()


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


# Posting -------------------------------------------------------------------------------------


def test_post_then_repost_is_a_duplicate_that_changes_nothing(queue: SiteQueueClient) -> None:
    first = queue.post_comment(human("m1", 1000))
    assert (first.id, first.timestamp, first.status) == ("m1", 1000, "success")
    stored = by_id(queue)["m1"]
    assert stored["botParams"] == {"entity": "the-eternal", "status": "pending", "priority": 5}
    assert stored["message-type"] == "human"
    assert stored["domain"] == "saywhatwant.app"
    Message.model_validate(stored)

    again = human("m1", 2000)
    again["text"] = "changed"
    second = queue.post_comment(again)
    assert (second.id, second.timestamp, second.status) == ("m1", 1000, "duplicate")
    assert by_id(queue) == {"m1": stored}


def test_post_without_id_or_timestamp_gets_both(queue: SiteQueueClient) -> None:
    answer = queue.post_comment(NewMessage(text="hi", username="Bob"))
    assert answer.status == "success"
    assert len(answer.id) == 10
    assert answer.id.isalnum()
    assert answer.id == answer.id.lower()
    assert answer.timestamp > 1_600_000_000_000
    assert by_id(queue)[answer.id]["timestamp"] == answer.timestamp


def test_only_human_messages_with_an_entity_are_pending(queue: SiteQueueClient) -> None:
    queue.post_comment(human("queued", 1))
    queue.post_comment(human("no-bot", 2, entity=None))
    queue.post_comment(human("empty-entity", 3, entity=""))
    reply = human("reply", 4) | {"message-type": "AI", "replyTo": "queued"}
    queue.post_comment(reply)
    assert [message["id"] for message in queue.pending()] == ["queued"]
    stored = by_id(queue)
    assert "status" not in stored["reply"]["botParams"]
    assert "botParams" not in stored["no-bot"]


def test_pending_order_is_priority_then_age(queue: SiteQueueClient) -> None:
    queue.post_comment(human("p5-new", 500))
    queue.post_comment(human("p9-new", 400, priority=9))
    queue.post_comment(human("p0-old", 100, priority=0))  # 0 counts as 5
    queue.post_comment(human("p1-oldest", 50, priority=1))
    queue.post_comment(human("p9-old", 300, priority=9))
    queue.post_comment(human("p6", 600, priority=6))
    queue.post_comment(human("missing-old", 200))  # missing counts as 5
    expected = ["p9-old", "p9-new", "p6", "p0-old", "missing-old", "p5-new", "p1-oldest"]
    assert [message["id"] for message in queue.pending()] == expected
    assert [message["id"] for message in queue.pending(limit=2)] == expected[:2]
    claimed = [queue.claim_next("w").message for _ in expected]
    assert [message["id"] for message in claimed if message] == expected


# Claiming ------------------------------------------------------------------------------------


def test_claim_next_marks_processing(queue: SiteQueueClient) -> None:
    queue.post_comment(human("a", 1))
    queue.post_comment(human("b", 2))
    claimed = queue.claim_next("bridge-1")
    assert claimed.message is not None
    assert (claimed.total_pending, claimed.remaining_pending, claimed.reason) == (2, 1, None)
    bot = claimed.message["botParams"]
    assert (claimed.message["id"], bot["status"], bot["claimedBy"]) == (
        "a",
        "processing",
        "bridge-1",
    )
    assert bot["claimedAt"] > 1_600_000_000_000
    assert by_id(queue)["a"] == claimed.message
    assert [message["id"] for message in queue.pending()] == ["b"]


def test_claim_next_when_empty(queue: SiteQueueClient, raw: httpx.Client) -> None:
    empty = queue.claim_next("bridge-1")
    assert (empty.message, empty.reason, empty.total_pending) == (None, "no_pending_messages", 0)
    response = raw.post("/api/queue/claim-next", json={"workerId": "w"})
    assert response.status_code == 200
    assert response.json() == {
        "success": False,
        "message": None,
        "reason": "no_pending_messages",
        "totalPending": 0,
        "remainingPending": 0,
    }


def test_claim_next_without_worker_id_is_400(raw: httpx.Client) -> None:
    for body in ({}, {"workerId": ""}, {"workerId": None}):
        response = raw.post("/api/queue/claim-next", json=body)
        assert response.status_code == 400
        assert response.json()["success"] is False


def test_claim_by_id(queue: SiteQueueClient, raw: httpx.Client) -> None:
    queue.post_comment(human("target", 1))
    queue.post_comment(human("not-queued", 2, entity=None))
    message = queue.claim("target", "bridge-1")
    assert message["botParams"]["status"] == "processing"
    assert message["botParams"]["claimedBy"] == "bridge-1"

    again = raw.post("/api/queue/claim", json={"messageId": "target", "workerId": "bridge-2"})
    assert again.status_code == 409  # queued, but no longer pending
    assert again.json()["success"] is False
    assert "error" in again.json()
    with pytest.raises(QueueClientError) as refused:
        queue.claim("target", "bridge-2")
    assert refused.value.status_code == 409

    for message_id in ("not-queued", "unknown"):
        answer = raw.post("/api/queue/claim", json={"messageId": message_id, "workerId": "b"})
        assert answer.status_code == 404
        assert answer.json()["success"] is False
        with pytest.raises(MessageGone):
            queue.claim(message_id, "bridge-1")
    queue.complete("target")
    with pytest.raises(MessageGone):
        queue.claim("target", "bridge-1")


@pytest.mark.parametrize("claimers", [2, 8])
def test_concurrent_claimers_never_share_a_message(
    queue: SiteQueueClient, queue_url: str, claimers: int
) -> None:
    posted = {f"c{index}" for index in range(200)}
    for index, message_id in enumerate(sorted(posted)):
        queue.post_comment(human(message_id, index))
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
    assert queue.stats()["processing"] == 200


def test_complete(queue: SiteQueueClient, raw: httpx.Client) -> None:
    queue.post_comment(human("done", 1))
    queue.post_comment(human("never-claimed", 2))
    queue.claim_next("bridge-1")
    queue.complete("done")
    queue.complete("never-claimed")  # no status check
    stored = by_id(queue)
    for message_id in ("done", "never-claimed"):
        assert stored[message_id]["botParams"]["status"] == "complete"
        assert stored[message_id]["botParams"]["completedAt"] > 1_600_000_000_000
    assert stored["done"]["botParams"]["claimedBy"] == "bridge-1"
    assert queue.pending() == []
    response = raw.post("/api/queue/complete", json={"messageId": "unknown"})
    assert response.status_code == 404
    with pytest.raises(MessageGone) as gone:
        queue.complete("unknown")
    assert gone.value.message_id == "unknown"


# EQ score and comments -----------------------------------------------------------------------


def test_patch_adds_to_global_score_every_time(queue: SiteQueueClient, raw: httpx.Client) -> None:
    queue.post_comment(human("scored", 1))
    assert queue.patch_eq("scored", 40) == 40
    assert queue.patch_eq("scored", 40) == 80  # not idempotent, as deployed
    assert queue.patch_eq("scored", 0) == 80
    response = raw.patch("/api/comments/scored", json={"eqScore": 7})
    assert response.status_code == 200
    answer = response.json()
    assert answer["success"] is True
    assert answer["globalScore"] == 87
    assert answer["message"]["id"] == "scored"
    assert answer["message"]["eqScore"] == 7
    assert by_id(queue)["scored"]["eqScore"] == 7
    assert queue.stats()["globalScore"] == 87
    assert raw.patch("/api/comments/unknown", json={"eqScore": 7}).status_code == 404
    with pytest.raises(MessageGone):
        queue.patch_eq("unknown", 5)
    assert queue.stats()["globalScore"] == 87


def test_patch_reaches_ids_that_need_quoting(queue: SiteQueueClient) -> None:
    queue.post_comment(human("odd id/with?chars#", 1))
    assert queue.patch_eq("odd id/with?chars#", 3) == 3
    assert by_id(queue)["odd id/with?chars#"]["eqScore"] == 3


def test_comments_after_newest_first(queue: SiteQueueClient, raw: httpx.Client) -> None:
    for index, timestamp in enumerate([300, 100, 200, 400]):
        queue.post_comment(human(f"t{index}", timestamp))
    assert [m["timestamp"] for m in queue.comments_after(0)] == [400, 300, 200, 100]
    assert [m["timestamp"] for m in queue.comments_after(200)] == [400, 300]
    assert [m["timestamp"] for m in queue.comments_after(0, limit=2)] == [400, 300]
    answer = raw.get("/api/comments", params={"since": 250}).json()
    assert [m["timestamp"] for m in answer["messages"]] == [400, 300]
    assert answer["version"] == "1.0.1"
    assert answer["globalScore"] == 0


# Admin ---------------------------------------------------------------------------------------


def test_stats_and_purge_keep_global_score(queue: SiteQueueClient) -> None:
    for index in range(3):
        queue.post_comment(human(f"s{index}", index))
    queue.post_comment(human("plain", 9, entity=None))
    queue.claim_next("bridge-1")
    queue.complete("s2")
    queue.patch_eq("s0", 12)
    stats = queue.stats()
    assert {key: stats[key] for key in ("totalMessages", "pending", "processing", "complete")} == {
        "totalMessages": 4,
        "pending": 1,
        "processing": 1,
        "complete": 1,
    }
    assert stats["globalScore"] == 12
    queue.purge()
    assert queue.comments_after(0) == []
    assert queue.claim_next("bridge-1").message is None
    assert queue.stats()["totalMessages"] == 0
    assert queue.stats()["globalScore"] == 12


def test_a_restart_loses_nothing(queues: LocalQueues) -> None:
    with SiteQueueClient(queues.start()) as queue:
        queue.post_comment(human("kept", 1))
        queue.post_comment(human("claimed", 2, priority=9))
        queue.claim_next("bridge-1")
        queue.patch_eq("kept", 25)
        before = by_id(queue)
    queues.stop_all()
    with SiteQueueClient(queues.start()) as queue:
        assert by_id(queue) == before
        assert queue.stats()["globalScore"] == 25
        assert [message["id"] for message in queue.pending()] == ["kept"]
        assert queue.post_comment(human("kept", 3)).status == "duplicate"


# The HTTP edge -------------------------------------------------------------------------------


def test_token_is_enforced_on_every_route(queues: LocalQueues) -> None:
    url = queues.start(TOKEN)
    with httpx.Client(base_url=url, timeout=5) as raw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in (("GET", "/api/admin/stats"), ("POST", "/api/queue/claim-next")):
                response = raw.request(method, path, headers=headers, json={"workerId": "w"})
                assert response.status_code == 401
                assert response.json() == {"error": "Unauthorized"}
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
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        answer = raw.get("/api/admin/stats", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.headers["access-control-allow-origin"] == "*"
        assert raw.get("/api/admin/stats").headers["access-control-allow-origin"] == "*"


def test_unknown_routes_are_404_not_found(shared_raw: httpx.Client) -> None:
    for method, path in (
        ("GET", "/nowhere"),
        ("POST", "/api/queue/claim-next/extra"),
        ("DELETE", "/api/comments"),
        ("GET", "/api/queue/claim-next"),
    ):
        response = shared_raw.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": "Not found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/comments"),
        ("PATCH", "/api/comments/x"),
        ("POST", "/api/queue/claim"),
        ("POST", "/api/queue/claim-next"),
        ("POST", "/api/queue/complete"),
    ],
)
@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b'{"eqScore": NaN}', b'{"a": 1e999}', b'{"text": "\\ud800"}', b"\xff\xfe"],
)
def test_a_body_that_is_not_json_is_400(
    shared_raw: httpx.Client, method: str, path: str, body: bytes
) -> None:
    response = shared_raw.request(
        method, path, content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/comments", []),
        ("POST", "/api/comments", "text"),
        ("POST", "/api/comments", {"username": "no text"}),
        ("POST", "/api/comments", {"text": 5, "username": "Alice"}),
        ("POST", "/api/comments", {"text": "t", "username": "u", "timestamp": "soon"}),
        ("POST", "/api/comments", {"text": "t", "username": "u", "timestamp": 10**30}),
        ("POST", "/api/comments", {"text": "t", "username": "u", "message-type": "robot"}),
        ("POST", "/api/comments", {"text": "t", "username": "u", "botParams": {"priority": "hi"}}),
        ("POST", "/api/comments", {"text": "t", "username": "u", "botParams": {"priority": 2**70}}),
        ("POST", "/api/comments", {"text": "t", "username": "u", "eqScore": 10**400 // 10**90}),
        ("POST", "/api/comments", {"text": "t", "username": "u", "context": "not a list"}),
        ("PATCH", "/api/comments/x", {"eqScore": "high"}),
        ("PATCH", "/api/comments/x", {"eqScore": True}),
        ("PATCH", "/api/comments/x", {"eqScore": 10**20}),
        ("PATCH", "/api/comments/x", {}),
        ("POST", "/api/queue/claim-next", {"workerId": 7}),
        ("POST", "/api/queue/claim", {"messageId": ["x"], "workerId": "w"}),
        ("POST", "/api/queue/complete", {"messageId": 1}),
    ],
)
def test_a_body_of_the_wrong_shape_is_422(
    shared_raw: httpx.Client, method: str, path: str, body: Any
) -> None:
    shared_raw.post("/api/comments", json=human("x", 1))
    response = shared_raw.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize(
    "query",
    [{"after": "yesterday"}, {"after": str(10**30)}, {"limit": "-1"}, {"since": "1.5"}],
)
def test_bad_query_parameters_are_422(shared_raw: httpx.Client, query: dict[str, str]) -> None:
    assert shared_raw.get("/api/comments", params=query).status_code == 422
    assert shared_raw.get("/api/queue/pending", params={"limit": "many"}).status_code == 422
