"""Delivery (on `control`): a generation's result becomes exactly one reply on the site.

Order: drop if stale → free the slot → post-process → post the reply (derived id, once-guard)
→ complete → EQ PATCH (once-guard) → record latency → the job is done.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from orchestrator.domain.messages import Message
from orchestrator.domain.replies import build_reply, parse_eq_score, post_process
from orchestrator.errors import EqInDoubt, MessageGone, QueueError, QueueUnreachable
from orchestrator.services import Services
from orchestrator.state.ledger import Attempt, Job, JobState, attempts_json
from workers.contract.protocol import GenerateResult

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
    if result.eq is not None and result.eq.ok:
        apply_eq_once(services, job, parse_eq_score(result.eq.text), start.eq_guard)
    timings = result.reply.timings
    pipe = services.redis.pipeline(transaction=True)
    if outcome == "answered":
        pipe.set(services.keys.once_reply(job.id), 1, ex=ONCE_GUARD_TTL_S)
    services.fleet.queue_latency(pipe, result.server_id, entity.model, timings)
    services.fleet.queue_success(pipe, result.server_id)
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


def apply_eq_once(services: Services, job: Job, score: int, guard: str | None) -> None:
    """PATCH adds to the site's global score every time: it must happen at most once.

    A guard marks the PATCH as begun (`pending:<time>`) before it is sent and as done after.
    A delivery that finds it pending (one that died mid-PATCH, or is still sending it) waits
    out the queue's timeout, then asks the site whether the score landed before sending it."""
    if score <= 0:
        return
    key = services.keys.once_eq(job.id)
    now = time.time()
    if guard is None and not services.redis.set(
        key, f"pending:{now}", nx=True, ex=ONCE_GUARD_TTL_S
    ):
        guard = str(services.redis.get(key) or "")
    if guard is not None:
        if not guard.startswith("pending:"):
            log.info("job=%s EQ already applied", job.id)
            return
        began = float(guard.partition(":")[2] or 0)
        if now - began < 2 * services.settings.queue_timeout_s:
            raise EqInDoubt(f"job={job.id} EQ being applied since {now - began:.1f}s")
        landed = site_eq_score(services, job)
        if landed is None or landed > 0:
            services.redis.set(key, "gone" if landed is None else landed, ex=ONCE_GUARD_TTL_S)
            log.info("job=%s EQ found on the site (%s): not applied again", job.id, landed)
            return
        services.redis.set(key, f"pending:{now}", ex=ONCE_GUARD_TTL_S)
    try:
        services.queue.patch_eq(job.id, score)
    except MessageGone:
        log.warning("job=%s gone from the site queue before EQ", job.id)
    except QueueUnreachable as exc:
        if isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout):
            # Nothing reached the queue: lift the guard so the task's retry may apply it.
            services.redis.delete(key)
        # Otherwise it may have landed: the guard stays pending, and the retry asks the site.
        raise
    services.redis.set(key, score, ex=ONCE_GUARD_TTL_S)
    log.info("job=%s EQ %d applied", job.id, score)


def site_eq_score(services: Services, job: Job) -> float | None:
    """The message's eqScore as the site has it now; None when the site no longer has it."""
    timestamp = job.message.get("timestamp")
    after = int(timestamp) - 1 if isinstance(timestamp, int | float) else 0
    for message in services.queue.comments_after(after):
        if message.get("id") == job.id:
            value = message.get("eqScore") or 0
            return float(value) if isinstance(value, int | float) else 0.0
    return None


# Failures that say something about the server: it cools down before it is tried again.
SERVER_FAULTS = frozenset(
    {"unavailable", "busy", "timeout", "server_error", "worker_error", "ollama_error"}
)


def fail(services: Services, job: Job, result: GenerateResult) -> str:
    """A generation that failed: try another server after a short backoff, or give up."""
    error = result.reply
    kind = error.error_kind or "ollama_error"
    failed = Attempt(
        attempt=result.attempt, server_id=result.server_id, error_kind=kind, error=error.error
    )
    settings = services.settings
    if kind in SERVER_FAULTS:
        cooldown = services.fleet.record_failure(
            result.server_id, settings.cooldown_s, settings.cooldown_max_s
        )
        log.warning("server=%s cools down for %.1fs after %s", result.server_id, cooldown, kind)
    after = job.model_copy(update={"attempts": [*job.attempts, failed]})
    now = time.time()
    trim = job.trim
    backoff = 0.0
    if kind == "context_overflow":
        if job.trim >= 1:
            reason = f"context too long even with the history cut: {after.history()}"
            return end_or_stale(services, after, reason, result.attempt)
        trim += 1  # once more, with less history, on any server
    else:
        failures = len(after.failures)
        if failures >= settings.max_attempts:
            reason = f"{failures} attempts failed: {after.history()}"
            return end_or_stale(services, after, reason, result.attempt)
        backoff = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** (failures - 1))
    if now + backoff >= job.deadline:
        reason = f"deadline passed after {len(after.attempts)} attempts: {after.history()}"
        return end_or_stale(services, after, reason, result.attempt)
    moved = services.ledger.schedule_retry(
        job,
        (JobState.DELIVERING,),
        at=now + backoff,
        failed=failed,
        fields={"trim": trim},
        attempt=result.attempt,
    )
    if not moved:
        return "stale"
    log.warning(
        "job=%s attempt=%d server=%s failed (%s): tries again in %.2fs%s",
        job.id, result.attempt, result.server_id, kind, backoff,
        " with the history cut" if trim > job.trim else "",
    )  # fmt: skip
    return "rerouted"


def end_or_stale(services: Services, job: Job, reason: str, attempt: int) -> str:
    ended = give_up(services, job, reason, (JobState.DELIVERING,), attempt=attempt)
    return "dead" if ended else "stale"


def give_up(
    services: Services,
    job: Job,
    reason: str,
    allowed: tuple[JobState, ...],
    *,
    attempt: int | None = None,
) -> bool:
    """No server could answer in time. Takes the job from the states `allowed` (once, whoever
    else tries), then ends it: the operator's apology if any, complete, dead letter."""
    fields: dict[str, Any] = {"state": JobState.ENDING.value, "reason": reason[:2000]}
    fields["attempts"] = attempts_json(job.attempts)
    if not services.ledger.transition(job.id, allowed, fields, attempt=attempt):
        return False
    end(services, job, reason)
    return True


def end(services: Services, job: Job, reason: str) -> None:
    """The last of a job that is `ending`: each step is safe to repeat."""
    log.error("job=%s dead: %s", job.id, reason)
    apology = services.settings.apology_text
    problems = []
    try:
        if apology and not services.redis.exists(services.keys.once_reply(job.id)):
            message = Message.model_validate(job.message)
            entity = services.entities.get(job.entity or "")
            if entity is not None:
                post_reply(services, job, build_reply(entity, message, apology).wire())
                services.redis.hset(services.keys.job(job.id), "apology_posted", "1")
        complete(services, job.id)
    except QueueError as exc:
        problems.append(f"the site queue failed while ending it: {exc}")
        log.error("job=%s could not be completed on the site: %s", job.id, exc)
    except Exception as exc:  # a bad message must not keep the job from ending
        problems.append(f"error while ending it: {exc!r}")
        log.exception("job=%s could not be ended cleanly", job.id)
    full_reason = "; ".join([reason, *problems])
    services.ledger.finish(job.id, JobState.DEAD, reason=full_reason, outcome="dead")
