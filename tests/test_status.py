"""`ollama-cloud status` against a running fleet: rows, totals, and the offline marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.domain.messages import BotParams, NewMessage
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, wait_quiet
from standins.waiting import wait_for

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:3b"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    servers = [
        SimServerSpec(name="alpha", models=[MODEL, "qwen2.5:7b"], loaded=[MODEL], parallel=3),
        SimServerSpec(name="beta", models=[MODEL], loaded=[MODEL], parallel=1),
    ]
    with LocalStack(servers, extra_env={"OLLAMA_CLOUD_HEARTBEAT_TTL_S": "2"}) as running:
        yield running


def run_status(stack: LocalStack, *args: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OLLAMA_CLOUD_")}
    env.update(OLLAMA_CLOUD_REDIS_URL=stack.redis_url, COLUMNS="200")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "status", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_json(stack: LocalStack) -> dict[str, Any]:
    return json.loads(run_status(stack, "--json"))


def test_status_shows_each_server_and_marks_a_killed_one_offline(stack: LocalStack) -> None:
    with stack.queue_client() as queue:
        for index in range(6):
            queue.post_comment(
                NewMessage(
                    id=f"status-{index}",
                    text=f"hello {index}",
                    username="ada",
                    botParams=BotParams(entity="the-eternal"),
                )
            )
    wait_quiet(stack, expected=6, timeout=60)

    report = status_json(stack)
    rows = {row["id"]: row for row in report["servers"]}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"]["online"] and rows["alpha"]["capacity"] == 3
    assert rows["beta"]["capacity"] == 1
    assert rows["alpha"]["loaded"] == [MODEL]
    assert report["totals"]["outcomes"]["answered"] == 6
    assert report["totals"]["online"] == 2

    text = run_status(stack)
    assert "ollama-cloud fleet" in text
    alpha_line = next(line for line in text.splitlines() if " alpha " in line)
    assert "●" in alpha_line and "0/3" in alpha_line and "s ago" in alpha_line
    assert "2/2 online" in text

    stack.processes["worker-beta"].kill()
    wait_for(
        lambda: not {r["id"]: r for r in status_json(stack)["servers"]}["beta"]["online"],
        timeout=15,
        what="beta offline after its heartbeat's TTL",
    )
    text = run_status(stack)
    beta_line = next(line for line in text.splitlines() if " beta " in line)
    assert "○" in beta_line and "OFFLINE" in beta_line
    assert "1/2 online" in text
