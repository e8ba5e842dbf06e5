"""Whatever fails, every message ends in exactly one reply or a recorded reason, with real
processes: a server that errors or refuses, a context overflow, a worker killed mid-job, a
bridge killed before or after its ledger write, the control worker killed, Redis restarted,
the site queue away or emptied. Outcomes are counted on the queue itself."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from rich.console import Console

from orchestrator.domain.job import Job
from orchestrator.ops.status import FleetStatus, ServerRow, read_status, status_table
from orchestrator.state.ledger import Ledger
from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for
from tests.fleet_checks import assert_answered_once, comments, jobs, post, sim_stats, wait_finished
from workers.contract.job import JobState

pytestmark = pytest.mark.e2e

BOTH = ["llama3.2:3b", "qwen2.5:7b"]
CRITIC_MODEL = "qwen2.5:7b"  # the-critic's; the scorer's is the other
CONTEXT_LENGTH = 6000  # under the entities' 8192, so a long history overflows the server


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    servers = [
        SimServerSpec(name=name, models=BOTH, loaded=BOTH, tokens_per_second=400, parallel=2,
                      context_length=CONTEXT_LENGTH)
        for name in ("a", "b")
    ]  # fmt: skip
    env = {
        "OLLAMA_CLOUD_DELIVERY_STALL_S": "2",
        "OLLAMA_CLOUD_RECOVER_INTERVAL_S": "1",
        "OLLAMA_CLOUD_RECOVER_AFTER_S": "1",
        "OLLAMA_CLOUD_BRIDGE_LOST_AFTER_S": "3",
        "OLLAMA_CLOUD_COOLDOWN_S": "1",
        "OLLAMA_CLOUD_QUEUE_TIMEOUT_S": "2",
    }
    # `a` wins ties, so the first job of a test goes there.
    worker_env = {"a": {"OLLAMA_CLOUD_PRIORITY": "1"}}
    with LocalStack(servers, extra_env=env, worker_env=worker_env, bridges=2) as running:
        yield running


@pytest.fixture(autouse=True)
def healthy_fleet(stack: LocalStack) -> Iterator[None]:
    """Each test starts with every part running, no fault armed and no breaker open."""
    yield
    for spec in stack.specs:
        if not stack.processes[f"sim-{spec.name}"].running:
            stack.start_sim(spec.name)
        httpx.post(f"{stack.sim_url(spec.name)}/sim/faults", json={"clear": True})
    for name in ("queue", "control", "bridge", "bridge-2", "beat"):
        if not stack.processes[name].running:
            restart(stack, name)
    for spec in stack.specs:
        if not stack.processes[f"worker-{spec.name}"].running:
            stack.start_worker(spec.name, wait=False)
    stack.wait_online([spec.name for spec in stack.specs])
    for spec in stack.specs:
        stack.redis.delete(stack.keys.breaker(spec.name))


def restart(stack: LocalStack, name: str) -> None:
    if name == "control":
        stack.start_control()
    elif name == "beat":
        stack.start_beat()
    elif name.startswith("bridge"):
        stack.start_bridge(0 if name == "bridge" else int(name.rsplit("-", 1)[1]) - 1)
    else:
        stack.processes[name].start()
        if name == "queue":
            stack.wait_http(f"{stack.queue_url}/api/admin/stats", auth=True)


def test_a_failing_server_is_routed_around_and_cools_down(stack: LocalStack) -> None:
    httpx.post(f"{stack.sim_url('a')}/sim/faults", json={"fail_next": 1000, "status": 500})
    ids = post(stack, 6)
    finished = assert_answered_once(stack, ids)
    assert {job.server_id for job in finished.values()} == {"b"}
    failed_on_a = [job for job in finished.values() if job.attempts]
    assert failed_on_a, "the first job should have gone to `a` (it wins ties) and failed there"
    for job in failed_on_a:
        assert [(entry.server_id, entry.error_kind) for entry in job.attempts] == [
            ("a", "server_error")
        ]
    breaker = stack.redis.hgetall(stack.keys.breaker("a"))
    assert int(breaker["failures"]) >= 1
    # `status` shows it: still in the fleet, marked as failing (cooling, or probing after).
    row = next(row for row in read_status(stack.state).servers if row.id == "a")
    assert row.online and row.failures >= 1
    assert "COOLING" in render(row) or "probing" in render(row)


def render(row: ServerRow) -> str:
    table = status_table(FleetStatus(servers=[row], outcomes={}, active_jobs=0, dead_letters=0))
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_a_server_refusing_connections_is_routed_around(stack: LocalStack) -> None:
    stack.processes["sim-a"].stop()
    ids = post(stack, 4)
    finished = assert_answered_once(stack, ids)
    assert {job.server_id for job in finished.values()} == {"b"}
    kinds = {entry.error_kind for job in finished.values() for entry in job.attempts}
    assert kinds <= {"unavailable"}


def test_a_context_overflow_is_retried_once_with_less_history(stack: LocalStack) -> None:
    # 50 lines of 600 characters fit the entity's budget but not the servers' context.
    context = [f"{'ada' if n % 2 else 'bo'}: {'words ' * 100}" for n in range(50)]
    ids = post(stack, 2, context=context, entity="the-eternal")
    finished = assert_answered_once(stack, ids)
    for job in finished.values():
        assert [entry.error_kind for entry in job.attempts] == ["context_overflow"]
        assert job.trim == 1
    assert stack.redis.hgetall(stack.keys.breaker("a")) == {}
    assert stack.redis.hgetall(stack.keys.breaker("b")) == {}


def hang_on_a_then_post(stack: LocalStack) -> str:
    """One message, its reply held by `a` (it wins ties) until its client goes. Only the
    critic's model hangs: the message's score, asked of the scorer's model at the same time,
    is answered."""
    before = sim_stats(stack, "a")["failures_injected"]
    hang = {"hang_next": 1, "hang_model": CRITIC_MODEL}
    httpx.post(f"{stack.sim_url('a')}/sim/faults", json=hang).raise_for_status()
    [message_id] = post(stack, 1, entity="the-critic")
    wait_for(
        lambda: sim_stats(stack, "a")["failures_injected"] > before,
        20,
        what="the request hangs on a",
    )
    return message_id


def test_a_worker_killed_mid_job_loses_nothing(stack: LocalStack) -> None:
    # `a` holds its next request until the client goes: the job is surely running when the
    # worker is killed.
    message_id = hang_on_a_then_post(stack)
    stack.processes["worker-a"].kill()
    finished = assert_answered_once(stack, [message_id])
    job = finished[message_id]
    assert job.server_id == "b"
    assert [(entry.server_id, entry.error_kind) for entry in job.attempts] == [("a", "server_lost")]
    # Seen gone by its closed connections about a beat after its last, before its silence
    # allowance (3 s) would have told.
    assert "connections to Redis closed" in job.attempts[0].error
    assert job.finished_at is not None
    assert job.finished_at - job.claimed_at < 6


def test_a_claim_missing_from_the_ledger_is_recovered(stack: LocalStack) -> None:
    """A bridge killed between claim-next and its ledger write: the site shows the message
    processing by its id, the ledger never heard of it; recovery takes it back."""
    stack.processes["bridge-2"].stop()
    faults = {"claim_delay_s": 30, "claims": 1}  # the claim is made; its answer waits
    httpx.post(f"{stack.queue_url}/local/faults", json=faults).raise_for_status()
    [message_id] = post(stack, 1)

    def claimed() -> bool:
        with stack.queue_client() as queue:
            [found] = [c for c in queue.comments_after(0) if c["id"] == message_id]
        return bool(found["botParams"]["status"] == "processing")

    wait_for(claimed, 20, interval=0.02, what="the claim")
    stack.processes["bridge"].kill()
    httpx.post(f"{stack.queue_url}/local/faults", json={}).raise_for_status()
    assert Ledger(stack.redis, stack.keys).get(message_id) is None
    restart(stack, "bridge")
    assert_answered_once(stack, [message_id])


def test_a_bridge_killed_with_jobs_waiting_loses_none(stack: LocalStack) -> None:
    # Every server fails its first two requests: the jobs come back to wait in the bridges
    # while both servers cool down, and the bridges are killed then.
    for server in ("a", "b"):
        httpx.post(f"{stack.sim_url(server)}/sim/faults", json={"fail_next": 2, "status": 503})
    ids = post(stack, 4)
    wait_for(
        lambda: any(
            job.state in {JobState.WAITING, JobState.RETRYING} for job in jobs(stack, ids).values()
        ),
        20,
        interval=0.01,
        what="jobs waiting for a server",
    )
    stack.processes["bridge"].kill()
    stack.processes["bridge-2"].kill()
    restart(stack, "bridge-2")  # `bridge` stays away: its jobs go over when it is silent
    assert_answered_once(stack, ids)


def test_the_control_worker_killed_mid_run_loses_nothing(stack: LocalStack) -> None:
    ids = post(stack, 10)
    wait_for(
        lambda: sum(job.state.finished for job in jobs(stack, ids).values()) >= 2,
        30,
        what="some replies delivered",
    )
    stack.processes["control"].kill()
    restart(stack, "control")
    assert_answered_once(stack, ids)


def test_a_redis_restart_mid_run_loses_nothing(stack: LocalStack) -> None:
    ids = post(stack, 10)
    wait_for(
        lambda: sum(job.state.finished for job in jobs(stack, ids).values()) >= 2,
        30,
        what="some replies delivered",
    )
    stack.redis_server.restart()
    assert_answered_once(stack, ids)
    assert not stack.processes.crashed()


def test_the_site_queue_away_for_a_while_loses_nothing(stack: LocalStack) -> None:
    ids = post(stack, 6)
    wait_for(
        lambda: any(
            job.state in {JobState.DISPATCHED, JobState.DELIVERING}
            for job in jobs(stack, ids).values()
        ),
        20,
        what="jobs in flight",
    )
    stack.processes["queue"].stop()
    wait_for(
        lambda: any(job.state is JobState.DELIVERING for job in jobs(stack, ids).values()),
        20,
        what="a delivery waiting for the queue",
    )
    restart(stack, "queue")
    assert_answered_once(stack, ids)


def test_messages_gone_from_the_site_end_without_a_crash(stack: LocalStack) -> None:
    ids = post(stack, 6)
    wait_for(
        lambda: any(job.state is JobState.DISPATCHED for job in jobs(stack, ids).values()),
        20,
        what="jobs in flight",
    )
    httpx.post(f"{stack.queue_url}/api/admin/purge")
    # Those claimed before the purge are in the ledger; the others vanished unclaimed.
    finished = wait_for(
        lambda: (
            (known := jobs(stack, ids))
            and all(job.state.finished for job in known.values())
            and known
        ),
        60,
        what="the claimed jobs finished",
    )
    assert all(job.state in {JobState.DONE, JobState.DEAD} for job in finished.values())
    replies = Counter(
        str(c.get("replyTo")) for c in comments(stack).values() if c.get("message-type") == "AI"
    )
    assert all(replies[message_id] <= 1 for message_id in ids)
    stack.check_alive()


def test_exactly_one_beat_sends_the_schedule(stack: LocalStack) -> None:
    second = stack.start_beat("beat-2")
    try:
        wait_for(
            lambda: "stands by" in second.log_tail(100), 20, what="the second beat standing by"
        )
        holder = stack.redis.get(stack.keys.beat_process_lock)
        assert holder is not None
        stack.processes["beat"].kill()  # the second takes over once the lock expires
        wait_for(
            lambda: "sends the schedule" in second.log_tail(100),
            20,
            what="the second beat taking over",
        )
        assert stack.redis.get(stack.keys.beat_process_lock) != holder
    finally:
        second.stop()


def test_a_worker_restarted_at_once_mid_job_loses_nothing(stack: LocalStack) -> None:
    """Killed and back before anyone sees it silent: the job it was running goes again."""
    message_id = hang_on_a_then_post(stack)
    stack.processes["worker-a"].kill()
    stack.start_worker("a", wait=False)
    finished = assert_answered_once(stack, [message_id])
    job = finished[message_id]
    kinds = [entry.error_kind for entry in job.attempts]
    assert kinds in (["worker_restarted"], ["server_lost"]), kinds
    assert job.finished_at is not None
    assert job.finished_at - job.claimed_at < 15


def fail_every_server(stack: LocalStack) -> None:
    for spec in stack.specs:
        httpx.post(
            f"{stack.sim_url(spec.name)}/sim/faults", json={"fail_next": 1000, "status": 500}
        )


def assert_dead_after_every_server(stack: LocalStack, message_id: str) -> Job:
    """Dead after its three attempts: both servers tried, the last after waiting out a
    cooldown rather than failing at once; completed on the site; a dead letter with each
    attempt's server and error."""
    [job] = wait_finished(stack, [message_id]).values()
    assert job.state is JobState.DEAD
    assert [entry.error_kind for entry in job.attempts] == ["server_error"] * 3
    assert {entry.server_id for entry in job.attempts} == {"a", "b"}
    assert all(entry.error for entry in job.attempts)
    assert "3 attempts failed" in (job.reason or "")
    assert message_id in Ledger(stack.redis, stack.keys).dead_job_ids()
    assert comments(stack)[message_id]["botParams"]["status"] == "complete"
    return job


def ai_replies_to(stack: LocalStack, message_id: str) -> list[dict[str, Any]]:
    return [
        comment
        for comment in comments(stack).values()
        if comment.get("replyTo") == message_id and comment.get("message-type") == "AI"
    ]


def test_every_server_failing_ends_in_a_dead_letter_and_no_reply(stack: LocalStack) -> None:
    fail_every_server(stack)
    [message_id] = post(stack, 1)
    job = assert_dead_after_every_server(stack, message_id)
    assert not job.apology_posted
    assert ai_replies_to(stack, message_id) == []  # no apology unless the operator set one


@contextmanager
def restarted_with(
    stack: LocalStack, names: tuple[str, ...], name: str, value: str
) -> Iterator[None]:
    """The named processes run with one more setting, and without it again afterwards."""
    for process in names:
        stack.processes[process].stop()
    stack.extra_env[name] = value
    try:
        for process in names:
            restart(stack, process)
        yield
    finally:
        for process in names:
            stack.processes[process].stop()
        del stack.extra_env[name]
        for process in names:
            restart(stack, process)


def test_the_operators_apology_is_posted_once_when_every_attempt_failed(
    stack: LocalStack,
) -> None:
    apology = "Sorry, nobody could answer just now."
    with restarted_with(stack, ("control",), "OLLAMA_CLOUD_APOLOGY_TEXT", apology):
        fail_every_server(stack)
        [message_id] = post(stack, 1)
        job = assert_dead_after_every_server(stack, message_id)
        assert job.apology_posted
        [reply] = ai_replies_to(stack, message_id)
        assert reply["text"] == apology
        assert reply["username"] == "TheCritic"  # the entity's, as a real reply's would be


def test_a_job_past_its_deadline_is_given_up_with_its_reason(stack: LocalStack) -> None:
    """Its server holds the request without an answer: at the deadline the sweep ends the job,
    completed on the site, a dead letter that says why, and no reply."""
    bridges = ("bridge", "bridge-2")
    try:
        with restarted_with(stack, bridges, "OLLAMA_CLOUD_JOB_DEADLINE_S", "3"):
            message_id = hang_on_a_then_post(stack)
            [job] = wait_finished(stack, [message_id], timeout=30).values()
            assert job.state is JobState.DEAD
            assert "deadline passed (dispatched)" in (job.reason or "")
            assert job.finished_at is not None
            assert 3 <= job.finished_at - job.claimed_at < 10
            assert message_id in Ledger(stack.redis, stack.keys).dead_job_ids()
            assert comments(stack)[message_id]["botParams"]["status"] == "complete"
            assert ai_replies_to(stack, message_id) == []
            assert stack.redis.hlen(stack.keys.inflight("a")) == 0  # its slot is free
    finally:
        # The held request ends with its simulator; the fixture starts it again.
        stack.processes["sim-a"].stop()
