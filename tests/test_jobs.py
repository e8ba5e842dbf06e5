"""`ollama-cloud jobs` against a real Redis and a real local queue: what it lists, and what
`retry` and `drop` leave in the ledger, the slots and the site."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli import app
from orchestrator.domain.job import Attempt, Job, Outcome, score_job_id
from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.ops.jobs import DROP_OUTCOME, DROP_REASON
from orchestrator.services import connect_redis
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.fleet import Fleet
from orchestrator.state.ledger import Claim, Ledger, Reservation
from standins.embedded_redis import free_port
from standins.http_server import ThreadedServer
from standins.local_queue import QueueStore, build_app
from standins.waiting import wait_for
from workers.contract.attempts import AttemptLedger
from workers.contract.job import JobState
from workers.contract.keys import Keys
from workers.contract.protocol import ChatOutcome, ErrorKind, GenerateResult

BRIDGE = "bridge-test"
ENTITY = "the-eternal"
MODEL = "llama3.2:3b"


@pytest.fixture
def ledger(redis_url: str) -> Iterator[Ledger]:
    client = connect_redis(redis_url)
    yield Ledger(client, Keys())
    client.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The local site queue over HTTP, and its SQLite file."""
    db_path = tmp_path / "queue.sqlite3"
    store = QueueStore(db_path)
    with ThreadedServer(build_app(store)) as server:
        yield server.url, db_path
    store.close()


def run_jobs(redis_url: str, *args: str, queue_url: str | None = None) -> Result:
    env = {"OLLAMA_CLOUD_REDIS_URL": redis_url, "COLUMNS": "250"}
    if queue_url:
        env["OLLAMA_CLOUD_QUEUE_URL"] = queue_url
    return CliRunner().invoke(app, ["jobs", *args], env=env)


def listed(redis_url: str, *args: str) -> dict[str, Any]:
    result = run_jobs(redis_url, *args, "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def raw_message(job_id: str, text: str = "hello") -> dict[str, Any]:
    return {
        "id": job_id,
        "message-type": "human",
        "text": text,
        "username": "ada",
        "timestamp": 1,
        "botParams": {"entity": ENTITY, "priority": 5, "status": "processing"},
    }


def claim(ledger: Ledger, job_id: str, deadline_s: float = 60, text: str = "hello") -> None:
    assert (
        ledger.record_claim(job_id, raw_message(job_id, text), BRIDGE, deadline_s, scored=False)
        is Claim.WRITTEN
    )
    assert ledger.mark_waiting(job_id, BRIDGE, entity=ENTITY, model=MODEL, priority=5)


def dispatch(ledger: Ledger, job_id: str, server_id: str, attempt: int) -> None:
    """Take a slot on the server as the bridge does (the job must be this bridge's, waiting)."""
    taken = ledger.reserve(
        job_id, server_id, 4, attempt=attempt, entity=ENTITY, model=MODEL, priority=5,
        bridge_id=BRIDGE,
    )  # fmt: skip
    assert taken is Reservation.TAKEN


def fail(ledger: Ledger, job_id: str, server_id: str, kind: ErrorKind, error: str) -> None:
    """The dispatched attempt failed: the job is queued for any bridge, as delivery does."""
    job = current(ledger, job_id)
    failed = Attempt(attempt=job.attempt, server_id=server_id, error_kind=kind, error=error)
    at = time.time()
    assert ledger.schedule_retry(job, (JobState.DISPATCHED,), at=at, failed=failed)
    taken = ledger.take_retries(BRIDGE)  # back with the bridge, ready for its next attempt
    assert [entry.id for entry in taken] == [job_id]


FAILURES = [
    ("mac-1", ErrorKind.TIMEOUT, "no answer in 30s"),
    ("mac-2", ErrorKind.SERVER_ERROR, "HTTP 500"),
    ("mac-3", ErrorKind.UNAVAILABLE, "connection refused"),
]


def make_dead(ledger: Ledger, job_id: str, *, apology: bool = False, text: str = "hi") -> None:
    """A job whose every attempt failed, ended as delivery's `give_up` ends one."""
    claim(ledger, job_id, text=text)
    for attempt, (server_id, kind, error) in enumerate(FAILURES, start=1):
        dispatch(ledger, job_id, server_id, attempt)
        fail(ledger, job_id, server_id, kind, error)
    job = current(ledger, job_id)
    reason = f"3 attempts failed: {job.history()}"
    assert ledger.begin_ending(job, reason, (JobState.WAITING,))
    if apology:
        assert ledger.note_apology(job_id)
    assert ledger.finish(job_id, JobState.DEAD, reason=reason, outcome="dead")


def current(ledger: Ledger, job_id: str) -> Job:
    job = ledger.get(job_id)
    assert job is not None
    return job


def site_status(db_path: Path, message_id: str) -> str:
    with sqlite3.connect(db_path) as db:
        (body,) = db.execute("SELECT body FROM messages WHERE id = ?", (message_id,)).fetchone()
    status: str = json.loads(body)["botParams"]["status"]
    return status


def claimed_on_site(queue_url: str, message_id: str) -> dict[str, Any]:
    """A message posted to the site and claimed by the bridge: `processing` there."""
    with SiteQueueClient(queue_url) as queue:
        queue.post_comment(
            NewMessage(
                id=message_id, text="hello", username="ada", botParams=BotParams(entity=ENTITY)
            )
        )
        return queue.claim(message_id, BRIDGE)


# Listing -------------------------------------------------------------------------------------


def test_a_dead_letter_is_kept_for_its_retention_then_forgotten(ledger: Ledger) -> None:
    make_dead(ledger, "old")
    keys = ledger.keys
    week_ms = ledger.dead_retention_s * 1000
    assert week_ms - 60_000 < ledger.redis.pttl(keys.job("old")) <= week_ms  # Redis expires it
    assert ledger.expire_letters(time.time()) == 0
    assert ledger.dead_job_ids() == ["old"]
    later = time.time() + ledger.dead_retention_s + 1
    assert ledger.expire_letters(later) == 1  # the sweep forgets it in the index too
    assert ledger.dead_job_ids() == [] and ledger.letters().dead.count == 0


def test_list_shows_active_jobs_and_dead_letters_with_every_attempt(
    ledger: Ledger, redis_url: str
) -> None:
    claim(ledger, "on-mac", deadline_s=60)
    dispatch(ledger, "on-mac", "mac-1", 1)
    claim(ledger, "failed-once", deadline_s=120)
    dispatch(ledger, "failed-once", "mac-2", 1)
    job = current(ledger, "failed-once")
    failed = Attempt(attempt=1, server_id="mac-2", error_kind="timeout", error="no answer in 30s")
    assert ledger.schedule_retry(job, (JobState.DISPATCHED,), at=time.time() + 30, failed=failed)
    make_dead(ledger, "gave-up")

    report = listed(redis_url)
    assert set(report) == {"active", "dead", "letters"}
    letters = report["letters"]
    assert letters["dead"]["count"] == 1
    assert letters["dead"]["oldest_at"] == pytest.approx(time.time(), abs=30)
    assert letters["broker"]["count"] == letters["refused"]["count"] == 0
    active = {row["id"]: row for row in report["active"]}
    assert list(active) == ["on-mac", "failed-once"]  # soonest deadline first
    on_mac = active["on-mac"]
    assert (on_mac["state"], on_mac["attempt"], on_mac["server_id"]) == ("dispatched", 1, "mac-1")
    assert on_mac["entity"] == ENTITY
    assert on_mac["last_error"] is None
    assert 0 <= on_mac["age_s"] < 30
    assert 30 < on_mac["deadline_in_s"] <= 60
    assert active["failed-once"]["state"] == "retrying"
    assert active["failed-once"]["last_error"] == "timeout: no answer in 30s"

    [dead] = report["dead"]
    assert dead["id"] == "gave-up"
    assert dead["entity"] == ENTITY
    assert dead["reason"].startswith("3 attempts failed: #1 mac-1: timeout")
    assert dead["finished_at"] == pytest.approx(time.time(), abs=30)
    assert dead["apology_posted"] is False
    attempts = [
        (entry["server_id"], entry["error_kind"], entry["error"]) for entry in dead["attempts"]
    ]
    assert attempts == FAILURES

    listed_again = listed(redis_url, "list")  # `jobs list` is `jobs`
    assert [row["id"] for row in listed_again["active"]] == ["on-mac", "failed-once"]
    assert listed_again["dead"] == report["dead"]
    limited = listed(redis_url, "list", "--limit", "1")
    assert [row["id"] for row in limited["active"]] == ["on-mac"]
    assert [row["id"] for row in limited["dead"]] == ["gave-up"]

    result = run_jobs(redis_url)
    assert result.exit_code == 0, result.output
    on_mac_line = next(line for line in result.stdout.splitlines() if "on-mac" in line)
    assert "dispatched" in on_mac_line and "mac-1" in on_mac_line
    assert "#1 mac-1: timeout: no answer in 30s" in result.stdout
    assert "#3 mac-3: unavailable: connection refused" in result.stdout
    assert "2 of 2 active jobs" in result.stdout and "1 of 1 dead letters" in result.stdout


def test_show_prints_one_job_whole_with_its_text_shortened(ledger: Ledger, redis_url: str) -> None:
    text = "a long question " * 100
    make_dead(ledger, "wordy", text=text)

    result = run_jobs(redis_url, "show", "wordy")
    assert result.exit_code == 0, result.output
    assert "job wordy" in result.stdout
    assert "a long question" in result.stdout and "…" in result.stdout
    assert text.strip() not in " ".join(result.stdout.split())
    lines = result.stdout.splitlines()
    for server_id, kind, error in FAILURES:  # one row per attempt: its server and its error
        assert any(f" {server_id} " in line and f"{kind}: {error}" in line for line in lines)

    shown = run_jobs(redis_url, "show", "wordy", "--json")
    assert shown.exit_code == 0, shown.output
    whole = json.loads(shown.stdout)
    assert whole["message"]["text"] == text
    assert whole["state"] == "dead"
    assert [entry["server_id"] for entry in whole["attempts"]] == ["mac-1", "mac-2", "mac-3"]

    missing = run_jobs(redis_url, "show", "nobody")
    assert missing.exit_code == 1
    assert "no job 'nobody'" in missing.stderr


# Retry ---------------------------------------------------------------------------------------


def test_retry_places_a_dead_letter_again_for_any_bridge(ledger: Ledger, redis_url: str) -> None:
    make_dead(ledger, "again")
    keys = ledger.keys
    events = ledger.redis.pubsub()
    events.subscribe(keys.slot_events)
    subscribed = events.get_message(timeout=5)
    assert subscribed is not None and subscribed["type"] == "subscribe"

    before = time.time()
    result = CliRunner().invoke(
        app,
        ["jobs", "retry", "again"],
        env={"OLLAMA_CLOUD_REDIS_URL": redis_url, "OLLAMA_CLOUD_JOB_DEADLINE_S": "600"},
    )
    after = time.time()
    assert result.exit_code == 0, result.output
    assert "queued again" in result.stdout

    job = current(ledger, "again")
    assert job.state is JobState.RETRYING
    assert job.bridge_id == ""
    assert job.reason == ""
    assert len(job.attempts) == 3  # the history is kept...
    assert job.attempts_from == 3 and job.failures == []  # ...and forgiven
    assert before + 600 <= job.deadline <= after + 600
    assert ledger.redis.zscore(keys.active_jobs, "again") == pytest.approx(job.deadline)
    assert ledger.redis.ttl(keys.job("again")) == -1  # active again: it does not expire
    assert ledger.redis.zrange(keys.dead_letters, 0, -1) == []
    retry_at = ledger.redis.zscore(keys.retry_jobs, "again")
    assert retry_at is not None and retry_at <= after
    wake_up = events.get_message(timeout=5)
    assert wake_up is not None and str(wake_up["data"]).startswith("retry:")
    events.close()

    # Any bridge now takes it for its fourth attempt, on any server.
    [taken] = ledger.take_retries("bridge-other")
    assert (taken.id, taken.state, taken.bridge_id) == ("again", JobState.WAITING, "bridge-other")
    assert taken.attempt == 3 and taken.servers_tried == []
    assert [row["id"] for row in listed(redis_url)["active"]] == ["again"]


def test_retry_refuses_unknown_active_and_apologised_jobs(ledger: Ledger, redis_url: str) -> None:
    keys = ledger.keys
    unknown = run_jobs(redis_url, "retry", "nobody")
    assert unknown.exit_code == 1
    assert "no job 'nobody'" in unknown.stderr

    claim(ledger, "busy")
    busy = run_jobs(redis_url, "retry", "busy")
    assert busy.exit_code == 1
    assert "busy" in busy.stderr and "not dead" in busy.stderr
    assert current(ledger, "busy").state is JobState.WAITING
    assert ledger.redis.zcard(keys.retry_jobs) == 0

    make_dead(ledger, "apologised", apology=True)
    apologised = run_jobs(redis_url, "retry", "apologised")
    assert apologised.exit_code == 1
    assert "apology" in apologised.stderr
    job = current(ledger, "apologised")
    assert job.state is JobState.DEAD and job.attempts_from == 0
    assert ledger.redis.zrange(keys.dead_letters, 0, -1) == ["apologised"]
    assert ledger.redis.zscore(keys.active_jobs, "apologised") is None
    assert ledger.redis.zcard(keys.retry_jobs) == 0

    # A retried job is no longer dead: a second retry is refused.
    make_dead(ledger, "twice")
    assert run_jobs(redis_url, "retry", "twice").exit_code == 0
    second = run_jobs(redis_url, "retry", "twice")
    assert second.exit_code == 1
    assert "retrying, not dead" in second.stderr


# Drop ----------------------------------------------------------------------------------------


def test_drop_frees_a_dispatched_jobs_slot_and_completes_it_on_the_site(
    ledger: Ledger, redis_url: str, site: tuple[str, Path]
) -> None:
    queue_url, db_path = site
    message = claimed_on_site(queue_url, "stuck")
    assert ledger.record_claim("stuck", message, BRIDGE, 60, scored=False) is Claim.WRITTEN
    assert ledger.mark_waiting("stuck", BRIDGE, entity=ENTITY, model=MODEL, priority=5)
    dispatch(ledger, "stuck", "mac-1", 1)
    fleet = Fleet(ledger.redis, ledger.keys)
    assert fleet.inflight_jobs("mac-1") == {"stuck"}
    assert site_status(db_path, "stuck") == "processing"

    result = run_jobs(redis_url, "drop", "stuck", queue_url=queue_url)
    assert result.exit_code == 0, result.output
    assert "dropped (was dispatched): completed on the site" in result.stdout

    assert fleet.inflight_jobs("mac-1") == set()
    job = current(ledger, "stuck")
    assert job.state is JobState.REJECTED
    assert (job.reason, job.outcome) == (DROP_REASON, DROP_OUTCOME)
    keys = ledger.keys
    assert ledger.redis.zscore(keys.active_jobs, "stuck") is None
    assert 0 < ledger.redis.ttl(keys.job("stuck")) <= 86400  # finished: it expires
    assert ledger.finished_count() == 1
    assert ledger.counters() == {DROP_OUTCOME: 1}
    assert site_status(db_path, "stuck") == "complete"
    # The server's late result is stale: no reply is posted for it.
    assert not ledger.begin_delivery("stuck", 1, "mac-1", "{}").current


def test_drop_takes_a_job_out_of_the_retry_set(
    ledger: Ledger, redis_url: str, site: tuple[str, Path]
) -> None:
    claim(ledger, "bouncing")
    dispatch(ledger, "bouncing", "mac-1", 1)
    job = current(ledger, "bouncing")
    failed = Attempt(attempt=1, server_id="mac-1", error_kind="busy", error="queue full")
    assert ledger.schedule_retry(job, (JobState.DISPATCHED,), at=time.time() + 60, failed=failed)
    keys = ledger.keys
    assert ledger.redis.zscore(keys.retry_jobs, "bouncing") is not None

    # The site queue never had this message: it is gone, which is no failure to drop it.
    result = run_jobs(redis_url, "drop", "bouncing", queue_url=site[0])
    assert result.exit_code == 0, result.output
    assert "already gone from the site" in result.stdout
    assert ledger.redis.zscore(keys.retry_jobs, "bouncing") is None
    assert ledger.redis.zscore(keys.active_jobs, "bouncing") is None
    assert current(ledger, "bouncing").state is JobState.REJECTED
    assert ledger.take_retries(BRIDGE) == []


def test_drop_removes_a_dead_letter(ledger: Ledger, redis_url: str, site: tuple[str, Path]) -> None:
    make_dead(ledger, "hopeless")
    make_dead(ledger, "kept")
    result = run_jobs(redis_url, "drop", "hopeless", queue_url=site[0])
    assert result.exit_code == 0, result.output
    assert "dropped (was dead)" in result.stdout
    job = current(ledger, "hopeless")
    assert job.state is JobState.REJECTED and job.reason == DROP_REASON
    assert len(job.attempts) == 3
    assert ledger.redis.zrange(ledger.keys.dead_letters, 0, -1) == ["kept"]
    assert [row["id"] for row in listed(redis_url)["dead"]] == ["kept"]


def test_drop_stands_when_the_site_queue_is_away(ledger: Ledger, redis_url: str) -> None:
    claim(ledger, "unlucky")
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = run_jobs(redis_url, "drop", "unlucky", queue_url=nowhere)
    assert result.exit_code == 0, result.output
    assert "the site queue did not complete it" in result.stderr
    assert current(ledger, "unlucky").state is JobState.REJECTED
    assert ledger.redis.zscore(ledger.keys.active_jobs, "unlucky") is None


def test_drop_refuses_unknown_and_ended_jobs(
    ledger: Ledger, redis_url: str, site: tuple[str, Path]
) -> None:
    unknown = run_jobs(redis_url, "drop", "nobody", queue_url=site[0])
    assert unknown.exit_code == 1
    assert "no job 'nobody'" in unknown.stderr

    claim(ledger, "answered")
    assert ledger.finish("answered", JobState.DONE, outcome="answered")
    claim(ledger, "refused")
    assert ledger.finish("refused", JobState.REJECTED, reason="bad", outcome="rejected")
    for job_id, state in (("answered", JobState.DONE), ("refused", JobState.REJECTED)):
        result = run_jobs(redis_url, "drop", job_id, queue_url=site[0])
        assert result.exit_code == 1
        assert f"already ended ({state.value})" in result.stderr
        assert current(ledger, job_id).state is state
    assert ledger.counters() == {"answered": 1, "rejected": 1}


# As operators run it -------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_command_runs_as_a_program(ledger: Ledger, redis_url: str) -> None:
    make_dead(ledger, "gave-up")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OLLAMA_CLOUD_")}
    env["OLLAMA_CLOUD_REDIS_URL"] = redis_url

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", "jobs", *args],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip

    listing = run("--json")
    assert listing.returncode == 0, listing.stderr
    assert [row["id"] for row in json.loads(listing.stdout)["dead"]] == ["gave-up"]
    refused = run("retry", "nobody")
    assert refused.returncode == 1
    assert "no job 'nobody'" in refused.stderr


def test_the_sweeps_view_leaves_out_an_unreadable_job_and_reads_the_rest(ledger: Ledger) -> None:
    claim(ledger, "fine")
    claim(ledger, "odd")
    ledger.redis.hset(ledger.keys.job("odd"), "state", "no-such-state")
    claim(ledger, "gone")
    ledger.redis.delete(ledger.keys.job("gone"))
    rows = dict(ledger.active_rows())
    assert set(rows) == {"fine", "gone"}
    assert rows["gone"] is None
    fine = rows["fine"]
    assert fine is not None
    assert (fine.state, fine.bridge_id, fine.attempt) == (JobState.WAITING, BRIDGE, 0)


def test_a_result_delivered_before_its_worker_kept_it_is_kept_by_the_delivery(
    ledger: Ledger,
) -> None:
    """A worker sends its result first and keeps it after: should delivery begin in between,
    delivery keeps it, so a control worker lost midway loses no reply."""
    claim(ledger, "raced")
    dispatch(ledger, "raced", "mac-1", 1)
    now = time.time()
    result = GenerateResult(
        job_id="raced", attempt=1, server_id="mac-1",
        outcome=ChatOutcome(ok=True, text="the reply"), started_at=now, finished_at=now,
    )  # fmt: skip
    start = ledger.begin_delivery("raced", 1, "mac-1", result.model_dump_json())
    assert start.current
    assert not AttemptLedger(ledger.redis, ledger.keys).keep_result(result)  # too late
    kept = current(ledger, "raced")
    assert kept.state is JobState.DELIVERING
    assert kept.result is not None
    assert GenerateResult.model_validate_json(kept.result) == result


def lose_score(ledger: Ledger, message_id: str) -> str:
    """A message claimed with its score job, whose score could not be had."""
    claimed = ledger.record_claim(message_id, raw_message(message_id), BRIDGE, 60, scored=True)
    assert claimed is Claim.WRITTEN
    score_id = score_job_id(message_id)
    assert ledger.finish(score_id, JobState.DEAD, reason="no scorer", outcome=Outcome.SCORE_LOST)
    return score_id


def test_a_lost_score_is_listed_retried_and_otherwise_expires(redis_url: str) -> None:
    client = connect_redis(redis_url)
    ledger = Ledger(client, Keys(), finished_retention_s=0.2)
    lost = lose_score(ledger, "unscored")
    assert lost in ledger.dead_job_ids()
    assert ledger.totals() == (1, 1)  # the reply still active; its score a dead letter
    assert 0 < client.pttl(ledger.keys.job(lost)) <= 200  # it expires, unlike a reply's
    # Retried in time, it no longer expires and leaves the lost scores.
    revived = ledger.revive(lost, 60)
    assert revived.state is JobState.RETRYING
    assert client.pttl(ledger.keys.job(lost)) == -1
    assert lost not in ledger.dead_job_ids()
    # Another, left alone, is gone after the retention, and so is its place in the index.
    forgotten = lose_score(ledger, "forgotten")
    wait_for(lambda: ledger.get(forgotten) is None, 10, what="the lost score expired")
    later = lose_score(ledger, "later")
    assert ledger.dead_job_ids() == [later]
    client.close()
