"""A replayed or copied task, and a server that accepts and never answers, against real
processes: neither holds a job or a slot for long, and a real cold load of minutes is still
waited for."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest
from celery import Celery

from orchestrator.domain.job import Job
from standins import SAMPLE_ENTITIES_DIR
from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for
from tests.fleet_checks import assert_answered_once, jobs, post
from workers.contract.celery_config import celery_config
from workers.contract.job import JobState
from workers.contract.protocol import (
    GENERATE_TASK,
    ChatRequest,
    ChatTurn,
    GenerateJob,
)
from workers.contract.settings import CelerySettings

pytestmark = pytest.mark.e2e

BOTH = ["llama3.2:3b", "qwen2.5:7b"]
CRITIC_MODEL = "qwen2.5:7b"
SLOW_MODEL = "mistral:7b"  # only on `slow`, not loaded, and loading it takes two minutes
COLD_LOAD_S = 120.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    entities = tmp_path_factory.mktemp("entities")
    for path in SAMPLE_ENTITIES_DIR.glob("*.json"):
        shutil.copy(path, entities / path.name)
    slow = json.loads((SAMPLE_ENTITIES_DIR / "the-critic.json").read_text())
    slow.update(id="the-slow", username="TheSlow", model=SLOW_MODEL)
    (entities / "the-slow.json").write_text(json.dumps(slow))
    servers = [
        SimServerSpec(name=name, models=BOTH, loaded=BOTH, tokens_per_second=400, parallel=2)
        for name in ("a", "b", "c")
    ]
    servers.append(
        SimServerSpec(
            name="slow", models=[SLOW_MODEL], tokens_per_second=400, load_seconds=COLD_LOAD_S
        )
    )
    env = {"OLLAMA_CLOUD_COOLDOWN_S": "1"}
    worker_env = {"a": {"OLLAMA_CLOUD_PRIORITY": "1"}}  # `a` wins ties
    with LocalStack(servers, entities_dir=entities, extra_env=env, worker_env=worker_env) as s:
        yield s


def hang_on_a(stack: LocalStack) -> None:
    body = {"hang_next": 1, "hang_model": CRITIC_MODEL}
    httpx.post(f"{stack.sim_url('a')}/sim/faults", json=body).raise_for_status()


def dispatched_on_a(stack: LocalStack, job_id: str) -> Job:
    def begun() -> Job | None:
        job = jobs(stack, [job_id]).get(job_id)
        placed = job is not None and job.state is JobState.DISPATCHED and job.server_id == "a"
        started_at = float(stack.redis.hget(stack.keys.job(job_id), "started_at") or 0)
        return job if placed and started_at > 0 else None

    return wait_for(begun, 30, what=f"{job_id} begun on a")


def no_slot_held(stack: LocalStack) -> None:
    def empty() -> bool:
        return all(stack.redis.hlen(stack.keys.inflight(spec.name)) == 0 for spec in stack.specs)

    wait_for(empty, 15, what="every slot free")


def test_a_task_copied_to_other_servers_never_holds_its_job(stack: LocalStack) -> None:
    hang_on_a(stack)
    [message_id] = post(stack, 1, entity="the-critic")
    job = dispatched_on_a(stack, message_id)
    started_at = stack.redis.hget(stack.keys.job(message_id), "started_at")
    # The same generate task, same job and attempt, sent by hand to `b` and `c`.
    copy = GenerateJob(
        job_id=job.id,
        attempt=job.attempt,
        server_id="a",
        request=ChatRequest(model=CRITIC_MODEL, messages=[ChatTurn(role="user", content="hi")]),
        dispatched_at=time.time(),
    )
    sender = Celery("copies", set_as_current=False)
    prefix = stack.keys.prefix
    sender.conf.update(celery_config(CelerySettings(redis_url=stack.redis_url, key_prefix=prefix)))
    for server in ("b", "c"):
        sender.send_task(GENERATE_TASK, args=[copy.model_dump(mode="json")], queue=server)

    def both_dropped() -> bool:
        logs = [stack.processes[f"worker-{server}"].log_tail(200) for server in ("b", "c")]
        return all(f"job={message_id} " in log and "placed on a: dropped" in log for log in logs)

    wait_for(both_dropped, 30, what="the copies dropped by b and c")
    sender.close()
    kept = stack.redis.hgetall(stack.keys.job(message_id))
    assert "result" not in kept and kept["started_at"] == started_at and kept["server_id"] == "a"
    # `a`'s worker dies: the job goes elsewhere at once and is answered exactly once.
    killed_at = time.monotonic()
    stack.processes["worker-a"].kill()
    try:
        finished = assert_answered_once(stack, [message_id])
        assert time.monotonic() - killed_at < 15
        answered = finished[message_id]
        assert answered.server_id in {"b", "c"}
        assert [(entry.server_id, entry.error_kind) for entry in answered.attempts] == [
            ("a", "server_lost")
        ]
        no_slot_held(stack)
    finally:
        stack.start_worker("a")


def test_a_hung_server_is_given_up_in_seconds_while_a_cold_load_is_waited_for(
    stack: LocalStack,
) -> None:
    [slow_id] = post(stack, 1, entity="the-slow")
    hang_on_a(stack)
    posted_at = time.monotonic()
    [hung_id] = post(stack, 1, entity="the-critic")
    # Given up on `a` (its model was loaded, no first token came) and answered elsewhere.
    finished = assert_answered_once(stack, [hung_id])
    assert time.monotonic() - posted_at < 15
    answered = finished[hung_id]
    assert answered.server_id in {"b", "c"}
    assert [(entry.server_id, entry.error_kind) for entry in answered.attempts] == [("a", "hung")]
    # Meanwhile `slow` loads its model for two minutes: that is waited for, not given up.
    assert jobs(stack, [slow_id])[slow_id].state is JobState.DISPATCHED
    finished = assert_answered_once(stack, [slow_id], timeout=COLD_LOAD_S + 60)
    slow = finished[slow_id]
    assert slow.server_id == "slow" and not slow.attempts
    assert time.monotonic() - posted_at >= COLD_LOAD_S - 5
    no_slot_held(stack)
