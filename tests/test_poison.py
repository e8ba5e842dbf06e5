"""Whatever sits in a server's queue or in `control`, the process that reads it stays up: the
item goes to the broker's dead-letter list with its reason, and the next real message is
answered once. Items are pushed raw into Redis, as anyone with write access to it could."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for
from tests.fleet_checks import assert_answered_once, post
from workers.contract.broker import DEAD_LETTERS
from workers.contract.protocol import CONTROL_QUEUE, DELIVER_TASK, GENERATE_TASK, SWEEP_TASK

pytestmark = pytest.mark.e2e

MODELS = ["llama3.2:3b", "qwen2.5:7b"]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    spec = SimServerSpec(name="mac-1", models=MODELS, loaded=MODELS, tokens_per_second=400)
    with LocalStack([spec]) as running:
        yield running


def envelope(task: str, args: list[Any], *, body: str | None = None, **changes: Any) -> str:
    """A Celery task message as kombu keeps it in a Redis list, changed as asked."""
    encoded = base64.b64encode(json.dumps([args, {}, {}]).encode()).decode()
    message: dict[str, Any] = {
        "body": encoded if body is None else body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": str(uuid.uuid4())},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": "x"},
            "priority": 0,
        },
    }
    message.update(changes)
    return json.dumps(message)


def poison_items(task: str) -> dict[str, str | bytes]:
    """One of each kind, named by what the dead letter's reason says."""
    good = json.loads(envelope(task, [{}]))
    no_properties = {key: value for key, value in good.items() if key != "properties"}
    not_json_body = base64.b64encode(b"[[], {}, {").decode()
    return {
        "not JSON": "this is not json {",
        "not JSON ": b"\xff\xfe\x00 binary",
        "not a message envelope": "[1, 2, 3]",
        "envelope without properties": json.dumps(no_properties),
        "not valid base64": envelope(task, [], body="%%% not base64 %%%"),
        "is not accepted": envelope(task, [], **{"content-type": "application/x-python-serialize"}),
        "unknown task": envelope("os.system", ["true"]),
        "argument": envelope(task, [{"job_id": 5}]),
        # Control's own sweep with arguments; in a server's queue, a task it does not run.
        "takes no arguments" if task == DELIVER_TASK else "unknown task ": envelope(
            SWEEP_TASK, [1, 2]
        ),
        "task body is not JSON": envelope(task, [], body=not_json_body),
        "over the": envelope(task, [], body="A" * (5 * 1024 * 1024)),
        "unknown body encoding": envelope(
            task, [], properties={"body_encoding": "rot13", "delivery_tag": "t"}
        ),
        "not a task message": envelope(task, [], headers={"lang": "py"}),
    }


def dead_letters(stack: LocalStack) -> list[dict[str, Any]]:
    key = stack.keys.broker_prefix + DEAD_LETTERS
    return [json.loads(entry) for entry in stack.redis.lrange(key, 0, -1)]


@pytest.mark.parametrize(
    ("queue", "task"), [("mac-1", GENERATE_TASK), (CONTROL_QUEUE, DELIVER_TASK)]
)
def test_a_poison_item_is_dead_lettered_and_the_consumer_goes_on(
    stack: LocalStack, queue: str, task: str
) -> None:
    assert stack.keys.broker_dead_letters == stack.keys.broker_prefix + DEAD_LETTERS
    stack.redis.delete(stack.keys.broker_dead_letters)
    items = poison_items(task)
    for item in items.values():
        stack.redis.lpush(stack.keys.broker_queue(queue), item)

    def all_dead_lettered() -> list[dict[str, Any]] | None:
        stack.check_alive()  # every process of the stack still runs
        letters = dead_letters(stack)
        return letters if len(letters) >= len(items) else None

    letters = wait_for(all_dead_lettered, 60, what=f"{len(items)} dead letters")
    assert {letter["queue"] for letter in letters} == {queue}
    reasons = [letter["reason"] for letter in letters]
    for kind in items:
        assert any(kind.strip() in reason for reason in reasons), (kind, reasons)
    for letter in letters:  # kept small: an excerpt and a hash, never the item itself
        assert len(letter["excerpt"]) <= 401 and len(letter["sha256"]) == 64
        assert "\n" not in letter["excerpt"]
    assert max(letter["bytes"] for letter in letters) > 5 * 1024 * 1024
    # Nothing of them was run, and the next real message is answered exactly once.
    assert_answered_once(stack, post(stack, 2))
    stack.check_alive()
