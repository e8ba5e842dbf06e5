"""The fleet with real workers and two bridges: servers join and leave by themselves, routing
follows the models and their load, and no server is ever sent more than its slots."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.state.ledger import Ledger
from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for

pytestmark = pytest.mark.e2e

LLAMA = "llama3.2:3b"  # the-eternal's model
QWEN = "qwen2.5:7b"  # the-critic's model
TTL_S = 2.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    servers = [
        SimServerSpec(name="warm", models=[LLAMA], loaded=[LLAMA], tokens_per_second=400,
                      parallel=2),
        SimServerSpec(name="cold", models=[LLAMA], tokens_per_second=400, load_seconds=1.0,
                      parallel=2),
        SimServerSpec(name="qwen-only", models=[QWEN], loaded=[QWEN], tokens_per_second=400,
                      parallel=2),
        SimServerSpec(name="late", models=[LLAMA, QWEN], loaded=[LLAMA, QWEN],
                      tokens_per_second=400, parallel=2),
    ]  # fmt: skip
    env = {"OLLAMA_CLOUD_HEARTBEAT_TTL_S": str(TTL_S)}
    # cold's load (1 s) outlasts its worker's connect timeout: only the read timeout covers it.
    worker_env = {"cold": {"OLLAMA_CLOUD_CONNECT_TIMEOUT_S": "0.3"}}
    with LocalStack(servers, extra_env=env, worker_env=worker_env, bridges=2) as running:
        running.processes["worker-late"].stop()
        wait_for(lambda: not online(running, "late"), 10, what="late offline")
        yield running


class Poster:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.count = 0

    def post(self, entity: str, prefix: str, count: int = 1) -> list[str]:
        ids = []
        with self.stack.queue_client() as queue:
            for _ in range(count):
                self.count += 1
                message_id = f"{prefix}-{self.count}"
                queue.post_comment(
                    NewMessage(
                        id=message_id,
                        text=f"question {self.count}",
                        username="ada",
                        botParams=BotParams(entity=entity),
                    )
                )
                ids.append(message_id)
        return ids


@pytest.fixture(scope="module")
def poster(stack: LocalStack) -> Poster:
    return Poster(stack)


def online(stack: LocalStack, server_id: str) -> bool:
    return any(server.id == server_id and server.online for server in stack.fleet())


def servers_of(stack: LocalStack, job_ids: list[str]) -> Counter[str]:
    return Counter(job.server_id for job in Ledger(stack.redis, stack.keys).get_many(job_ids))


def finished(stack: LocalStack, job_ids: list[str]) -> bool:
    jobs = Ledger(stack.redis, stack.keys).get_many(job_ids)
    return len(jobs) == len(job_ids) and all(job.state.finished for job in jobs)


def sim_stats(stack: LocalStack, server_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{stack.sim_url(server_id)}/sim/stats").json()
    return answer


def test_warm_server_is_chosen_over_cold_of_equal_speed(stack: LocalStack, poster: Poster) -> None:
    for _ in range(4):
        ids = poster.post("the-eternal", "warmth")
        wait_for(lambda ids=ids: finished(stack, ids), 30, what="answered")
        assert servers_of(stack, ids) == Counter({"warm": 1})
    assert sim_stats(stack, "cold")["requests"] == 0


def test_a_server_without_the_model_never_receives_it(stack: LocalStack, poster: Poster) -> None:
    eternal = poster.post("the-eternal", "model", 12)
    critic = poster.post("the-critic", "model", 6)
    wait_for(lambda: finished(stack, eternal + critic), 60, what="answered")
    assert "qwen-only" not in servers_of(stack, eternal)
    assert set(servers_of(stack, critic)) == {"qwen-only"}
    assert sim_stats(stack, "qwen-only")["per_model"].get(LLAMA, {}).get("requests", 0) == 0


def test_a_started_worker_receives_work_within_seconds(stack: LocalStack, poster: Poster) -> None:
    started = time.time()
    stack.start_worker("late", wait=False)
    stack.wait_online(["late"], timeout=10)
    # the-critic runs only on qwen-only and late: late takes a share as soon as it is up.
    ids = poster.post("the-critic", "late", 12)
    wait_for(lambda: finished(stack, ids), 60, what="answered")
    jobs = Ledger(stack.redis, stack.keys).get_many(ids)
    on_late = [job.dispatched_at or 0.0 for job in jobs if job.server_id == "late"]
    assert on_late, servers_of(stack, ids)
    assert min(on_late) - started <= 3.0  # the worker's own start, then its first job


def test_a_cleanly_stopped_worker_is_gone_at_once_and_gets_nothing(
    stack: LocalStack, poster: Poster
) -> None:
    stack.wait_online(["late"])
    stack.processes["worker-late"].stop()
    assert stack.redis.exists(stack.keys.server("late")) == 0
    assert not online(stack, "late")
    ids = poster.post("the-critic", "after-stop", 8)
    wait_for(lambda: finished(stack, ids), 60, what="answered")
    assert set(servers_of(stack, ids)) == {"qwen-only"}


def test_a_killed_worker_is_offline_within_its_ttl(stack: LocalStack) -> None:
    stack.start_worker("late")
    stack.processes["worker-late"].kill()
    killed = time.monotonic()
    wait_for(lambda: not online(stack, "late"), TTL_S + 5, what="late offline")
    assert time.monotonic() - killed <= TTL_S + 1.5


def test_a_first_model_load_is_not_a_failure(stack: LocalStack, poster: Poster) -> None:
    """With warm stopped and late gone, cold is the one server with the model: its 1 s load,
    past its connect timeout of 0.3 s, is waited out and the job answered at the first attempt."""
    loads_before = sim_stats(stack, "cold")["cold_loads"]
    stack.processes["worker-warm"].stop()
    try:
        ids = poster.post("the-eternal", "first-load")
        wait_for(lambda: finished(stack, ids), 30, what="answered")
        [job] = Ledger(stack.redis, stack.keys).get_many(ids)
        assert (job.outcome, job.server_id, job.attempt, job.attempts) == (
            "answered",
            "cold",
            1,
            [],
        )
        assert sim_stats(stack, "cold")["cold_loads"] == loads_before + 1
        assert stack.redis.hgetall(stack.keys.breaker("cold")) == {}
    finally:
        stack.start_worker("warm")


def test_two_bridges_never_exceed_any_servers_slots(stack: LocalStack, poster: Poster) -> None:
    ids = poster.post("the-eternal", "burst", 40) + poster.post("the-critic", "burst", 20)
    wait_for(lambda: finished(stack, ids), 120, what="the burst answered")
    bridges = Counter(job.bridge_id for job in Ledger(stack.redis, stack.keys).get_many(ids))
    assert set(bridges) == {"bridge", "bridge-2"}, bridges
    for spec in stack.specs:
        stats = sim_stats(stack, spec.name)
        assert stats["refused_full"] == 0, (spec.name, stats)
        assert stats["max_active"] <= spec.parallel, (spec.name, stats)
