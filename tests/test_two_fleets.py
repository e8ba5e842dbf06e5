"""Two complete fleets under two key prefixes on one Redis: each answers its own site's
messages, exactly once, and never takes the other's work (Celery's queues included)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from orchestrator.domain.job import Outcome
from orchestrator.domain.messages import BotParams, NewMessage
from standins.embedded_redis import EmbeddedRedis
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, wait_quiet
from standins.waiting import wait_for

pytestmark = pytest.mark.e2e

MESSAGES = 20
MODEL = "llama3.2:3b"


def fleet() -> list[SimServerSpec]:
    """The same server id in both fleets: only the prefix keeps their queues apart."""
    return [SimServerSpec(name="mac-1", models=[MODEL], loaded=[MODEL], tokens_per_second=2000,
                          parallel=2)]  # fmt: skip


@pytest.fixture
def fleets() -> Iterator[tuple[LocalStack, LocalStack]]:
    with (
        EmbeddedRedis() as shared,
        LocalStack(fleet(), key_prefix="fleet-a", shared_redis=shared) as first,
        LocalStack(fleet(), key_prefix="fleet-b", shared_redis=shared) as second,
    ):
        yield first, second


def post(stack: LocalStack, prefix: str) -> list[str]:
    ids = []
    with stack.queue_client() as queue:
        for index in range(MESSAGES):
            message = NewMessage(
                id=f"{prefix}-{index}",
                text=f"question {index}",
                username="ada",
                botParams=BotParams(entity="the-eternal", humanUsername="ada"),
            )
            queue.post_comment(message)
            ids.append(str(message.id))
    return ids


def replies(stack: LocalStack) -> Counter[str]:
    with stack.queue_client() as queue:
        return Counter(
            str(comment.get("replyTo"))
            for comment in queue.comments_after(0)
            if comment.get("message-type") == "AI"
        )


def test_two_fleets_on_one_redis_each_answer_their_own_messages_once(
    fleets: tuple[LocalStack, LocalStack],
) -> None:
    first, second = fleets
    assert first.redis_url == second.redis_url
    sent = {first: post(first, "a"), second: post(second, "b")}
    for stack in fleets:
        wait_quiet(stack, expected=MESSAGES, timeout=120)
    for stack, ids in sent.items():
        other = second if stack is first else first
        wait_for(lambda s=stack: sum(replies(s).values()) >= MESSAGES, 30, what="replies")
        assert replies(stack) == Counter(dict.fromkeys(ids, 1))
        jobs = stack.ledger.get_many(ids)
        assert [job.outcome for job in jobs] == [Outcome.ANSWERED] * MESSAGES
        assert {job.server_id for job in jobs} == {"mac-1"}
        # The other fleet's ledger never saw them.
        assert other.ledger.get_many(ids) == []
    # Each fleet's Celery keys sit under its own prefix; none is left unprefixed.
    keys = set(first.redis.scan_iter(count=1000))
    for stack in fleets:
        assert any(key.startswith(stack.keys.broker_prefix) for key in keys)
    assert all(key.startswith(("fleet-a:", "fleet-b:")) for key in keys), sorted(
        key for key in keys if not key.startswith(("fleet-a:", "fleet-b:"))
    )
