"""Delivery (on `control`): a generation's result becomes exactly one reply on the site.

Order: drop if stale → free the slot → post-process → post the reply (derived id, once-guard)
→ complete → EQ PATCH (once-guard) → record latency → the job is done.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from orchestrator.errors import MessageGone, QueueUnreachable
from orchestrator.ledger import Attempt, Job, JobState
from orchestrator.messages import Message
from orchestrator.postprocess import build_reply, parse_eq_score, post_process
from orchestrator.services import Services
from workers.protocol import GenerateResult

log = logging.getLogger(__name__)

ONCE_GUARD_TTL_S = 7 * 86400


def deliver(services: Services, payload: dict[str, Any]) -> str:
    """Returns what happened, for logs and tests. Queue errors other than a vanished message
    propagate, so the task retries; every step before them is idempotent."""
    result = GenerateResult.model_validate(payload)
    start = services.ledger.begin_delivery(result.job_id, result.attempt, result.server_id)
    job = start.job
    if job is None:
        log.warning(
            "job=%s server=%s result for a job not in the ledger: dropped",
            result.job_id, result.server_id,
        )  # fmt: skip
        return "unknown"
    if result.stale or not start.current:
        log.info(
            "job=%s attempt=%d server=%s stale result dropped (ledger: attempt %d, %s)",
            job.id, result.attempt, result.server_id, job.attempt, job.state.value,
        )  # fmt: skip
        return "stale"
    if not result.reply.ok:
        return fail(services, job, result)
    message = Message.model_validate(job.message)
    entity = services.entities.get(job.entity or "")
    if entity is None:
        reason = f"entity {job.entity!r} vanished before delivery"
        services.ledger.finish(job.id, JobState.REJECTED, reason=reason, outcome="rejected")
        complete(services, job.id)
        return "rejected"
    text = post_process(result.reply.text, entity)
    if text is None:
        outcome = "skipped"
        log.info("job=%s server=%s reply skipped by the entity's rules", job.id, result.server_id)
    else:
        outcome = "answered"
        if start.reply_posted:
            log.info("job=%s reply already posted", job.id)
        else:
            post_reply(services, job, build_reply(entity, message, text).wire())
    complete(services, job.id)
    if result.eq is not None and result.eq.ok and not start.eq_applied:
        apply_eq_once(services, job.id, parse_eq_score(result.eq.text))
    timings = result.reply.timings
    pipe = services.redis.pipeline(transaction=True)
    if outcome == "answered":
        pipe.set(services.keys.once_reply(job.id), 1, ex=ONCE_GUARD_TTL_S)
    services.fleet.queue_latency(pipe, result.server_id, entity.model, timings)
    services.ledger.queue_finish(
        pipe,
        job.id,
        JobState.DONE,
        outcome=outcome,
        extra={"started_at": result.started_at, "generated_at": result.finished_at},
    )
    pipe.execute()
    elapsed_ms = (result.finished_at - job.claimed_at) * 1000
    log.info(
        "job=%s attempt=%d server=%s %s in %.0f ms",
        job.id, result.attempt, result.server_id, outcome, elapsed_ms,
    )  # fmt: skip
    return outcome


def post_reply(services: Services, job: Job, reply: dict[str, Any]) -> None:
    """Post the reply; its id is derived from the human message's, so a repeat is a duplicate."""
    answer = services.queue.post_comment(reply)
    if answer.status == "duplicate":
        log.warning("job=%s reply %s was already on the site (duplicate)", job.id, answer.id)


def complete(services: Services, job_id: str) -> None:
    try:
        services.queue.complete(job_id)
    except MessageGone:
        log.warning("job=%s gone from the site queue before complete", job_id)


def apply_eq_once(services: Services, job_id: str, score: int) -> None:
    """PATCH adds to the site's global score every time: guard it so it happens at most once."""
    if score <= 0:
        return
    guard = services.keys.once_eq(job_id)
    if not services.redis.set(guard, score, nx=True, ex=ONCE_GUARD_TTL_S):
        log.info("job=%s EQ already applied", job_id)
        return
    try:
        services.queue.patch_eq(job_id, score)
    except MessageGone:
        log.warning("job=%s gone from the site queue before EQ", job_id)
    except QueueUnreachable as exc:
        if isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout):
            # Nothing reached the queue: lift the guard so the task's retry may apply it.
            services.redis.delete(guard)
            raise
        # It may have been applied: at most once means not trying again.
        log.error("job=%s EQ %d may not have been applied: %s", job_id, score, exc)
        return
    log.info("job=%s EQ %d applied", job_id, score)


def fail(services: Services, job: Job, result: GenerateResult) -> str:
    """A generation that failed. Failover to another server builds on this (attempts history)."""
    error = result.reply
    services.ledger.record_attempt(
        job,
        Attempt(
            attempt=result.attempt,
            server_id=result.server_id,
            error_kind=error.error_kind,
            error=error.error,
        ),
    )
    reason = f"generation failed on {result.server_id}: {error.error_kind}: {error.error}"
    give_up(services, job, reason)
    return "dead"


def give_up(services: Services, job: Job, reason: str) -> None:
    """No server could answer: the operator's apology if any, complete, dead letter."""
    log.error("job=%s dead: %s", job.id, reason)
    apology = services.settings.apology_text
    if apology:
        try:
            message = Message.model_validate(job.message)
            entity = services.entities.get(job.entity or "")
            if entity is not None:
                post_reply(services, job, build_reply(entity, message, apology).wire())
        except Exception:
            log.exception("job=%s apology could not be posted", job.id)
    complete(services, job.id)
    services.ledger.finish(job.id, JobState.DEAD, reason=reason, outcome="dead")
