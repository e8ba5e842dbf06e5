"""End to end on llama.cpp, as the site's operator runs it: workers on single llama-servers, on
a map of one llama-server per model, and on the operator's pool manager with its hazards on;
real processes throughout (Redis, the local queue, simulated servers, workers, control, beat,
the bridge)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.domain.job import Job
from orchestrator.ops.status import read_status
from standins.llamacpp import model_key, write_entities
from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for
from tests.fleet_checks import assert_answered_once, comments, post, sim_stats, wait_finished

pytestmark = pytest.mark.e2e

ETERNAL, CRITIC, SCORER = (model_key(name) for name in ("the-eternal", "the-critic", "eq-score"))
EXTRA = [f"guest-{index}" for index in range(3)]  # more models than the pool holds at once


@pytest.fixture(scope="module")
def entities_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_entities(tmp_path_factory.mktemp("entities"))
    eternal = json.loads((folder / "the-eternal.json").read_text())
    for name in EXTRA:
        fields = {**eternal, "id": name, "username": name.title(), "baseModel": name}
        (folder / f"{name}.json").write_text(json.dumps(fields))
    return folder


def llama(name: str, model: str, **fields: Any) -> SimServerSpec:
    return SimServerSpec(name=name, kind="llamacpp", models=[model], **fields)


def test_workers_on_single_llama_servers_answer_each_message_once(entities_dir: Path) -> None:
    specs = [
        llama("eternal", ETERNAL, tokens_per_second=400, parallel=2),
        llama("critic", CRITIC, tokens_per_second=300, load_seconds=0.5),
        llama("scorer", SCORER, tokens_per_second=800, parallel=4),
    ]
    with LocalStack(specs, entities_dir=entities_dir) as stack:
        record = {server.id: server for server in stack.fleet()}
        # What each llama-server says of itself reaches the registry: its slots and context.
        assert record["eternal"].backend == "openai"
        assert record["eternal"].capacity == 2
        assert record["scorer"].model_slots == {f"{SCORER}:latest": 4}
        rows = {row.id: row for row in read_status(stack.state).servers}
        assert (rows["critic"].backend, rows["critic"].model_slots) == (
            "openai", {f"{CRITIC}:latest": 1}
        )  # fmt: skip
        ids = post(stack, 12)
        finished = assert_answered_once(stack, ids, timeout=90)
        assert {job.server_id for job in finished.values()} == {"eternal", "critic"}


def test_a_worker_on_a_map_of_model_servers_answers_for_all_of_them(entities_dir: Path) -> None:
    specs = [
        llama("eternal", ETERNAL, tokens_per_second=400),
        llama("critic", CRITIC, tokens_per_second=400),
        llama("scorer", SCORER, tokens_per_second=800, parallel=4),
    ]
    stack = LocalStack(specs, entities_dir=entities_dir)
    model_map = ",".join(f"{spec.models[0]}={stack.sim_url(spec.name)}" for spec in stack.specs)
    # The first server's worker serves the map of all three; the other two workers go.
    stack.worker_env = {"eternal": {"OLLAMA_CLOUD_BACKEND": "models",
                                    "OLLAMA_CLOUD_MODEL_MAP": model_map,
                                    "OLLAMA_CLOUD_CAPACITY": "6",
                                    "OLLAMA_CLOUD_CONCURRENCY": "6"}}  # fmt: skip
    with stack:
        for name in ("critic", "scorer"):
            stack.processes[f"worker-{name}"].stop()
        wait_for(
            lambda: [server.id for server in stack.fleet() if server.online] == ["eternal"],
            30,
            what="only the map's worker online",
        )
        mapped = next(server for server in stack.fleet() if server.id == "eternal")
        assert mapped.backend == "models"
        assert mapped.model_slots == {
            f"{ETERNAL}:latest": 1, f"{CRITIC}:latest": 1, f"{SCORER}:latest": 4
        }  # fmt: skip
        ids = post(stack, 10)
        assert_answered_once(stack, ids, timeout=90)
        assert sim_stats(stack, "critic")["completed"] >= 5
        assert sim_stats(stack, "scorer")["completed"] == 10


@pytest.fixture(scope="module")
def pool_stack(entities_dir: Path) -> Iterator[LocalStack]:
    """A pool manager that runs three model servers at once over six models, hazards on."""
    models = [ETERNAL, CRITIC, SCORER, *(model_key(name) for name in EXTRA)]
    spec = SimServerSpec(
        name="studio", kind="pool", models=models, max_servers=3, tokens_per_second=200,
        load_seconds=0.5, slots={SCORER: 4}, hazards=True,
    )  # fmt: skip
    with LocalStack([spec], entities_dir=entities_dir) as stack:
        yield stack


def pool_stats(stack: LocalStack) -> dict[str, Any]:
    return sim_stats(stack, "studio")


def test_many_jobs_for_one_cold_model_start_one_server(pool_stack: LocalStack) -> None:
    guest = model_key(EXTRA[0])
    assert pool_stats(pool_stack)["servers_started_per_model"].get(guest, 0) == 0
    ids = post(pool_stack, 8, entity=EXTRA[0])
    assert_answered_once(pool_stack, ids, timeout=90)
    stats = pool_stats(pool_stack)
    assert stats["servers_started_per_model"][guest] == 1, stats
    assert stats["leaked_servers"] == 0


def test_more_models_than_the_pool_holds_are_all_answered(pool_stack: LocalStack) -> None:
    entities = ["the-eternal", "the-critic", *EXTRA]
    ids = [message for entity in entities for message in post(pool_stack, 6, entity=entity)]
    # Every reply from the model its entity names, no model server sent more than its
    # slots (checked by assert_answered_once), and evictions on the way.
    assert_answered_once(pool_stack, ids, timeout=180)
    stats = pool_stats(pool_stack)
    assert stats["evictions"] > 0, stats
    assert stats["mismatched"] == 0


def test_an_eviction_in_the_middle_of_a_reply_loses_nothing(pool_stack: LocalStack) -> None:
    # A long reply (the simulator writes what a message asks it to say), cut by an eviction
    # forced while it streams: the job is tried again and answered once.
    long_reply = "sim-say: " + " ".join(["word"] * 400)
    before = pool_stats(pool_stack)["forced_evictions"]
    ids = post(pool_stack, 1, entity="the-critic", text=long_reply)

    def streaming() -> bool:
        status = httpx.get(f"{pool_stack.sim_url('studio')}/status").json()
        busy = [
            entry
            for entry in status["servers"]
            if entry["model"] == CRITIC and entry.get("status") == "ready"
        ]
        if not busy:
            return False
        slots = httpx.get(f"http://127.0.0.1:{busy[0]['port']}/slots").json()
        return any(slot.get("is_processing") for slot in slots)

    wait_for(streaming, 60, interval=0.02, what="the reply streaming")
    evicted = httpx.post(f"{pool_stack.sim_url('studio')}/sim/evict", params={"model": CRITIC})
    assert evicted.status_code == 200, evicted.text
    # Its score is 0 (the scorer is told to say the words too), so only the reply is checked.
    job: Job = wait_finished(pool_stack, ids, timeout=120)[ids[0]]
    assert job.outcome == "answered"
    replies = [c for c in comments(pool_stack).values() if c.get("replyTo") == ids[0]]
    assert len(replies) == 1
    assert [attempt.error_kind for attempt in job.failures] == ["unavailable"], job.history()
    assert pool_stats(pool_stack)["forced_evictions"] == before + 1
