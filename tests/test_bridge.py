"""The bridge against a real local queue and a real Redis: what it does with each message."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bridge import Bridge
from orchestrator.celery import make_app
from orchestrator.control.recovery import RecoveryPass, recover
from orchestrator.control.sweep import purge_returned, queued_attempt
from orchestrator.domain.job import JobKind, Outcome, score_job_id
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.state.ledger import Claim, ClaimNote, Reservation
from standins import SAMPLE_ENTITIES_DIR
from standins.http_server import ThreadedServer
from standins.local_queue import QueueStore, build_app
from workers.contract.job import JobState
from workers.contract.protocol import CONTROL_QUEUE, GENERATE_TASK, ChatRequest, GenerateJob
from workers.contract.server_record import ServerRecord
from workers.heartbeat import write_record

HOSTILE: dict[str, dict[str, Any]] = {
    "no-text": {"username": "ada", "timestamp": 1},
    "text-not-string": {"text": 42, "username": "ada", "timestamp": 2},
    "context-not-list": {"text": "hi", "username": "ada", "timestamp": 3, "context": "ada: hi"},
    "context-odd-lines": {
        "text": "hi",
        "username": "ada",
        "timestamp": 3,
        "context": ["bo: hello", 7, None, {}],
    },
    "priority-as-word": {"text": "hi", "username": "ada", "timestamp": 4, "priority": "high"},
    "timestamp-string": {"text": "hi", "username": "ada", "timestamp": "yesterday"},
    "no-username": {"text": "hi", "timestamp": 5},
    "huge-text": {"text": "\U0001f600\u202e" * 50_000, "username": "ada", "timestamp": 6},
    "unknown-entity": {"text": "hi", "username": "ada", "timestamp": 7, "entity": "nobody"},
    "no-server-has-model": {
        "text": "hi",
        "username": "ada",
        "timestamp": 8,
        "entity": "the-critic",
    },
}


def hostile_row(message_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    fields = dict(fields)
    entity = fields.pop("entity", "the-eternal")
    priority = fields.pop("priority", 5)
    return {
        "id": message_id,
        "message-type": "human",
        **fields,
        "botParams": {"entity": entity, "priority": priority, "status": "pending"},
    }


@pytest.fixture
def queue_db(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db_path = tmp_path / "queue.sqlite3"
    store = QueueStore(db_path)
    with ThreadedServer(build_app(store)) as server:
        yield server.url, db_path
    store.close()


def bridge_of(redis_url: str, queue_url: str, *, eq_enabled: bool) -> Iterator[Bridge]:
    settings = Settings(
        redis_url=redis_url,
        queue_url=queue_url,
        entities_dir=SAMPLE_ENTITIES_DIR,
        bridge_id="bridge-test",
        eq_enabled=eq_enabled,
    )
    services = Services.build(settings)
    yield Bridge(services, make_app(settings))
    services.close()


@pytest.fixture
def bridge(redis_url: str, queue_db: tuple[str, Path]) -> Iterator[Bridge]:
    """A bridge that does not score messages: one job per message, to follow its placing."""
    yield from bridge_of(redis_url, queue_db[0], eq_enabled=False)


@pytest.fixture
def scoring_bridge(redis_url: str, queue_db: tuple[str, Path]) -> Iterator[Bridge]:
    yield from bridge_of(redis_url, queue_db[0], eq_enabled=True)


def insert_rows(db_path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows the queue's API would refuse: the deployed queue is not so careful."""
    with sqlite3.connect(db_path) as db:
        for order, row in enumerate(rows):
            db.execute(
                "INSERT INTO messages (id, timestamp, status, priority, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (row["id"], order, "pending", 5, json.dumps(row)),
            )


def register_server(bridge: Bridge, server_id: str, model: str) -> None:
    """A server record as a heartbeat writes it, with one slot."""
    record = ServerRecord(id=server_id, capacity=1, models=[model], last_beat=time.time())
    write_record(bridge.services.redis, bridge.services.keys, record, ttl_s=60)


def statuses(db_path: Path) -> dict[str, str | None]:
    with sqlite3.connect(db_path) as db:
        return {
            message_id: json.loads(body).get("botParams", {}).get("status")
            for message_id, body in db.execute("SELECT id, body FROM messages")
        }


def test_hostile_messages_are_completed_with_a_recorded_reason(
    scoring_bridge: Bridge, queue_db: tuple[str, Path]
) -> None:
    bridge = scoring_bridge
    _, db_path = queue_db
    insert_rows(
        db_path, [hostile_row(message_id, fields) for message_id, fields in HOSTILE.items()]
    )
    fleet = bridge.services.fleet.read()
    claimed = 0
    while bridge.claim_one(fleet):
        claimed += 1
    assert claimed == len(HOSTILE)
    assert set(statuses(db_path).values()) == {"complete"}
    jobs = {job.id: job for job in bridge.services.ledger.get_many(list(HOSTILE))}
    assert set(jobs) == set(HOSTILE)
    for message_id, job in jobs.items():
        assert job.state.finished, message_id
        assert job.reason, message_id
    assert "text" in (jobs["no-text"].reason or "")
    assert "context" in (jobs["context-not-list"].reason or "")
    assert "priority" in (jobs["priority-as-word"].reason or "")
    assert "unknown entity 'nobody'" in (jobs["unknown-entity"].reason or "")
    assert jobs["no-server-has-model"].state is JobState.DEAD
    assert "qwen2.5:7b" in (jobs["no-server-has-model"].reason or "")
    # Too large to carry: refused whole, its entry keeping an excerpt and a hash.
    huge = jobs["huge-text"]
    assert huge.state is JobState.REJECTED and "over the 524288-byte limit" in (huge.reason or "")
    key = bridge.services.keys.job("huge-text")
    assert (bridge.services.redis.memory_usage(key) or 0) < 8192  # never kept at full size
    # Odd context lines are left out, not the message: it is placed (here, on no server).
    assert jobs["context-odd-lines"].state is JobState.DEAD
    assert "no online server has model" in (jobs["context-odd-lines"].reason or "")
    # Each message's score is a job of its own: none is left running, and none vanishes.
    scores = {
        job.message_id: job
        for job in bridge.services.ledger.get_many(score_job_id(m) for m in HOSTILE)
    }
    assert set(scores) == set(HOSTILE) - {"huge-text"}
    for message_id in ("no-text", "text-not-string", "context-not-list", "timestamp-string"):
        assert scores[message_id].outcome is Outcome.REJECTED, message_id  # nothing to score
    assert "huge-text" not in scores  # refused before any job, its score's included
    for message_id in ("unknown-entity", "no-server-has-model", "context-odd-lines"):
        lost = scores[message_id]  # its text could be scored, but no server has the scorer's
        assert (lost.state, lost.outcome) == (JobState.DEAD, Outcome.SCORE_LOST), message_id
        assert "llama3.2:3b (entity eq-score)" in (lost.reason or "")
    dead = bridge.services.ledger.dead_job_ids()
    assert sorted(dead) == sorted(
        ["no-server-has-model", "context-odd-lines"]
        + [score_job_id(m) for m, job in scores.items() if job.state is JobState.DEAD]
    )


def test_a_message_without_an_id_is_counted_and_skipped(bridge: Bridge) -> None:
    bridge.take({"text": "hi", "username": "ada"}, [])
    bridge.take({"id": 12, "text": "hi"}, [])
    assert bridge.services.ledger.counters().get("refused") == 2
    count, refused = bridge.services.ledger.refused()
    assert count == 2 and {entry["reason"] for entry in refused} == {"the message has no id"}


def test_a_message_claimed_twice_is_left_to_its_first_job(bridge: Bridge) -> None:
    raw = hostile_row("twice", {"text": "hi", "username": "ada", "timestamp": 1})
    assert (
        bridge.services.ledger.record_claim("twice", raw, "another-bridge", 60, scored=False)
        is Claim.WRITTEN
    )
    bridge.take(raw, [])
    job = bridge.services.ledger.get("twice")
    assert job is not None
    assert (job.state, job.bridge_id) == (JobState.CLAIMED, "another-bridge")


def test_a_claim_written_before_redis_answered_is_taken_up(bridge: Bridge) -> None:
    """Redis carried out the claim's write, then restarted before its answer came: the client
    sent the write again and found it done. The jobs are this bridge's: it places them."""
    services = bridge.services
    register_server(bridge, "mac-1", "llama3.2:3b")
    raw = hostile_row("written", {"text": "hi", "username": "ada", "timestamp": 1})
    assert services.ledger.record_claim("written", raw, "bridge-test", 60, scored=False) is (
        Claim.WRITTEN
    )
    bridge.take(raw, services.fleet.read())
    job = services.ledger.get("written")
    assert job is not None
    assert (job.state, job.server_id) == (JobState.DISPATCHED, "mac-1")


def test_dispatch_reserves_a_slot_and_records_the_server(bridge: Bridge) -> None:
    """A server record as a heartbeat writes it; the generate task lands on that server's queue."""
    services = bridge.services
    register_server(bridge, "mac-1", "llama3.2:3b")
    first = hostile_row("first", {"text": "hi", "username": "ada", "timestamp": 1})
    second = hostile_row("second", {"text": "again", "username": "ada", "timestamp": 2})
    bridge.take(first, services.fleet.read())
    bridge.take(second, services.fleet.read())
    assert services.fleet.inflight_jobs("mac-1") == {"first"}
    job = services.ledger.get("first")
    assert job is not None
    assert (job.state, job.server_id, job.attempt) == (JobState.DISPATCHED, "mac-1", 1)
    waiting = services.ledger.get("second")
    assert waiting is not None
    assert waiting.state is JobState.WAITING
    assert [ready.job_id for ready in bridge.waiting] == ["second"]
    # One generate task on the server's queue, nothing for control yet; its id names the job
    # and the attempt, so Flower's page of it can be linked to.
    (queued,) = services.fleet.queued_tasks("mac-1")
    assert json.loads(queued)["headers"]["id"] == "first@1"
    assert services.fleet.queued_tasks(CONTROL_QUEUE) == []


def test_a_returning_server_s_queue_is_purged_of_attempts_that_moved(bridge: Bridge) -> None:
    services = bridge.services
    for job_id, attempt, server in (("moved", 2, "mac-2"), ("current", 1, "mac-9")):
        raw = hostile_row(job_id, {"text": "hi", "username": "ada", "timestamp": 1})
        assert (
            services.ledger.record_claim(job_id, raw, "bridge-test", 60, scored=False)
            is Claim.WRITTEN
        )
        taken = services.ledger.reserve(
            job_id,
            server,
            4,
            attempt=attempt,
            entity="the-eternal",
            model="llama3.2:3b",
            priority=5,
            bridge_id="bridge-test",
        )
        assert taken is Reservation.TAKEN
        # Both were sent to mac-9 as attempt 1; "moved" has since gone on to mac-2.
        job = GenerateJob(
            job_id=job_id,
            attempt=1,
            server_id="mac-9",
            request=ChatRequest(model="llama3.2:3b", messages=[]),
            dispatched_at=time.time(),
        )
        payload = [job.model_dump(mode="json")]
        bridge.placement.celery.send_task(GENERATE_TASK, args=payload, queue="mac-9")
    assert len(services.fleet.queued_tasks("mac-9")) == 2
    services.fleet.mark_lost("mac-9")
    register_server(bridge, "mac-9", "llama3.2:3b")
    fleet = {server.id: server for server in services.fleet.read()}
    assert purge_returned(services, fleet) == 1
    remaining = [queued_attempt(raw) for raw in services.fleet.queued_tasks("mac-9")]
    assert remaining == [("current", 1)]
    assert services.fleet.lost_servers() == []


def run_until_still(bridge: Bridge, steps: int = 50) -> None:
    for _ in range(steps):
        if not bridge.step():
            return
    raise AssertionError("the bridge kept moving")


def queue_up(bridge: Bridge, db_path: Path, order: list[tuple[str, str]]) -> None:
    """A llama server and a qwen server of one slot each, and messages in this order."""
    register_server(bridge, "llama-box", "llama3.2:3b")
    register_server(bridge, "qwen-box", "qwen2.5:7b")
    rows = [
        hostile_row(
            message_id, {"text": "hi", "username": "ada", "timestamp": at, "entity": entity}
        )
        for at, (message_id, entity) in enumerate(order, start=1)
    ]
    insert_rows(db_path, rows)
    run_until_still(bridge)


def test_a_server_for_another_model_does_not_idle_behind_waiting_jobs(
    bridge: Bridge, queue_db: tuple[str, Path]
) -> None:
    """A llama job waits for the llama server; the free qwen slot still gets the qwen message
    behind it."""
    _, db_path = queue_db
    order = [("l1", "the-eternal"), ("l2", "the-eternal"), ("q1", "the-critic"),
             ("l3", "the-eternal")]  # fmt: skip
    queue_up(bridge, db_path, order)
    jobs = {job.id: job for job in bridge.services.ledger.get_many(["l1", "q1"])}
    assert (jobs["l1"].state, jobs["l1"].server_id) == (JobState.DISPATCHED, "llama-box")
    assert (jobs["q1"].state, jobs["q1"].server_id) == (JobState.DISPATCHED, "qwen-box")
    assert [ready.job_id for ready in bridge.waiting] == ["l2"]
    # No slot is free: the rest stay on the site, in its order.
    assert statuses(db_path)["l3"] == "pending"


def test_no_more_jobs_wait_in_the_bridge_than_the_fleet_has_slots(
    bridge: Bridge, queue_db: tuple[str, Path]
) -> None:
    """The qwen slot stays free with only llama messages about: the bridge looks a little
    ahead for one that could use it, and no further."""
    _, db_path = queue_db
    queue_up(bridge, db_path, [(f"l{index}", "the-eternal") for index in range(1, 6)])
    assert sorted(ready.job_id for ready in bridge.waiting) == ["l2", "l3"]
    assert [statuses(db_path)[f"l{index}"] for index in (4, 5)] == ["pending", "pending"]


def test_recovery_asks_the_site_nothing_in_steady_state_and_little_for_a_lost_claim(
    bridge: Bridge,
) -> None:
    services = bridge.services
    register_server(bridge, "mac-1", "llama3.2:3b")
    hour_ago_ms = int(time.time() * 1000) - 3_600_000
    for n in range(200):
        services.queue.post_comment(
            {"id": f"old-{n}", "timestamp": hour_ago_ms + n, "text": "x" * 500, "username": "ada",
             "message-type": "human", "botParams": {"entity": "the-eternal"}}
        )  # fmt: skip
    fleet = services.fleet.read()
    while bridge.claim_one(fleet):
        pass
    assert services.ledger.claim_notes() == []  # each claim's note went with its ledger write
    assert recover(services) == RecoveryPass()  # nothing in doubt: the site is not asked

    # A claim the site made but the ledger never heard of: its note outlives it.
    services.queue.post_comment(
        {"id": "lost", "text": "hello", "username": "ada", "message-type": "human",
         "botParams": {"entity": "the-eternal"}}
    )  # fmt: skip
    now_ms = int(time.time() * 1000)
    # The bridge told the others when it saw the site empty: one started now counts from there.
    seen_empty = services.ledger.site_seen_empty_ms()
    assert seen_empty is not None and now_ms - 60_000 < seen_empty <= now_ms
    restarted = Bridge(services, make_app(services.settings))
    assert restarted._nothing_pending_ms == seen_empty
    services.ledger.note_claim(
        ClaimNote("bridge-test:run:1", "bridge-test", now_ms - 60_000, seen_empty)
    )
    assert services.queue.claim_next("bridge-test").message is not None
    history = services.queue.bytes_received
    services.queue.comments_after(0)
    history = services.queue.bytes_received - history

    found = recover(services)
    assert (found.recovered, found.notes) == (1, 1)
    assert 0 < found.site_bytes < history / 20  # only what came after the queue was last empty
    (job,) = services.ledger.get_many(["lost"])
    assert job.state is JobState.RETRYING
    assert services.ledger.claim_notes() == []
    assert recover(services) == RecoveryPass()


def test_an_id_that_names_another_message_s_score_is_completed_not_written(
    scoring_bridge: Bridge, queue_db: tuple[str, Path]
) -> None:
    bridge = scoring_bridge
    _, db_path = queue_db
    rows = [{"text": "hi", "username": "ada", "timestamp": n} for n in (1, 2)]
    insert_rows(db_path, [hostile_row("abc", rows[0]), hostile_row("abc#eq", rows[1])])
    fleet = bridge.services.fleet.read()
    while bridge.claim_one(fleet):
        pass
    assert statuses(db_path) == {"abc": "complete", "abc#eq": "complete"}
    (score,) = bridge.services.ledger.get_many([score_job_id("abc")])
    assert score.kind is JobKind.SCORE  # still the score of `abc`, untouched by the other
    assert bridge.services.ledger.counters().get("refused") == 1
    assert bridge.services.ledger.claim_notes() == []


def test_jobs_cut_short_by_a_redis_error_are_taken_back_once(bridge: Bridge) -> None:
    """A claim written to the ledger whose placing Redis cut short: the bridge takes it back
    when Redis answers, and a job already waiting here is not taken twice."""
    record = ServerRecord(
        id="mac-1", capacity=1, models=["llama3.2:3b"], ollama_healthy=False, last_beat=time.time()
    )
    write_record(bridge.services.redis, bridge.services.keys, record, ttl_s=60)
    ledger = bridge.services.ledger
    for message_id in ("waiting-here", "cut-short"):
        raw = hostile_row(message_id, {"text": "hi", "username": "ada", "timestamp": 1})
        assert ledger.record_claim(message_id, raw, "bridge-test", 60, scored=False) is (
            Claim.WRITTEN
        )
    bridge.resume(ledger.get_many(["waiting-here"])[0], bridge.services.fleet.read())
    assert [ready.job_id for ready in bridge.waiting] == ["waiting-here"]
    bridge.resume_from_ledger()
    assert sorted(ready.job_id for ready in bridge.waiting) == ["cut-short", "waiting-here"]
    bridge.resume_from_ledger()
    assert len(bridge.waiting) == 2
