"""What the site sends, at its worst, against real processes: ids that cannot be kept (a lone
surrogate, a newline, a NUL, too long), and a message of 50 MB. Each is completed on the site
with a recorded reason, no log line is split or forged, the bridge stays small, nothing over a
cap reaches Redis, and recovery still takes back a lost claim listed after them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.domain.messages import MAX_ID_LENGTH, BotParams, NewMessage
from orchestrator.state.ledger import Ledger
from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for
from tests.fleet_checks import assert_answered_once, post
from tests.test_hostile import insert_rows

pytestmark = pytest.mark.e2e

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
FORGED = "job=forged server=evil attempt=1 generate dispatched"
BAD_IDS = {
    "lone surrogate": "h-surr-\udc00",
    "newline": f"h-nl\n{FORGED}",
    "NUL": "h-nul\x00x",
    "too long": "L" * 300,
}
BIG_BYTES = 50 * 1024 * 1024
RSS_LIMIT_KB = 150 * 1024


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    spec = SimServerSpec(name="mac-1", models=MODELS, loaded=MODELS, tokens_per_second=400)
    env = {"OLLAMA_CLOUD_RECOVER_INTERVAL_S": "1", "OLLAMA_CLOUD_RECOVER_AFTER_S": "1"}
    with LocalStack([spec], extra_env=env) as running:
        yield running


def post_raw(stack: LocalStack, message_id: str, **fields: Any) -> None:
    """A message as any poster may send it, its id whatever it is (escaped as JSON does). An
    id longer than the local queue takes (the site takes any) is written in its store."""
    message = NewMessage(
        text=fields.pop("text", "hello"),
        username="ada",
        botParams=BotParams(entity="the-eternal", humanUsername="ada"),
    ).wire()
    row = {**message, "id": message_id, **fields}
    if len(message_id) > MAX_ID_LENGTH:
        row["botParams"] = {**row["botParams"], "status": "pending"}
        insert_rows(stack.work_dir / "queue.sqlite3", [row])
        return
    answer = httpx.post(f"{stack.queue_url}/api/comments", content=json.dumps(row), timeout=120)
    assert answer.json()["status"] == "success", answer.text


def site_status(stack: LocalStack, message_id: str) -> str | None:
    with stack.queue_client() as queue:
        for message in queue.iter_comments_after(0):
            if message.get("id") == message_id:
                return str(message["botParams"]["status"])
    return None


def replies_to(stack: LocalStack, message_id: str) -> int:
    with stack.queue_client() as queue:
        return sum(
            1 for message in queue.iter_comments_after(0) if message.get("replyTo") == message_id
        )


def orphan(stack: LocalStack) -> str:
    """A claim the bridge made and never wrote (killed as its answer came): lost to all but
    recovery. The bridge is left stopped."""
    httpx.post(f"{stack.queue_url}/local/faults", json={"claim_delay_s": 30, "claims": 1})
    [message_id] = post(stack, 1, entity="the-eternal")
    wait_for(lambda: site_status(stack, message_id) == "processing", 20, what="the claim")
    stack.processes["bridge"].kill()
    httpx.post(f"{stack.queue_url}/local/faults", json={}).raise_for_status()
    assert Ledger(stack.redis, stack.keys).get(message_id) is None
    return message_id


def claim_as_the_bridge(stack: LocalStack, message_id: str) -> None:
    body = json.dumps({"messageId": message_id, "workerId": "bridge"}).encode()
    answer = httpx.post(f"{stack.queue_url}/api/queue/claim", content=body, timeout=120)
    assert answer.status_code == 200, answer.text[:300]


def log_lines(stack: LocalStack) -> list[bytes]:
    return [
        line for path in Path(stack.work_dir, "logs").glob("*.log")
        for line in path.read_bytes().splitlines()
    ]  # fmt: skip


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def refused_reasons(stack: LocalStack) -> list[str]:
    _, entries = Ledger(stack.redis, stack.keys).refused(100)
    return [entry["reason"] for entry in entries]


def test_ids_that_cannot_be_kept_are_completed_with_a_reason_and_never_stop_recovery(
    stack: LocalStack,
) -> None:
    # Through the bridge: each is claimed, refused with its reason and completed on the site.
    for bad in BAD_IDS.values():
        post_raw(stack, f"{bad}-a")
    for kind, bad in BAD_IDS.items():
        wait_for(lambda: site_status(stack, f"{bad}-a") == "complete", 30, what=kind)  # noqa: B023
    reasons = refused_reasons(stack)
    for needle in ("lone surrogate", "control character (U+000A)", "(U+0000)", "over 200"):
        assert any(needle in reason for reason in reasons), (needle, reasons)
    # Through recovery: a lost claim listed after such messages, claimed by the same bridge
    # (the site lists the newest first), is taken back and answered once.
    lost = orphan(stack)
    for bad in BAD_IDS.values():
        post_raw(stack, f"{bad}-b")
        claim_as_the_bridge(stack, f"{bad}-b")
    stack.start_bridge()
    assert_answered_once(stack, [lost])
    for kind, bad in BAD_IDS.items():
        wait_for(lambda: site_status(stack, f"{bad}-b") == "complete", 30, what=kind)  # noqa: B023
        assert replies_to(stack, f"{bad}-a") == replies_to(stack, f"{bad}-b") == 0
    # One event is one line: the forged line is inside the escaped id, NUL bytes nowhere.
    lines = log_lines(stack)
    forged = [line for line in lines if FORGED.encode() in line]
    assert forged and all(b"h-nl\\n" + FORGED.encode() in line for line in forged)
    assert not any(b"\x00" in line for line in lines)
    stack.check_alive()


def test_a_50_mb_message_is_refused_with_a_reason_and_the_bridge_stays_small(
    stack: LocalStack,
) -> None:
    post_raw(stack, "huge-text", text="w" * BIG_BYTES)
    wait_for(lambda: site_status(stack, "huge-text") == "complete", 60, what="huge-text done")
    job = Ledger(stack.redis, stack.keys).get("huge-text")
    assert job is not None and job.reason and "too large" in job.reason
    assert "over the 2097152-byte cap" in job.reason
    # The same message in the site's list (50 MB of it) while recovery reads that list for a
    # lost claim: the list is streamed, the big one skipped by its size, the lost one found.
    lost = orphan(stack)
    stack.start_bridge()
    assert_answered_once(stack, [lost])
    assert replies_to(stack, "huge-text") == 0
    for name in ("bridge", "control"):
        pid = stack.processes[name].pid
        assert pid is not None and peak_rss_kb(pid) < RSS_LIMIT_KB, name
    # Nothing near the cap reached Redis.
    largest = max(stack.redis.memory_usage(key) or 0 for key in stack.redis.scan_iter(count=1000))
    assert largest < 2 * 1024 * 1024, largest
    stack.check_alive()
