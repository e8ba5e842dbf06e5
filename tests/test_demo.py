"""`ollama-cloud demo` as a person runs it: it answers, reports, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from standins.waiting import wait_for

pytestmark = pytest.mark.e2e


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "demo", *args]


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("backend", ["ollama", "llamacpp"])
def test_demo_with_messages_reports_each_answered_once(backend: str) -> None:
    result = subprocess.run(
        demo_command("--messages", "12", "--backend", backend),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "answered exactly once: 12/12; more than once: 0; no reply: 0" in result.stdout
    assert re.search(r"per server: .*mac-studio \d+", result.stdout)


def test_demo_stops_on_ctrl_c_leaving_no_process_or_file(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # A group of its own, so Ctrl-C can be sent as a terminal sends it: to the whole group.
    demo = subprocess.Popen(
        demo_command(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        wait_for(
            lambda: lines.append(demo.stdout.readline()) or "up in" in lines[-1],  # type: ignore[union-attr]
            timeout=120,
            what="the demo to be up",
        )
        started = children_of(demo.pid)
        assert len(started) >= 9  # redis, queue, simulators, 3 workers, control, beat, bridge
        os.killpg(demo.pid, signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, output
    assert "stopped: every process ended" in output
    # Each part stopped when asked: none waited out its allowance to be killed (as the bridge
    # and beat did when Redis, in the terminal's group, went first).
    assert "did not stop" not in output
    assert [pid for pid in started if alive(pid)] == []
    assert list(tmp_path.iterdir()) == []
