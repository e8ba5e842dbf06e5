"""The control worker's tasks (queue `control`): deliver results, and the beat's sweep and
recovery, each with its retry policy or its lock."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, Task
from redis.lock import Lock

from orchestrator.control.delivery import deliver, give_up
from orchestrator.control.recovery import recover
from orchestrator.control.sweep import sweep
from orchestrator.errors import TRANSIENT_QUEUE_ERRORS, QueueError, Retry
from orchestrator.services import Services, process_services
from workers.contract.job import JobState
from workers.contract.protocol import DELIVER_TASK, RECOVER_TASK, SWEEP_TASK

log = logging.getLogger(__name__)

DELIVERY_RETRIES = 8
DELIVERY_TRANSIENT = (Retry, *TRANSIENT_QUEUE_ERRORS, redis.RedisError)


def deliver_task(self: Task, payload: dict[str, Any]) -> str:
    services = process_services()
    try:
        return deliver(services, payload)
    except DELIVERY_TRANSIENT as exc:
        # Brief, growing pauses: the site queue or Redis blinks, it rarely stays away. After
        # the last retry the result stays in the ledger and the sweep delivers it again later.
        countdown = min(10.0, 0.2 * 2**self.request.retries)
        if isinstance(exc, Retry) and exc.delay is not None:
            countdown = exc.delay
        log.warning(
            "deliver again job=%s attempt=%s server=%s in=%.1fs: %s",
            payload.get("job_id"), payload.get("attempt"), payload.get("server_id"), countdown, exc,
        )  # fmt: skip
        raise self.retry(exc=exc, countdown=countdown, max_retries=DELIVERY_RETRIES) from exc
    except Exception as exc:
        # Trying again would fail the same way (the queue refused the reply, a bad result):
        # end the job now with the reason, rather than at its deadline.
        log.exception(
            "deliver failed job=%s attempt=%s server=%s",
            payload.get("job_id"), payload.get("attempt"), payload.get("server_id"),
        )  # fmt: skip
        return fail_delivery(services, payload, exc)


def fail_delivery(services: Services, payload: dict[str, Any], exc: Exception) -> str:
    job_id, attempt = payload.get("job_id"), payload.get("attempt")
    job = services.ledger.get(job_id) if isinstance(job_id, str) else None
    if job is None or not isinstance(attempt, int):
        return "unknown"
    reason = f"delivery failed: {type(exc).__name__}: {exc}"[:1000]
    ended = give_up(services, job, reason, (JobState.DELIVERING,), attempt=attempt)
    return "dead" if ended else "stale"


def pass_lock(services: Services, key: str, timeout: float) -> Lock:
    """A non-blocking Redis lock: one sweep (or recovery) at a time, whatever the number of
    beats or control workers."""
    lock: Lock = services.redis.lock(key, timeout=timeout, blocking=False)
    return lock


def release_quietly(lock: Lock) -> None:
    try:
        lock.release()
    except redis.exceptions.LockError:
        log.warning("a beat lock expired before its pass ended")


def sweep_task(self: Task) -> dict[str, int]:
    services = process_services()
    # Short: a control worker killed mid-pass holds the next passes back only this long.
    timeout = max(5.0, 5 * services.settings.sweep_interval_s)
    lock = pass_lock(services, services.keys.sweep_lock, timeout)
    if not lock.acquire():
        return {}
    try:
        return sweep(services, self.app)
    finally:
        release_quietly(lock)


def recover_task() -> int:
    """How many claims were taken back (the notes of a pass the site did not answer stay, for
    the next)."""
    services = process_services()
    lock = pass_lock(services, services.keys.recover_lock, 30)
    if not lock.acquire():
        return 0
    try:
        return recover(services).recovered
    except QueueError as exc:
        log.warning("recovery: the site queue did not answer: %s", exc)
        return 0
    finally:
        release_quietly(lock)


def register(app: Celery) -> None:
    app.task(name=DELIVER_TASK, bind=True, acks_late=True, ignore_result=True)(deliver_task)
    app.task(name=SWEEP_TASK, bind=True, acks_late=False, ignore_result=True, expires=10)(
        sweep_task
    )
    app.task(name=RECOVER_TASK, acks_late=False, ignore_result=True, expires=60)(recover_task)
