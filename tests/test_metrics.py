"""Prometheus metrics: counted in Redis where each event happens, read by the fleet page's
`/metrics` at scrape time. The collector against a real Redis, then a whole run scraped and
checked against the site queue."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from orchestrator.domain.job import Attempt, JobKind, Outcome, score_job_id
from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.errors import QueueError
from orchestrator.ops.metrics import CONTENT_TYPE, exposition
from orchestrator.services import State
from orchestrator.site_queue import ERROR_KINDS, SiteQueueClient
from orchestrator.state.ledger import Claim, Ledger
from orchestrator.state.metrics import (
    CLAIMED,
    GENERATION_SECONDS_BUCKETS,
    SCORES_APPLIED,
    Metrics,
    generation_figures,
)
from standins import SAMPLE_ENTITIES_DIR
from standins.embedded_redis import free_port
from standins.http_server import ThreadedServer
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, wait_quiet, worker_capacity
from standins.waiting import wait_for
from workers.contract.job import JobState
from workers.contract.protocol import ChatTimings, ErrorKind

BRIDGE = "bridge-test"
MODEL = "llama3.2:3b"
Samples = dict[str, list[Sample]]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    return sum(
        sample.value
        for sample in samples.get(name, [])
        if all(sample.labels.get(label) == wanted for label, wanted in labels.items())
    )


def series(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels[label] for label in labels): sample.value
        for sample in samples.get(name, [])
    }


# The collector against a real Redis -----------------------------------------------------------


@pytest.fixture
def state(redis_url: str) -> Iterator[State]:
    connected = State.connect(redis_url)
    yield connected
    connected.close()


def scrape(state: State) -> Samples:
    return parse(exposition(state).decode())


def claimed(ledger: Ledger, job_id: str, *, scored: bool = False) -> None:
    message = {"id": job_id, "text": "hello", "username": "ada"}
    assert ledger.record_claim(job_id, message, BRIDGE, 60, scored=scored) is Claim.WRITTEN


def finish_generated(ledger: Ledger, job_id: str, server_id: str, timings: ChatTimings) -> bool:
    """A job finished with its generation's figures, as delivery does it."""
    pipe = ledger.redis.pipeline(transaction=True)
    ledger.queue_finish(
        pipe,
        job_id,
        JobState.DONE,
        outcome=Outcome.ANSWERED,
        figures=generation_figures(ledger.keys, server_id, MODEL, timings),
    )
    return bool(pipe.execute()[-1])


def test_histogram_buckets_are_cumulative_and_count_each_job_once(state: State) -> None:
    ledger = state.ledger
    walls_s = [0.1, 0.25, 0.3, 4.0, 4.5, 400.0]  # on a bound counts in it; past the last, +Inf
    for index, wall_s in enumerate(walls_s):
        claimed(ledger, f"job-{index}")
        timings = ChatTimings(wall_ms=wall_s * 1000, eval_count=40, eval_ms=1000)
        assert finish_generated(ledger, f"job-{index}", "mac-1", timings)
    # A second delivery of a result finds the job ended: nothing counts twice.
    again = ChatTimings(wall_ms=100, eval_count=40, eval_ms=1000)
    assert not finish_generated(ledger, "job-0", "mac-1", again)

    samples = scrape(state)
    name = "ollama_cloud_generation_seconds"
    buckets = {
        sample.labels["le"]: sample.value
        for sample in samples[f"{name}_bucket"]
        if sample.labels["server"] == "mac-1" and sample.labels["model"] == MODEL
    }
    assert buckets == {
        "0.25": 2, "0.5": 3, "1.0": 3, "2.5": 3, "5.0": 5, "10.0": 5, "20.0": 5, "30.0": 5,
        "60.0": 5, "120.0": 5, "300.0": 5, "+Inf": 6,
    }  # fmt: skip
    assert len(buckets) == len(GENERATION_SECONDS_BUCKETS) + 1
    assert value(samples, f"{name}_count", server="mac-1", model=MODEL) == 6
    assert value(samples, f"{name}_sum", server="mac-1", model=MODEL) == pytest.approx(sum(walls_s))
    speed = "ollama_cloud_generation_tokens_per_second"
    assert value(samples, f"{speed}_count", server="mac-1", model=MODEL) == 6
    assert value(samples, f"{speed}_bucket", server="mac-1", model=MODEL, le="30.0") == 0
    assert value(samples, f"{speed}_bucket", server="mac-1", model=MODEL, le="40.0") == 6
    assert value(samples, "ollama_cloud_messages_answered_total") == 6


def test_a_cold_load_counts_and_a_speed_untold_is_left_out(state: State) -> None:
    ledger = state.ledger
    claimed(ledger, "cold")
    loaded = ChatTimings(wall_ms=5000, load_ms=4000, eval_count=0, eval_ms=0)
    assert finish_generated(ledger, "cold", "mac-2", loaded)
    claimed(ledger, "warm")
    assert finish_generated(ledger, "warm", "mac-2", ChatTimings(wall_ms=800, load_ms=5))
    samples = scrape(state)
    assert value(samples, "ollama_cloud_cold_loads_total", server="mac-2", model=MODEL) == 1
    assert value(samples, "ollama_cloud_generation_seconds_count", server="mac-2") == 2
    assert value(samples, "ollama_cloud_generation_tokens_per_second_count", server="mac-2") == 0


def test_outcomes_count_by_kind_and_skips_by_reason(state: State) -> None:
    ledger = state.ledger
    ends = [
        ("answered", JobState.DONE, Outcome.ANSWERED),
        ("skip", JobState.DONE, Outcome.SKIPPED),
        ("unknown-entity", JobState.REJECTED, Outcome.REJECTED),
        ("no-server", JobState.DEAD, Outcome.DEAD),
    ]
    for job_id, state_to, outcome in ends:
        claimed(ledger, job_id, scored=True)
        assert ledger.finish(job_id, state_to, reason="why", outcome=outcome)
        assert not ledger.finish(job_id, state_to, reason="why", outcome=outcome)  # once
    assert ledger.finish(score_job_id("answered"), JobState.DONE, outcome=Outcome.SCORED)
    assert ledger.finish(score_job_id("skip"), JobState.DEAD, outcome=Outcome.SCORE_LOST)
    # A malformed message's score is rejected with its reply: no message is skipped twice.
    rejected = score_job_id("unknown-entity")
    assert ledger.finish(rejected, JobState.REJECTED, outcome=Outcome.REJECTED)
    ledger.count("refused")  # an id that cannot be kept: never a job
    metrics = Metrics(state.redis, state.keys)
    for _ in range(5):
        metrics.count(CLAIMED)
    metrics.count(SCORES_APPLIED)

    samples = scrape(state)
    assert value(samples, "ollama_cloud_messages_claimed_total") == 5
    assert value(samples, "ollama_cloud_messages_answered_total") == 1
    assert series(samples, "ollama_cloud_messages_skipped_total", "reason") == {
        ("entity_rules",): 1, ("rejected",): 1, ("dropped",): 0, ("refused",): 1,
    }  # fmt: skip
    assert value(samples, "ollama_cloud_messages_dead_lettered_total") == 1
    assert value(samples, "ollama_cloud_scores_applied_total") == 1
    assert value(samples, "ollama_cloud_scores_lost_total") == 1
    finished = series(samples, "ollama_cloud_jobs_finished_total", "kind", "outcome")
    assert finished == {
        ("reply", "answered"): 1, ("reply", "dead"): 1, ("reply", "rejected"): 1,
        ("reply", "skipped"): 1, ("score", "rejected"): 1, ("score", "score_lost"): 1,
        ("score", "scored"): 1,
    }  # fmt: skip


def test_a_reroute_counts_once_by_kind_and_reason(state: State) -> None:
    ledger = state.ledger
    claimed(ledger, "moved", scored=True)
    failed = Attempt(attempt=1, server_id="mac-1", error_kind=ErrorKind.SERVER_LOST)
    for job_id in ("moved", score_job_id("moved")):
        job = ledger.get(job_id)
        assert job is not None
        assert ledger.schedule_retry(job, (JobState.CLAIMED,), at=0, failed=failed)
        # The same step again finds the job moved on: no second count.
        assert not ledger.schedule_retry(job, (JobState.CLAIMED,), at=0, failed=failed)
    samples = scrape(state)
    assert series(samples, "ollama_cloud_jobs_rerouted_total", "kind", "reason") == {
        ("reply", "server_lost"): 1,
        ("score", "server_lost"): 1,
    }
    assert value(samples, "ollama_cloud_jobs_retrying") == 2


def test_waiting_counts_only_bridges_alive_and_prunes_the_rest(state: State) -> None:
    metrics = Metrics(state.redis, state.keys)
    state.ledger.say_alive("bridge-up", 30)
    metrics.note_waiting("bridge-up", 3)
    metrics.note_waiting("bridge-gone", 7)
    samples = scrape(state)
    assert series(samples, "ollama_cloud_bridge_waiting_jobs", "bridge") == {("bridge-up",): 3}
    assert state.redis.hkeys(state.keys.bridge_waiting) == ["bridge-up"]


def test_unreadable_fields_are_left_out_not_fatal(state: State) -> None:
    keys = state.keys
    state.redis.hset(keys.generation_seconds, mapping={"not json": "1", '["a"]': "2"})
    state.redis.hset(keys.cold_loads, mapping={"[1, 2]": "1", '["s", "m"]': "oops"})
    state.redis.hset(keys.metric_counts, mapping={"claimed": "x", "finished:reply": "3"})
    samples = scrape(state)
    assert value(samples, "ollama_cloud_messages_claimed_total") == 0
    assert value(samples, "ollama_cloud_cold_loads_total", server="s", model="m") == 0
    assert "ollama_cloud_generation_seconds_count" not in samples


def site_app() -> Starlette:
    async def broken(request: Request) -> Response:
        return JSONResponse({"error": "down"}, status_code=503)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(1)
        return JSONResponse({"success": True})

    async def garbled(request: Request) -> Response:
        return PlainTextResponse("not json")

    async def missing(request: Request) -> Response:
        return JSONResponse({"success": False, "error": "Message not found"}, status_code=404)

    return Starlette(
        routes=[
            Route("/api/queue/claim-next", broken, methods=["POST"]),
            Route("/api/queue/pending", slow, methods=["GET"]),
            Route("/api/admin/stats", garbled, methods=["GET"]),
            Route("/api/queue/complete", missing, methods=["POST"]),
        ]
    )


def test_site_queue_errors_count_by_kind(state: State) -> None:
    metrics = Metrics(state.redis, state.keys)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with (
        SiteQueueClient(nowhere, on_error=metrics.note_site_error) as queue,
        pytest.raises(QueueError),
    ):
        queue.claim_next(BRIDGE)
    with (
        ThreadedServer(site_app()) as server,
        SiteQueueClient(server.url, timeout=0.3, on_error=metrics.note_site_error) as queue,
    ):
        for call in (
            lambda: queue.claim_next(BRIDGE),
            lambda: queue.claim_next(BRIDGE),
            queue.pending,
            queue.stats,
            lambda: queue.complete("gone-1"),
        ):
            with pytest.raises(QueueError):
                call()
    samples = scrape(state)
    errors = {kind: count for (kind,), count in series(
        samples, "ollama_cloud_site_queue_errors_total", "kind").items()}  # fmt: skip
    assert set(errors) == set(ERROR_KINDS)
    assert {kind: count for kind, count in errors.items() if count} == {
        "connect": 1, "server_error": 2, "timeout": 1, "bad_answer": 1, "gone": 1,
    }  # fmt: skip


def test_exposition_is_the_text_format(state: State) -> None:
    text = exposition(state).decode()
    assert CONTENT_TYPE.startswith("text/plain")
    assert "# TYPE ollama_cloud_messages_claimed_total counter" in text
    assert "# TYPE ollama_cloud_generation_seconds histogram" in text
    assert "# TYPE ollama_cloud_server_inflight gauge" in text


# A whole run, scraped from the fleet page -------------------------------------------------------

CRITIC_MODEL = "qwen2.5:7b"  # the-critic's: only the cold server has it, not yet loaded
SERVERS = [
    SimServerSpec(name="fast", models=[MODEL], loaded=[MODEL], tokens_per_second=2000,
                  parallel=3),
    SimServerSpec(name="cold", models=[MODEL, CRITIC_MODEL], loaded=[MODEL],
                  tokens_per_second=1000, load_seconds=0.6, parallel=2),
]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    folder = tmp_path_factory.mktemp("entities")
    for sample in SAMPLE_ENTITIES_DIR.glob("*.json"):
        shutil.copy(sample, folder / sample.name)
    with LocalStack(SERVERS, entities_dir=folder, web=True) as running:
        yield running


def human(message_id: str, text: str, entity: str) -> NewMessage:
    return NewMessage(
        id=message_id,
        text=text,
        username="ada",
        context=["bo: hello", "ada: hi bo"],
        botParams=BotParams(entity=entity, humanUsername="ada"),
    )


def scrape_page(stack: LocalStack) -> Samples:
    response = httpx.get(f"{stack.web_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@pytest.mark.e2e
def test_a_run_scraped_from_the_fleet_page_matches_the_queue(stack: LocalStack) -> None:
    sent = {
        **{f"m-{index}": human(f"m-{index}", f"question {index}",
                               "the-eternal" if index % 2 else "the-critic")
           for index in range(10)},
        "skip-1": human("skip-1", "sim-say: [SKIP] not this one", "the-eternal"),
        "unknown-1": human("unknown-1", "hello", "no-such-entity"),
        "broken-1": human("broken-1", "sim-error:500 every server fails this", "the-eternal"),
    }  # fmt: skip
    with stack.queue_client() as queue:
        for message in sent.values():
            queue.post_comment(message)
        wait_quiet(stack, expected=len(sent), timeout=120)
        comments = {str(comment["id"]): comment for comment in queue.comments_after(0)}

    humans = {message_id: comments[message_id] for message_id in sent}
    handed_out = sum(1 for comment in humans.values() if comment["botParams"].get("claimedBy"))
    replies = Counter(
        str(comment["replyTo"])
        for comment in comments.values()
        if comment.get("message-type") == "AI" and str(comment.get("replyTo")) in sent
    )
    patched = sum(1 for comment in humans.values() if (comment.get("eqScore") or 0) > 0)
    jobs = stack.ledger.get_many([*sent, *(score_job_id(message_id) for message_id in sent)])
    generated = Counter(
        (job.server_id or "", job.model or "") for job in jobs if job.state is JobState.DONE
    )
    retries = sum(
        len(job.attempts) - (1 if job.state is JobState.DEAD else 0) for job in jobs if job.attempts
    )

    # The bridge's waiting count is renewed every second: wait for the run's end to show.
    def settled() -> Samples | None:
        samples = scrape_page(stack)
        waiting = value(samples, "ollama_cloud_bridge_waiting_jobs")
        inflight = value(samples, "ollama_cloud_server_inflight")
        return samples if waiting == 0 and inflight == 0 else None

    found = wait_for(settled, timeout=15, interval=0.2, what="no job waiting or running")
    assert found is not None
    samples = found

    assert handed_out == len(sent)
    assert value(samples, "ollama_cloud_messages_claimed_total") == handed_out
    assert sum(replies.values()) == len(sent) - 3  # the skipped, the unknown and the broken
    assert value(samples, "ollama_cloud_messages_answered_total") == sum(replies.values())
    skipped = series(samples, "ollama_cloud_messages_skipped_total", "reason")
    assert skipped == {("entity_rules",): 1, ("rejected",): 1, ("dropped",): 0, ("refused",): 0}
    assert value(samples, "ollama_cloud_messages_dead_lettered_total") == 1
    assert patched >= len(sent) - 3
    assert value(samples, "ollama_cloud_scores_applied_total") == patched
    assert value(samples, "ollama_cloud_scores_lost_total") == 1  # the broken one's
    rerouted = value(samples, "ollama_cloud_jobs_rerouted_total")
    assert rerouted == retries >= 2
    assert value(samples, "ollama_cloud_jobs_rerouted_total", kind=JobKind.REPLY.value) >= 1
    assert value(samples, "ollama_cloud_site_queue_errors_total") == 0

    for spec in SERVERS:
        assert value(samples, "ollama_cloud_server_online", server=spec.name) == 1
        assert value(samples, "ollama_cloud_server_capacity", server=spec.name) == (
            worker_capacity(spec)
        )
        assert value(samples, "ollama_cloud_server_queued_tasks", server=spec.name) == 0
        age = value(samples, "ollama_cloud_server_heartbeat_age_seconds", server=spec.name)
        assert 0 <= age < 5
    assert value(samples, "ollama_cloud_cold_loads_total", server="cold", model=CRITIC_MODEL) >= 1
    assert value(samples, "ollama_cloud_cold_loads_total", server="fast") == 0

    histogram = "ollama_cloud_generation_seconds"
    counts = series(samples, f"{histogram}_count", "server", "model")
    assert counts == {pair: float(count) for pair, count in generated.items()}
    for (server_id, model), count in counts.items():
        bounds = [
            sample
            for sample in samples[f"{histogram}_bucket"]
            if sample.labels["server"] == server_id and sample.labels["model"] == model
        ]
        cumulative = [sample.value for sample in bounds]
        assert cumulative == sorted(cumulative)
        assert bounds[-1].labels["le"] == "+Inf" and cumulative[-1] == count
    # Every generation delivered: the replies posted and skipped, and the scores found.
    scored = sum(1 for job in jobs if job.outcome == Outcome.SCORED)
    assert sum(counts.values()) == sum(replies.values()) + 1 + scored
    assert stack.processes.crashed() == []


@pytest.mark.e2e
def test_metrics_module_is_what_the_page_serves(stack: LocalStack) -> None:
    """The page's /metrics is this module's exposition of the same Redis."""
    served = scrape_page(stack)
    direct = parse(exposition(stack.state).decode())
    assert set(served) == set(direct)
