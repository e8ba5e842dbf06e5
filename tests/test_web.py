"""The fleet page against a real Redis holding real records: its JSON snapshot, its basic auth,
what it does with hostile names and reasons, and its event stream; served by uvicorn on
loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.domain.job import Attempt, Outcome, score_job_id
from orchestrator.ops.web import PUSH_INTERVAL_S, PageServer, page_server, page_state
from orchestrator.services import State
from orchestrator.settings import Settings
from orchestrator.state.delivered import Delivered, DeliveredRecord
from orchestrator.state.ledger import Claim, Ledger, Reservation
from standins.embedded_redis import free_port
from standins.waiting import wait_for
from workers.contract.job import JobState
from workers.contract.keys import Keys
from workers.contract.protocol import ChatTimings, ErrorKind
from workers.contract.server_record import ServerRecord
from workers.heartbeat import remove_record, write_record

STATIC = Path(__file__).parent.parent / "orchestrator" / "web_static"
BRIDGE = "bridge-web"
MODEL = "llama3.2:3b"
HOSTILE_ENTITY = '<img src=x onerror="window.pwned=1">'
HOSTILE_REASON = "</td></tr><script>window.pwned=2</script> & \"quotes\" 'too'"


@dataclass
class Page:
    url: str
    state: State
    server: PageServer
    stop: threading.Event
    thread: threading.Thread
    client: httpx.Client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(f"{self.url}{path}", **kwargs)


def serve_page(redis_url: str, **settings: Any) -> Page:
    port = free_port()
    config = Settings(redis_url=redis_url, web_host="127.0.0.1", web_port=port, **settings)
    state = page_state(config)
    stop = threading.Event()
    server = page_server(config, stop, state)
    thread = threading.Thread(target=server.run, name="fleet-page", daemon=True)
    thread.start()
    client = httpx.Client(timeout=5.0)
    page = Page(f"http://127.0.0.1:{port}", state, server, stop, thread, client)

    def answers() -> bool:
        try:
            return page.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 10, what="the fleet page")
    return page


def stop_page(page: Page) -> None:
    page.stop.set()
    page.thread.join(10)
    assert not page.thread.is_alive()
    page.client.close()
    page.state.close()


@pytest.fixture
def page(redis_url: str) -> Iterator[Page]:
    running = serve_page(redis_url)
    yield running
    stop_page(running)


# Records, written by the code that writes them in the system ------------------------------------


def beat(state: State, server_id: str, **fields: Any) -> None:
    """One heartbeat of a server, as its worker writes it."""
    record = ServerRecord(id=server_id, capacity=2, models=[MODEL], loaded=[MODEL],
                          last_beat=time.time(), beat_interval_s=1.0, **fields)  # fmt: skip
    write_record(state.redis, state.keys, record, ttl_s=30)


def claim(
    ledger: Ledger, job_id: str, entity: str = "the-eternal", *, scored: bool = False
) -> None:
    message = {"id": job_id, "text": "hello", "username": "ada", "timestamp": 1,
               "botParams": {"entity": entity}}  # fmt: skip
    assert ledger.record_claim(job_id, message, BRIDGE, 600, scored=scored) is Claim.WRITTEN
    for one in [job_id, score_job_id(job_id)] if scored else [job_id]:
        assert ledger.mark_waiting(one, BRIDGE, entity=entity, model=MODEL, priority=5)


def dispatch(ledger: Ledger, job_id: str, server_id: str, entity: str = "the-eternal") -> None:
    job = ledger.get(job_id)
    assert job is not None
    taken = ledger.reserve(
        job_id, server_id, 4, attempt=job.attempt + 1, entity=entity, model=MODEL, priority=5,
        bridge_id=BRIDGE,
    )  # fmt: skip
    assert taken is Reservation.TAKEN


def give_up(ledger: Ledger, job_id: str, reason: str, outcome: Outcome) -> None:
    """A job whose attempt failed and that is then given up, as delivery ends one."""
    dispatch(ledger, job_id, "mac-1", entity=HOSTILE_ENTITY)
    job = ledger.get(job_id)
    assert job is not None
    failed = Attempt(attempt=job.attempt, server_id="mac-1", error_kind=ErrorKind.TIMEOUT,
                     error="no answer in 30s")  # fmt: skip
    assert ledger.schedule_retry(job, (JobState.DISPATCHED,), at=time.time(), failed=failed)
    assert [entry.id for entry in ledger.take_retries(BRIDGE)] == [job_id]
    job = ledger.get(job_id)
    assert job is not None and ledger.begin_ending(job, reason, (JobState.WAITING,))
    assert ledger.finish(job_id, JobState.DEAD, reason=reason, outcome=outcome)


def delivered(state: State, job_id: str, server_id: str, latency_ms: float) -> None:
    DeliveredRecord(state.redis, state.keys).note(
        Delivered(at=time.time(), job_id=job_id, kind="reply", outcome="answered",
                  server_id=server_id, entity="the-eternal", model=MODEL, attempt=1,
                  latency_ms=latency_ms, generation_ms=latency_ms - 50, tokens_per_s=42.0)
    )  # fmt: skip


def measured(state: State, server_id: str, tokens: int, eval_ms: float) -> None:
    """A generation's timings, noted as control notes them."""
    pipe = state.redis.pipeline(transaction=True)
    timings = ChatTimings(wall_ms=eval_ms + 100, eval_count=tokens, eval_ms=eval_ms)
    state.fleet.queue_latency(pipe, server_id, MODEL, timings)
    pipe.execute()


def fleet_json(page: Page, **kwargs: Any) -> dict[str, Any]:
    answer = page.get("/api/fleet", **kwargs)
    assert answer.status_code == 200, answer.text
    snapshot: dict[str, Any] = answer.json()
    return snapshot


# The snapshot -----------------------------------------------------------------------------------


def test_the_snapshot_shows_servers_jobs_letters_and_recent_replies(page: Page) -> None:
    state = page.state
    beat(state, "mac-1", location="Berlin", tailscale_name="mac-1.tail", tailscale_ip="100.64.0.1")
    beat(state, "mac-2", location="Paris")
    remove_record(state.redis, state.keys, "mac-2")  # stopped cleanly: known, offline
    measured(state, "mac-1", tokens=300, eval_ms=5000)  # 60 tokens a second
    claim(state.ledger, "m-active")
    dispatch(state.ledger, "m-active", "mac-1")
    claim(state.ledger, "m-dead", entity=HOSTILE_ENTITY, scored=True)
    give_up(state.ledger, "m-dead", "3 attempts failed", Outcome.DEAD)
    give_up(state.ledger, score_job_id("m-dead"), "no scorer", Outcome.SCORE_LOST)
    delivered(state, "m-done", "mac-1", 850.0)

    snapshot = fleet_json(page)

    rows = {row["id"]: row for row in snapshot["servers"]}
    assert rows["mac-1"]["online"] and rows["mac-1"]["location"] == "Berlin"
    assert rows["mac-1"]["tailscale_name"] == "mac-1.tail"
    assert rows["mac-1"]["inflight"] == 1 and rows["mac-1"]["capacity"] == 2
    assert rows["mac-1"]["inflight_models"] == {MODEL: 1}
    assert rows["mac-1"]["tokens_per_s"] == pytest.approx(60.0)
    assert rows["mac-1"]["latency_ms"] == pytest.approx(5100.0)
    assert not rows["mac-2"]["online"]
    assert 0 <= rows["mac-2"]["last_beat_age_s"] < 10
    assert snapshot["totals"]["online"] == 1 and snapshot["totals"]["servers"] == 2
    assert [job["id"] for job in snapshot["active"]] == ["m-active"]
    assert snapshot["active"][0]["server_id"] == "mac-1" and snapshot["active_total"] == 1
    assert snapshot["active"][0]["task_id"] == "m-active@1"  # Flower's /task/<id>
    (dead,) = snapshot["dead_letters"]
    assert dead["id"] == "m-dead" and dead["reason"] == "3 attempts failed"
    assert dead["entity"] == HOSTILE_ENTITY  # data, as it came: the page writes it as text
    assert dead["attempts"][0]["error_kind"] == "timeout"
    (lost,) = snapshot["lost_scores"]
    assert lost["id"] == score_job_id("m-dead") and lost["reason"] == "no scorer"
    assert snapshot["letters"]["dead"]["count"] == 1
    assert snapshot["letters"]["lost_scores"]["count"] == 1
    (recent,) = snapshot["recent"]
    assert recent["job_id"] == "m-done" and recent["latency_ms"] == 850.0
    assert recent["task_id"] == f"m-done@{recent['attempt']}"
    assert len(snapshot["per_minute"]) == 10
    assert snapshot["per_minute"][-1]["outcomes"] == {"answered": 1}
    assert snapshot["totals"]["outcomes"] == {"dead": 1, "score_lost": 1}
    assert snapshot["flower_url"] == "http://127.0.0.1:5555"


def test_the_recent_record_is_bounded_and_counts_each_minute(redis_url: str) -> None:
    state = State.connect(redis_url)
    record = DeliveredRecord(state.redis, Keys(), kept=5)
    now = time.time()
    for index in range(8):
        at = now - 60 if index < 3 else now  # three in the minute before
        record.note(Delivered(at=at, job_id=f"j{index}", kind="reply", outcome="answered",
                              server_id="s", entity=None, model=None, attempt=1,
                              latency_ms=1.0))  # fmt: skip
    record.note(Delivered(at=now, job_id="x", kind="reply", outcome="dead", server_id="s",
                          entity=None, model=None, attempt=3, latency_ms=9.0))  # fmt: skip
    assert state.redis.llen(state.keys.recent_replies) == 5  # the newest 5 kept
    state.redis.lpush(state.keys.recent_replies, "not json", '{"at": "no fields"}')
    recent, minutes = record.read(limit=10, minutes=3, now=now)
    assert [entry.job_id for entry in recent] == ["x", "j7", "j6", "j5", "j4"]  # junk left out
    assert [minute.outcomes for minute in minutes] == [
        {},
        {"answered": 3},
        {"answered": 5, "dead": 1},
    ]
    assert 0 < state.redis.ttl(state.keys.minute_totals(int(now // 60))) <= 61 * 60
    state.close()


def test_a_snapshot_is_read_once_per_interval_however_many_ask(page: Page) -> None:
    before = page.server.page.snapshots.reads
    started = time.monotonic()
    for _ in range(20):
        fleet_json(page)
    intervals = (time.monotonic() - started) / PUSH_INTERVAL_S
    assert page.server.page.snapshots.reads - before <= int(intervals) + 1 < 20


def test_redis_away_is_a_503_not_a_crash(redis_url: str) -> None:
    running = serve_page("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        answer = running.get("/api/fleet")
        assert answer.status_code == 503 and answer.json() == {"error": "Redis did not answer"}
        with running.client.stream("GET", f"{running.url}/events") as response:
            lines = response.iter_lines()
            assert "event: problem" in [next(lines) for _ in range(4)]
        assert running.get("/healthz").status_code == 200
    finally:
        stop_page(running)


# Basic auth -------------------------------------------------------------------------------------


def test_basic_auth_guards_everything_but_the_health_check(redis_url: str) -> None:
    running = serve_page(redis_url, web_basic_auth="ada:s3cret:with-colon")
    try:
        for path in ("/", "/api/fleet", "/events", "/metrics", "/static/fleet.js"):
            refused = running.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith('Basic realm="ollama-cloud')
            assert "s3cret" not in refused.text
        for wrong in (("ada", "nope"), ("bob", "s3cret:with-colon"), ("ada", "")):
            assert running.get("/api/fleet", auth=wrong).status_code == 401
        garbled = {"Authorization": "Basic !!!not-base64"}
        assert running.get("/api/fleet", headers=garbled).status_code == 401
        assert running.get("/api/fleet", headers={"Authorization": "Bearer x"}).status_code == 401
        good = ("ada", "s3cret:with-colon")
        assert running.get("/api/fleet", auth=good).status_code == 200
        assert running.get("/", auth=good).status_code == 200
        metrics = running.get("/metrics", auth=good)
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert running.get("/healthz").status_code == 200
        # Read-only: nothing takes a change.
        posted = running.client.post(f"{running.url}/api/fleet", auth=good)
        assert posted.status_code == 405
    finally:
        stop_page(running)


def test_without_basic_auth_set_the_page_is_open(page: Page) -> None:
    assert page.get("/api/fleet").status_code == 200
    assert page.get("/").status_code == 200


# Hostile values ---------------------------------------------------------------------------------


def test_hostile_names_and_reasons_stay_data(page: Page) -> None:
    beat(page.state, "mac-1", location=HOSTILE_ENTITY, fault=HOSTILE_REASON, ollama_healthy=False)
    claim(page.state.ledger, "m-evil", entity=HOSTILE_ENTITY)
    give_up(page.state.ledger, "m-evil", HOSTILE_REASON, Outcome.DEAD)

    html = page.get("/")
    assert html.headers["content-type"].startswith("text/html")
    csp = html.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert html.headers["x-content-type-options"] == "nosniff"
    snapshot = page.get("/api/fleet")
    assert snapshot.headers["content-type"].startswith("application/json")
    assert snapshot.json()["dead_letters"][0]["reason"] == HOSTILE_REASON
    assert snapshot.json()["servers"][0]["location"] == HOSTILE_ENTITY
    assert "window.pwned" not in html.text  # the page holds no data; its script fetches it
    # The script writes values only as text: no markup sink anywhere in it.
    script = (STATIC / "fleet.js").read_text()
    sinks = re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)
    assert sinks == []


# The event stream -------------------------------------------------------------------------------


def events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


def test_the_event_stream_pushes_each_change(page: Page) -> None:
    with page.client.stream("GET", f"{page.url}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        first = next(stream)
        assert first["servers"] == []
        beat(page.state, "mac-3", location="Lisbon")
        deadline = time.monotonic() + 5 * PUSH_INTERVAL_S
        while True:
            snapshot = next(stream)
            if snapshot["servers"]:
                break
            assert time.monotonic() < deadline, "the new server never came"
        assert snapshot["servers"][0]["id"] == "mac-3" and snapshot["at"] > first["at"]
        remove_record(page.state.redis, page.state.keys, "mac-3")
        while next(stream)["servers"][0]["online"]:
            assert time.monotonic() < deadline + 5 * PUSH_INTERVAL_S, "never offline"


def test_the_server_stops_at_once_with_streams_open(redis_url: str) -> None:
    running = serve_page(redis_url)
    with running.client.stream("GET", f"{running.url}/events") as response:
        next(events(response))
        started = time.monotonic()
        stop_page(running)
        assert time.monotonic() - started < 2.0


@pytest.mark.e2e
def test_the_command_stops_cleanly_on_sigterm_with_a_page_open(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("OLLAMA_")}
    env["OLLAMA_CLOUD_REDIS_URL"] = redis_url
    env["OLLAMA_CLOUD_WEB_BASIC_AUTH"] = "ada:hunter22"
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "web", "--port", str(port)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, what="ollama-cloud web")
        with httpx.stream("GET", f"{url}/events", auth=("ada", "hunter22"), timeout=10) as stream:
            next(events(stream))
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - started < 3.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert "fleet page at http://127.0.0.1" in output and "basic auth" in output
    assert "hunter22" not in output  # the password is never logged
