"""The operator's world, end to end with real processes: their entity files as they are (model
`<baseModel>-<quant>`, served by a server that lists it as `...:latest`), a file added while the
system runs, and the scorer on a server of its own: every message scored once from there, and
when that server goes, replies go on and the scores that cannot be had are recorded, visible
in `ollama-cloud jobs`, never applied twice nor silently lost."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.domain.job import JobKind, Outcome, score_job_id
from orchestrator.domain.messages import BotParams, NewMessage
from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for
from workers.contract.job import JobState

pytestmark = pytest.mark.e2e

OPERATOR_ENTITIES = Path(__file__).parent / "operator_entities"
REPLY_MODEL = "the-eternal-f16:latest"  # the entity names `the-eternal-f16`
SCORER_MODEL = "eq-score-f16:latest"
PATCH_LINE = re.compile(r"message=(\S+) eqScore ")


@pytest.fixture(scope="module")
def entities_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("operator-entities")
    for name in ("the-eternal.json", "eq-score.json", "global.json"):
        shutil.copy(OPERATOR_ENTITIES / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def stack(entities_dir: Path) -> Iterator[LocalStack]:
    servers = [
        SimServerSpec(name="fast-1", models=[REPLY_MODEL], loaded=[REPLY_MODEL],
                      tokens_per_second=3000, parallel=3),
        SimServerSpec(name="fast-2", models=[REPLY_MODEL], loaded=[REPLY_MODEL],
                      tokens_per_second=3000, parallel=3),
        # The scorer's model lives here only, on a server that is not the fastest.
        SimServerSpec(name="scorer", models=[SCORER_MODEL], loaded=[SCORER_MODEL],
                      tokens_per_second=800, parallel=10),
    ]  # fmt: skip
    with LocalStack(servers, entities_dir=entities_dir) as running:
        yield running


def post(stack: LocalStack, prefix: str, count: int, entity: str = "the-eternal") -> list[str]:
    ids = []
    with stack.queue_client() as queue:
        for index in range(count):
            message = NewMessage(
                id=f"{prefix}-{index}",
                text=f"I keep thinking about question {index}",
                username="ada",
                context=["ada: hello", "TheEternal: hello, ada"],
                botParams=BotParams(entity=entity, humanUsername="ada"),
            )
            queue.post_comment(message)
            ids.append(str(message.id))
    return ids


def finished(stack: LocalStack, job_ids: list[str]) -> bool:
    stack.check_alive()
    jobs = stack.ledger.get_many(job_ids)
    return len(jobs) == len(job_ids) and all(job.state.finished for job in jobs)


def site(stack: LocalStack) -> tuple[dict[str, dict[str, Any]], Counter[str], float]:
    """The site's messages by id, the replies to each, and the global score."""
    with stack.queue_client() as queue:
        comments = queue.comments_after(0)
        global_score = float(queue.stats()["globalScore"])
    replies = Counter(
        str(c["replyTo"]) for c in comments if c.get("message-type") == "AI" and c.get("replyTo")
    )
    return {str(c["id"]): c for c in comments}, replies, global_score


def patches(stack: LocalStack) -> Counter[str]:
    """How many times each message's eqScore was PATCHed (the local queue logs each)."""
    text = (stack.work_dir / "logs" / "queue.log").read_text(errors="replace")
    return Counter(PATCH_LINE.findall(text))


def test_an_entity_file_added_while_running_is_answered_by_its_servers_latest(
    stack: LocalStack, entities_dir: Path
) -> None:
    newcomer = json.loads((OPERATOR_ENTITIES / "the-eternal.json").read_text())
    newcomer.update(id="the-newcomer", username="Newcomer", systemPrompt="Welcome them.")
    (entities_dir / "the-newcomer.json").write_text(json.dumps(newcomer))
    [message_id] = post(stack, "newcomer", 1, entity="the-newcomer")
    wait_for(lambda: finished(stack, [message_id]), 60, what="the newcomer's reply")
    job = stack.ledger.get(message_id)
    assert job is not None
    assert (job.outcome, job.entity, job.model) == (
        Outcome.ANSWERED,
        "the-newcomer",
        REPLY_MODEL,  # `the-eternal-f16`, matched as Ollama names it
    ), job.reason
    assert job.server_id in {"fast-1", "fast-2"}
    comments, replies, _ = site(stack)
    assert replies[message_id] == 1
    [reply] = [c for c in comments.values() if c.get("replyTo") == message_id]
    assert reply["username"] == "Newcomer"


def test_every_message_is_scored_once_by_the_scorers_own_server_and_none_is_lost(
    stack: LocalStack,
) -> None:
    _, _, global_before = site(stack)
    ids = post(stack, "scored", 50)
    score_ids = [score_job_id(message_id) for message_id in ids]
    wait_for(lambda: finished(stack, ids + score_ids), 120, what="50 replies and their scores")
    comments, replies, global_after = site(stack)
    assert {message_id: replies[message_id] for message_id in ids} == dict.fromkeys(ids, 1)
    scores = {job.message_id: job for job in stack.ledger.get_many(score_ids)}
    for message_id in ids:
        job = scores[message_id]
        assert (job.kind, job.outcome, job.server_id) == (JobKind.SCORE, Outcome.SCORED, "scorer")
        assert job.score is not None and job.score > 0
        assert comments[message_id]["eqScore"] == job.score
    patched = patches(stack)
    assert {message_id: patched[message_id] for message_id in ids} == dict.fromkeys(ids, 1)
    assert global_after - global_before == sum(job.score or 0 for job in scores.values())
    replied_by = Counter(job.server_id for job in stack.ledger.get_many(ids))
    assert set(replied_by) <= {"fast-1", "fast-2"}

    # The scorer's server goes: replies go on; the scores are lost with their reason.
    stack.processes["worker-scorer"].stop()
    wait_for(
        lambda: not any(s.online for s in stack.fleet() if s.id == "scorer"), 30, what="offline"
    )
    later = post(stack, "unscored", 10)
    later_scores = [score_job_id(message_id) for message_id in later]
    wait_for(lambda: finished(stack, later + later_scores), 60, what="replies, scores lost")
    comments, replies, global_final = site(stack)
    assert {message_id: replies[message_id] for message_id in later} == dict.fromkeys(later, 1)
    for job in stack.ledger.get_many(later_scores):
        assert (job.state, job.outcome) == (JobState.DEAD, Outcome.SCORE_LOST)
        assert "eq-score-f16" in (job.reason or "")
        assert comments[job.message_id]["eqScore"] == 0
    assert global_final == global_after
    assert max(patches(stack).values()) == 1

    listed = CliRunner().invoke(
        app,
        ["jobs", "--json", "--limit", "100"],
        env={"OLLAMA_CLOUD_REDIS_URL": stack.redis_url, "COLUMNS": "250"},
    )
    assert listed.exit_code == 0, listed.output
    dead = {row["id"]: row for row in json.loads(listed.stdout)["dead"]}
    for job_id in later_scores:
        assert dead[job_id]["kind"] == "score"
        assert "no online server has model eq-score-f16" in dead[job_id]["reason"]

    # With the scorer back, a lost score retried from `jobs` is applied, once.
    stack.start_worker("scorer")
    retried = later_scores[0]
    outcome = CliRunner().invoke(
        app, ["jobs", "retry", retried], env={"OLLAMA_CLOUD_REDIS_URL": stack.redis_url}
    )
    assert outcome.exit_code == 0, outcome.output
    wait_for(lambda: finished(stack, [retried]), 60, what="the retried score")
    (job,) = stack.ledger.get_many([retried])
    assert (job.outcome, job.server_id) == (Outcome.SCORED, "scorer")
    comments, _, global_retried = site(stack)
    assert job.score is not None and comments[job.message_id]["eqScore"] == job.score
    assert global_retried == global_final + job.score
    assert max(patches(stack).values()) == 1
