"""Chaos in small (bench/chaos.py at full size): 150 messages through four servers while a
worker and the bridge and the control worker are SIGKILLed, a simulator is stopped, and Redis
is restarted, each once and started again. Every message ends in exactly one reply or a
recorded reason, the site's EQ total gets each score once, no server is sent more than its
slots, and no process of the stack exits by itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.chaos import chaos_fleet, one_of_each, run_chaos

pytestmark = pytest.mark.e2e

SEED = 3
# Recovery timers short enough for a test: a result the killed control worker held is
# delivered again after 3 s, a claim the killed bridge never wrote down is taken back after 2 s,
# a task it never sent is dispatched again after 5 s.
FAST_RECOVERY = {
    "OLLAMA_CLOUD_DELIVERY_STALL_S": "3",
    "OLLAMA_CLOUD_START_LOST_AFTER_S": "5",
    "OLLAMA_CLOUD_RECOVER_INTERVAL_S": "1",
    "OLLAMA_CLOUD_RECOVER_AFTER_S": "2",
}


def test_chaos_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    work_dir = tmp_path / "stack"  # the processes' logs: kept only when the test fails
    fleet = chaos_fleet()
    schedule = one_of_each(SEED, [spec.name for spec in fleet])
    lines: list[str] = []
    report = run_chaos(
        150,
        SEED,
        schedule=schedule,
        whole_schedule=True,
        rate=15,
        servers=fleet,
        extra_env=FAST_RECOVERY,
        stall_timeout_s=40,
        work_dir=work_dir,
        say=lines.append,
    )
    summary = f"{report}\nlogs in {work_dir / 'logs'}\n" + "\n".join(lines)
    assert report["events"] == dict.fromkeys(
        ("kill_worker", "stop_sim", "kill_bridge", "kill_control", "restart_redis"), 1
    ), summary
    assert report["unfinished"] == 0, summary
    assert report["lost"] == 0, summary
    assert report["replies"] + report["dead_letters"] >= report["messages"], summary
    assert report["duplicate_replies"] == 0, summary
    assert report["double_eq"] == 0, summary
    assert report["eq_excess"] == 0, summary
    assert report["over_capacity"] == 0, summary
    assert report["unexplained_dead_letters"] == 0, summary
    assert report["crashes"] == 0, summary
    assert report["unscored_silently"] == 0, summary
    shutil.rmtree(work_dir, ignore_errors=True)
