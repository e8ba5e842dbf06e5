"""End to end, with real processes: Redis, the local queue and simulated servers over HTTP,
`celery -A workers worker -Q <server>` per server, the control worker, beat and the bridge."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.entity_folder import load_entities
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.ledger import Ledger
from standins import SAMPLE_ENTITIES_DIR
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, wait_quiet
from standins.waiting import wait_for

pytestmark = pytest.mark.e2e

BOTH = ["llama3.2:3b", "qwen2.5:7b"]


@pytest.fixture(scope="module")
def entities_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("entities")
    for sample in SAMPLE_ENTITIES_DIR.glob("*.json"):
        shutil.copy(sample, folder / sample.name)
    eternal = json.loads((SAMPLE_ENTITIES_DIR / "the-eternal.json").read_text())
    (folder / "the-sleeper.json").write_text(
        json.dumps({**eternal, "id": "the-sleeper", "username": "Sleeper", "enabled": False})
    )
    return folder


@pytest.fixture(scope="module")
def stack(entities_dir: Path) -> Iterator[LocalStack]:
    servers = [
        SimServerSpec(name="fast", models=BOTH, loaded=BOTH, tokens_per_second=2000, parallel=4),
        SimServerSpec(name="medium", models=BOTH, loaded=["llama3.2:3b"], tokens_per_second=1000,
                      load_seconds=0.2, parallel=2),
        SimServerSpec(name="slow", models=["llama3.2:3b"], tokens_per_second=500, parallel=1),
    ]  # fmt: skip
    with LocalStack(servers, entities_dir=entities_dir) as running:
        yield running


def human(message_id: str, text: str, entity: str, **params: Any) -> NewMessage:
    return NewMessage(
        id=message_id,
        text=text,
        username="ada",
        color="080150227",
        context=["bo: hello", "ada: hi bo", "bo: how are you?"],
        botParams=BotParams(entity=entity, humanUsername="ada", humanColor="080150227", **params),
    )


def comments_by_id(queue: SiteQueueClient) -> dict[str, dict[str, Any]]:
    return {str(comment["id"]): comment for comment in queue.comments_after(0)}


def replies_to(comments: dict[str, dict[str, Any]]) -> Counter[str]:
    return Counter(
        str(comment.get("replyTo"))
        for comment in comments.values()
        if comment.get("message-type") == "AI"
    )


def test_fifty_messages_two_entities_three_servers_each_answered_once(
    stack: LocalStack, entities_dir: Path
) -> None:
    entities = load_entities(entities_dir)
    sent: dict[str, NewMessage] = {}
    with stack.queue_client() as queue:
        global_before = float(queue.stats().get("globalScore", 0))
        for index in range(50):
            entity = "the-eternal" if index % 2 else "the-critic"
            ais = "Oracle:111222033" if index % 10 == 3 else None
            message = human(f"fifty-{index}", f"question number {index}", entity, ais=ais)
            queue.post_comment(message)
            sent[str(message.id)] = message
        wait_for(
            lambda: all(
                comment.get("botParams", {}).get("status") == "complete"
                for message_id, comment in comments_by_id(queue).items()
                if message_id in sent
            ),
            timeout=120,
            what="all 50 messages completed",
        )
        wait_quiet(stack, expected=50, timeout=60)
        comments = comments_by_id(queue)
        stats = queue.stats()

    counts = replies_to(comments)
    assert {message_id: counts[message_id] for message_id in sent} == dict.fromkeys(sent, 1)
    replies = {str(c["replyTo"]): c for c in comments.values() if c.get("message-type") == "AI"}
    expected_eq_total = 0
    for message_id, message in sent.items():
        reply = replies[message_id]
        assert message.bot_params is not None
        entity = entities.get(str(message.bot_params.entity))
        assert entity is not None
        if message.bot_params.ais:
            assert (reply["username"], reply["color"]) == ("Oracle", "111222033")
        else:
            assert (reply["username"], reply["color"]) == (entity.username, entity.color)
        assert reply["text"].strip()
        assert reply["botParams"]["entity"] == entity.id
        assert reply["botParams"].get("status") != "pending"
        assert comments[message_id]["botParams"]["status"] == "complete"
        # The simulated scorer answers `Score: N`; N landed on the message exactly once.
        score = comments[message_id].get("eqScore", 0)
        assert 1 <= score <= 100
        expected_eq_total += score
    assert float(stats["globalScore"]) - global_before == expected_eq_total
    per_server = Counter(
        job.server_id
        for job in Ledger(stack.redis, stack.keys).get_many(list(sent))
        if job.outcome == "answered"
    )
    assert sum(per_server.values()) == 50
    # Routing sends work where it finishes soonest: the fastest server answers the most.
    assert per_server.most_common(1)[0][0] == "fast", per_server
    assert stack.processes.crashed() == []


def test_skip_unknown_and_disabled_entities_complete_without_reply(stack: LocalStack) -> None:
    cases = {
        "skip-1": human("skip-1", "sim-say: [SKIP] not this one", "the-eternal"),
        "unknown-1": human("unknown-1", "hello", "no-such-entity"),
        "disabled-1": human("disabled-1", "hello", "the-sleeper"),
    }
    with stack.queue_client() as queue:
        for message in cases.values():
            queue.post_comment(message)
        wait_for(
            lambda: all(
                comments_by_id(queue)[message_id]["botParams"]["status"] == "complete"
                for message_id in cases
            ),
            timeout=60,
            what="the three messages completed",
        )
        comments = comments_by_id(queue)
    ledger = Ledger(stack.redis, stack.keys)
    wait_for(
        lambda: all(job.state.finished for job in ledger.get_many(list(cases))),
        timeout=30,
        what="ledger finished",
    )
    counts = replies_to(comments)
    assert [counts[message_id] for message_id in cases] == [0, 0, 0]
    jobs = {job.id: job for job in ledger.get_many(list(cases))}
    assert jobs["skip-1"].outcome == "skipped"
    assert jobs["unknown-1"].outcome == "rejected"
    assert "unknown entity" in (jobs["unknown-1"].reason or "")
    assert "disabled" in (jobs["disabled-1"].reason or "")
    assert stack.processes.crashed() == []
