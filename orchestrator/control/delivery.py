"""Delivery (on `control`): a generation's result becomes exactly one reply on the site, or one
score on its message.

A reply: drop if stale → free the slot → post-process → post (the reply's id is derived from
the message's, so the site answers `duplicate` to a second post) → complete → the job is done.
A score: drop if stale → free the slot → parse → PATCH `eqScore` behind a once-guard → done.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.domain.job import Attempt, Job, JobKind, Outcome
from orchestrator.domain.messages import Message
from orchestrator.domain.replies import build_reply, parse_eq_score, post_process
from orchestrator.errors import EqInDoubt, MessageGone, QueueError, QueueNotReached
from orchestrator.services import Services
from orchestrator.site_queue import PostResult
from orchestrator.state.delivered import Delivered, DeliveredRecord
from orchestrator.state.ledger import DeliveryStart
from orchestrator.state.metrics import SCORES_APPLIED, generation_figures
from workers.contract.job import JobState
from workers.contract.protocol import ErrorKind, GenerateResult

log = logging.getLogger(__name__)

PENDING = "pending:"  # an EQ guard's value while its PATCH is on its way
# The event a job's end is logged as: a reply posted and completed, withheld, or a score.
DELIVERED_EVENT = {Outcome.ANSWERED: "deliver", Outcome.SKIPPED: "skip", Outcome.SCORED: "score"}


def deliver(services: Services, payload: dict[str, Any]) -> str:
    """Returns what happened, for logs and tests. Queue errors other than a vanished message
    propagate, so the task retries; every step before them is idempotent."""
    result = GenerateResult.model_validate(payload)
    start = services.ledger.begin_delivery(
        result.job_id, result.attempt, result.server_id, result.model_dump_json()
    )
    job = start.job
    if job is None:
        log.warning(
            "drop job=%s attempt=%d server=%s: result for a job not in the ledger",
            result.job_id, result.attempt, result.server_id,
        )  # fmt: skip
        return "unknown"
    if result.stale or not start.current:
        log.info(
            "stale job=%s attempt=%d server=%s: result dropped (ledger: attempt %d, %s)",
            job.id, result.attempt, result.server_id, job.attempt, job.state.value,
        )  # fmt: skip
        return "stale"
    if not result.outcome.ok:
        return fail(services, job, result)
    if job.kind is JobKind.SCORE:
        return deliver_score(services, job, result, start)
    return deliver_reply(services, job, result)


def deliver_reply(services: Services, job: Job, result: GenerateResult) -> str:
    message = Message.model_validate(job.message)
    entity = services.entities.get(job.entity or "")
    if entity is None:
        reason = f"entity {job.entity!r} vanished before delivery"
        log.warning(
            "reject job=%s attempt=%d server=%s: %s", job.id, result.attempt, result.server_id,
            reason,
        )  # fmt: skip
        services.ledger.finish(job.id, JobState.REJECTED, reason=reason, outcome=Outcome.REJECTED)
        complete(services, job.message_id)
        return "rejected"
    text = post_process(result.outcome.text, entity, services.entities.global_settings)
    if text is None:
        outcome = Outcome.SKIPPED  # the entity's rules withheld it: `skip` tells it
    else:
        outcome = Outcome.ANSWERED
        post_reply(services, job, build_reply(entity, message, text).wire())
    complete(services, job.message_id)
    finish_delivered(services, job, result, outcome)
    return outcome


def deliver_score(
    services: Services, job: Job, result: GenerateResult, start: DeliveryStart
) -> str:
    score = parse_eq_score(result.outcome.text)
    applied = apply_eq_once(services, job, score, start.eq_guard)
    finish_delivered(services, job, result, Outcome.SCORED, score=score)
    if applied is None and score > 0:
        return "scored (applied before)"
    return "scored"


def finish_delivered(
    services: Services,
    job: Job,
    result: GenerateResult,
    outcome: Outcome,
    *,
    score: int | None = None,
) -> None:
    """The job is done: the server's speed for the model and its health noted, in one step."""
    pipe = services.redis.pipeline(transaction=True)
    services.fleet.queue_latency(pipe, result.server_id, job.model or "", result.outcome.timings)
    services.fleet.queue_success(pipe, result.server_id)
    services.ledger.queue_finish(
        pipe,
        job.id,
        JobState.DONE,
        outcome=outcome,
        started_at=result.started_at,
        generated_at=result.finished_at,
        score=score,
        figures=generation_figures(
            services.keys, result.server_id, job.model or "", result.outcome.timings
        ),
    )
    if pipe.execute()[-1]:  # finished now, not by an earlier delivery of the same result
        note_delivered(services, job, outcome, result)
    elapsed_ms = (result.finished_at - job.claimed_at) * 1000
    log.info(
        "%s job=%s attempt=%d server=%s outcome=%s total_ms=%.0f%s",
        DELIVERED_EVENT.get(outcome, "deliver"), job.id, result.attempt, result.server_id,
        outcome, elapsed_ms, "" if score is None else f" eq={score}",
    )  # fmt: skip


def note_delivered(
    services: Services, job: Job, outcome: Outcome, result: GenerateResult | None = None
) -> None:
    """The fleet page's record of what ended lately: the job, its latency and its speed."""
    now = time.time()
    timings = result.outcome.timings if result is not None else None
    eval_s = timings.eval_ms / 1000 if timings else 0.0
    DeliveredRecord(services.redis, services.keys).note(
        Delivered(
            at=round(now, 3),
            job_id=job.id,
            kind=job.kind.value,
            outcome=outcome,
            server_id=result.server_id if result is not None else job.server_id or "",
            entity=job.entity,
            model=job.model,
            attempt=result.attempt if result is not None else job.attempt,
            latency_ms=round((now - job.claimed_at) * 1000, 1),
            generation_ms=round(timings.wall_ms, 1) if timings else None,
            tokens_per_s=(
                round(timings.eval_count / eval_s, 1) if timings and eval_s > 0 else None
            ),
        )
    )


def post_reply(services: Services, job: Job, reply: dict[str, Any]) -> PostResult:
    """Post the reply; its id is derived from the human message's, so a repeat is a duplicate."""
    answer = services.queue.post_comment(reply)
    if answer.status == "duplicate":
        log.warning("duplicate job=%s reply=%s: already on the site", job.id, answer.id)
    return answer


def complete(services: Services, message_id: str) -> None:
    try:
        services.queue.complete(message_id)
    except MessageGone:
        log.warning("job=%s gone from the site queue before complete", message_id)


def apply_eq_once(services: Services, job: Job, score: int, guard: str | None) -> int | None:
    """PATCH adds to the site's global score every time: it must happen at most once.

    A guard marks the PATCH as begun (`pending:<time>`) before it is sent; the job's end takes
    the guard away with it. A delivery that finds it pending (one that died mid-PATCH, or is
    still sending it) waits out the queue's timeout, then asks the site whether the score
    landed before sending it. Returns the score sent, None when no PATCH was sent."""
    if score <= 0:
        return None
    ledger = services.ledger
    now = time.time()
    if guard is None:
        guard = ledger.claim_eq_guard(job.id, f"{PENDING}{now}")
    if guard is not None:
        if not guard.startswith(PENDING):
            log.info("job=%s EQ already applied", job.id)
            return None
        began = float(guard.removeprefix(PENDING) or 0)
        if now - began < 2 * services.settings.queue_timeout_s:
            raise EqInDoubt(f"job={job.id} EQ being applied since {now - began:.1f}s")
        landed = site_eq_score(services, job)
        if landed is None or landed > 0:
            ledger.set_eq_guard(job.id, "gone" if landed is None else landed)
            log.info("job=%s EQ found on the site (%s): not applied again", job.id, landed)
            return None
        ledger.set_eq_guard(job.id, f"{PENDING}{now}")
    # On any error but these, the PATCH may have landed: the guard stays pending, and the
    # task's retry asks the site.
    try:
        services.queue.patch_eq(job.message_id, score)
    except MessageGone:
        log.warning("job=%s gone from the site queue before EQ", job.id)
        ledger.set_eq_guard(job.id, "gone")
        return None
    except QueueNotReached:
        # Nothing reached the queue: lift the guard so the task's retry may apply it.
        ledger.lift_eq_guard(job.id)
        raise
    services.metrics.count(SCORES_APPLIED)
    return score


def site_eq_score(services: Services, job: Job) -> float | None:
    """The message's eqScore as the site has it now; None when the site no longer has it."""
    timestamp = job.message.get("timestamp")
    after = int(timestamp) - 1 if isinstance(timestamp, int | float) else 0
    for message in services.queue.comments_after(after):
        if message.get("id") == job.message_id:
            value = message.get("eqScore") or 0
            return float(value) if isinstance(value, int | float) else 0.0
    return None


def fail(services: Services, job: Job, result: GenerateResult) -> str:
    """A generation that failed: try another server after a short backoff, or give up."""
    error = result.outcome
    kind = error.error_kind or ErrorKind.OLLAMA_ERROR
    failed = Attempt(
        attempt=result.attempt, server_id=result.server_id, error_kind=kind, error=error.error
    )
    settings = services.settings
    if kind.server_fault:
        cooldown = services.fleet.record_failure(
            result.server_id, settings.cooldown_s, settings.cooldown_max_s
        )
        log.warning(
            "cooldown server=%s job=%s attempt=%d error=%s seconds=%.1f",
            result.server_id, job.id, result.attempt, kind, cooldown,
        )  # fmt: skip
    after = job.with_attempt(failed)
    now = time.time()
    trim = job.trim
    backoff = 0.0
    if not kind.counts_against_attempts:
        if job.trim >= 1 or job.kind is JobKind.SCORE:
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
        trim=trim,
        attempt=result.attempt,
    )
    if not moved:
        return "stale"
    log.warning(
        "retry job=%s attempt=%d server=%s error=%s backoff=%.2fs trim=%d",
        job.id, result.attempt, result.server_id, kind, backoff, trim,
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
    else tries), then ends it (see `end`)."""
    if not services.ledger.begin_ending(job, reason, allowed, attempt=attempt):
        return False
    end(services, job, reason)
    return True


def end(services: Services, job: Job, reason: str) -> None:
    """The last of a job that is `ending`, each step safe to repeat. A reply: the operator's
    apology if any, complete, dead letter. A score: a dead letter with its reason (nothing on
    the site: the message keeps no score, and `jobs` shows why)."""
    if job.kind is JobKind.SCORE:
        log.error("score lost job=%s attempt=%d server=%s: %s", job.id, job.attempt,
                  job.server_id or "none", reason)  # fmt: skip
        if services.ledger.finish(job.id, JobState.DEAD, reason=reason, outcome=Outcome.SCORE_LOST):
            note_delivered(services, job, Outcome.SCORE_LOST)
        return
    log.error("dead job=%s attempt=%d server=%s: %s", job.id, job.attempt,
              job.server_id or "none", reason)  # fmt: skip
    apology = services.settings.apology_text
    problems = []
    try:
        if apology:
            post_apology(services, job, apology)
        complete(services, job.message_id)
    except QueueError as exc:
        problems.append(f"the site queue failed while ending it: {exc}")
        log.error("job=%s could not be completed on the site: %s", job.id, exc)
    except Exception as exc:  # a bad message must not keep the job from ending
        problems.append(f"error while ending it: {exc!r}")
        log.exception("job=%s could not be ended cleanly", job.id)
    full_reason = "; ".join([reason, *problems])
    if services.ledger.finish(job.id, JobState.DEAD, reason=full_reason, outcome=Outcome.DEAD):
        note_delivered(services, job, Outcome.DEAD)


def post_apology(services: Services, job: Job, apology: str) -> None:
    """The apology takes the reply's id: where a reply was posted already, the site answers
    `duplicate` and nothing more is posted."""
    message = Message.model_validate(job.message)
    entity = services.entities.get(job.entity or "")
    if entity is None:
        return
    answer = post_reply(services, job, build_reply(entity, message, apology).wire())
    if answer.status == "success":
        services.ledger.note_apology(job.id)
