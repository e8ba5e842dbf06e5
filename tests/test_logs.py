"""Logs an operator can follow: one line per event with the message id, the attempt and the
server id, so that `grep <message id>` across every process tells a message's whole story, as
text or as one JSON object per line."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.messages import BotParams, NewMessage
from standins.processes import ManagedProcess, python_command
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, wait_quiet
from standins.waiting import wait_for
from workers.contract import logs

LLAMA = "llama3.2:3b"
QWEN = "qwen2.5:7b"
MESSAGES = 4
# A message's main events, in the order they happen, and the process that logs each.
STORY = [
    ("claim", "bridge"),
    ("route", "bridge"),
    ("dispatch", "bridge"),
    ("generate start", "worker"),
    ("generate done", "worker"),
    ("deliver", "control"),
]
TEXT_LINE = re.compile(
    r"(?P<ts>\S+Z) (?P<level>[A-Z]+) (?P<process>\S+) (?P<logger>\S+): (?P<msg>.*)"
)


def fleet() -> list[SimServerSpec]:
    """Two servers for the same model, one much faster: every route has a runner-up."""
    return [
        SimServerSpec(name="quick", models=[LLAMA, QWEN], loaded=[LLAMA, QWEN],
                      tokens_per_second=2000, parallel=2),
        SimServerSpec(name="steady", models=[LLAMA], loaded=[LLAMA], tokens_per_second=400,
                      parallel=1),
    ]  # fmt: skip


def message(message_id: str, index: int) -> NewMessage:
    return NewMessage(
        id=message_id,
        text=f"question number {index}",
        username="ada",
        color="080150227",
        context=["bo: hello", "ada: hi bo"],
        botParams=BotParams(
            entity="the-eternal" if index % 2 else "the-critic",
            humanUsername="ada",
            humanColor="080150227",
        ),
    )


def post_and_wait(stack: LocalStack, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{index}" for index in range(count)]
    with stack.queue_client() as queue:
        for index, message_id in enumerate(ids):
            queue.post_comment(message(message_id, index))
    wait_quiet(stack, expected=count, timeout=90)
    return ids


def log_file(stack: LocalStack, name: str) -> Path:
    return stack.work_dir / "logs" / f"{name}.log"


def text_lines(path: Path) -> list[dict[str, str]]:
    """Each line of a text log, split into its parts (lines of no record, such as Celery's
    banner, are left out)."""
    parsed = []
    for line in path.read_text(errors="replace").splitlines():
        match = TEXT_LINE.fullmatch(line)
        if match:
            parsed.append(match.groupdict())
    return parsed


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def text_stack() -> Iterator[LocalStack]:
    with LocalStack(fleet()) as running:
        yield running


@pytest.fixture(scope="module")
def json_stack() -> Iterator[LocalStack]:
    with LocalStack(fleet(), extra_env={"OLLAMA_CLOUD_LOG_FORMAT": "json"}) as running:
        yield running


# The formats, on records as any process makes them ---------------------------------------------


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    logs.install()
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.getLogRecordFactory()(
        "orchestrator.bridge.placement", logging.INFO, __file__, 1, message, args, exc_info
    )


def test_fields_are_read_from_the_head_of_a_line_only() -> None:
    line = "route job=m-1 attempt=2 server=mac-2 finish=0.80s runner_up=mac-1 reason=soonest"
    assert logs.fields(line) == {
        "event": "route",
        "job": "m-1",
        "attempt": 2,
        "server": "mac-2",
        "finish": "0.80s",
        "runner_up": "mac-1",
        "reason": "soonest",
    }
    # What follows a `:` or a word is text from outside: it neither adds nor changes a field.
    failed = "generate failed job=7 attempt=1 server=a error=timeout: job=evil server=b x=1"
    assert logs.fields(failed) == {
        "event": "generate failed",
        "job": "7",
        "attempt": 1,
        "server": "a",
        "error": "timeout",
    }
    assert logs.fields("job=x server=a stale result dropped attempt=9") == {
        "job": "x",
        "server": "a",
    }
    assert logs.fields("bridge b-1 starting: queue=http://q") == {}


def test_a_json_line_is_one_object_whatever_the_message_holds() -> None:
    forged = "ok\n2026-01-01T00:00:00.000Z INFO bridge x: deliver job=forged\u2028\x00"
    try:
        raise ValueError("boom\nline two")
    except ValueError as exc:
        entry = record(
            "dispatch job=%s attempt=%d server=%s: %s", "m-9", 1, "mac-1", forged, exc=exc
        )
    line = logs.JsonFormatter("bridge").format(entry)
    assert "\n" not in line and "\u2028" not in line and "\x00" not in line
    parsed = json.loads(line)
    assert parsed["job"] == "m-9" and parsed["attempt"] == 1 and parsed["server"] == "mac-1"
    assert parsed["event"] == "dispatch" and parsed["process"] == "bridge"
    assert parsed["level"] == "info" and parsed["logger"] == "orchestrator.bridge.placement"
    assert parsed["ts"].endswith("Z") and timestamp(parsed["ts"]).tzinfo is not None
    assert "boom\\nline two" in parsed["msg"] and "deliver job=forged" in parsed["msg"]
    text = logs.TextFormatter("bridge").format(entry)
    assert "\n" not in text
    match = TEXT_LINE.fullmatch(text)
    assert match is not None and match["process"] == "bridge"
    assert match["msg"].startswith("dispatch job=m-9 attempt=1 server=mac-1: ok\\n")


# A message's story, followed through the processes' own log files ------------------------------


@pytest.mark.e2e
def test_one_message_is_followed_through_every_process_by_its_id(text_stack: LocalStack) -> None:
    ids = post_and_wait(text_stack, "story", MESSAGES)
    message_id = ids[1]
    mine = re.compile(rf"\bjob={re.escape(message_id)}( |$)")
    grepped: list[dict[str, str]] = []  # what `grep <message id>` finds: its score's lines too
    for path in sorted((text_stack.work_dir / "logs").glob("*.log")):
        grepped += [line for line in text_lines(path) if message_id in line["msg"]]
    story = [line for line in grepped if mine.search(line["msg"])]
    story.sort(key=lambda line: timestamp(line["ts"]))
    events = [(logs.fields(line["msg"]).get("event"), line) for line in story]
    told = [(event, line["process"]) for event, line in events if event is not None]
    # Each event once, in the order of time, from the process that does it.
    assert [entry for entry in told if entry in STORY] == STORY, story
    by_event = {event: logs.fields(line["msg"]) for event, line in events}
    route = by_event["route"]
    server = route["server"]
    assert {route["runner_up"], server} == {"quick", "steady"}
    assert route["reason"] in {"soonest", "free_slot", "region", "priority", "fewer_busy", "random"}
    finish = float(str(route["finish"]).removesuffix("s"))
    runner_up_finish = float(str(route["runner_up_finish"]).removesuffix("s"))
    assert finish > 0 and runner_up_finish > 0
    if route["reason"] == "soonest":
        assert finish < runner_up_finish
    for event, _ in STORY[1:]:
        assert by_event[event]["attempt"] == 1, (event, by_event[event])
        assert by_event[event]["server"] == server, (event, by_event[event])
    done = by_event["generate done"]
    assert int(done["tokens"]) > 0 and float(done["tokens_per_s"]) > 0 and "ms" in done
    assert by_event["deliver"]["outcome"] == "answered"
    # The worker's lines are in the log of the server the route chose.
    worker_lines = text_lines(log_file(text_stack, f"worker-{server}"))
    assert any(mine.search(line["msg"]) for line in worker_lines)
    # Its score is a job of its own, found by the same grep.
    scored = [line["msg"] for line in grepped if line["msg"].startswith(f"score job={message_id}#")]
    assert len(scored) == 1 and "outcome=scored" in scored[0]


@pytest.mark.e2e
def test_every_process_writes_the_same_line_shape(text_stack: LocalStack) -> None:
    for name, process in [("bridge", "bridge"), ("control", "control"), ("beat", "beat"),
                          ("worker-quick", "worker")]:  # fmt: skip
        lines = text_lines(log_file(text_stack, name))
        assert lines, name
        assert {line["process"] for line in lines} == {process}, name


@pytest.mark.e2e
def test_the_bridge_takes_log_format_json_from_its_command_line(text_stack: LocalStack) -> None:
    path = text_stack.work_dir / "logs" / "bridge-json.log"
    argv = python_command("-m", "orchestrator", "bridge", "--log-format", "json")
    bridge = text_stack.processes.add(
        ManagedProcess("bridge-json", argv, text_stack.env(BRIDGE_ID="bridge-json"), path)
    )

    def started() -> bool:
        text_stack.check_alive()
        return "starting" in path.read_text(errors="replace")

    wait_for(started, 30, what="the second bridge started")
    bridge.stop()
    objects = [json.loads(line) for line in path.read_text().splitlines()]
    assert objects and all(entry["process"] == "bridge" for entry in objects)


# JSON: every line an object, every event with its ids ------------------------------------------


def json_objects(path: Path) -> list[dict[str, Any]]:
    objects = []
    for line in path.read_text(errors="replace").splitlines():
        objects.append(json.loads(line))  # fails the test on any line that is not an object
    return objects


@pytest.mark.e2e
def test_with_log_format_json_every_line_is_an_object_with_its_fields(
    json_stack: LocalStack,
) -> None:
    ids = post_and_wait(json_stack, "json", 3)
    # Read while every process runs: Celery prints its shutdown notice, not as a log record.
    found: dict[str, list[dict[str, Any]]] = {}
    processes = set()
    for name in ("bridge", "control", "beat", "worker-quick", "worker-steady"):
        for entry in json_objects(log_file(json_stack, name)):
            assert {"ts", "level", "logger", "process", "msg"} <= entry.keys(), entry
            timestamp(entry["ts"])
            processes.add(entry["process"])
            if entry.get("event") is not None:
                found.setdefault(entry["event"], []).append(entry)
    assert processes == {"bridge", "control", "beat", "worker"}
    for event, process in STORY:
        entries = found.get(event, [])
        assert {entry["job"] for entry in entries} >= set(ids), event
        for entry in entries:
            assert entry["process"] == process, entry
            if event != "claim":
                assert isinstance(entry["attempt"], int) and entry["attempt"] >= 1, entry
                assert entry["server"] in {"quick", "steady"}, entry
    for entry in found["route"]:
        assert {"finish", "runner_up", "reason"} <= entry.keys(), entry
    assert {entry["job"] for entry in found["score"]} == {f"{job}#eq" for job in ids}
