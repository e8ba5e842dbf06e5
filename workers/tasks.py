"""The one task a server's worker runs: a chat request against its own backend, whose result it
sends to `deliver` on `control` (and keeps on the job until it is delivered)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Celery, Task

from workers import runtime as worker_runtime
from workers.contract.protocol import (
    CONTROL_QUEUE,
    DELIVER_TASK,
    GENERATE_TASK,
    ChatOutcome,
    ChatRequest,
    ErrorKind,
    GenerateJob,
    GenerateResult,
)
from workers.errors import BackendError
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def keep_result(rt: WorkerRuntime, result: GenerateResult) -> None:
    try:
        rt.attempts.keep_result(result)
    except redis.RedisError as exc:
        # The result still travels to delivery through Celery.
        log.warning("job=%s server=%s result not kept: %s", result.job_id, rt.server_id, exc)


def is_stale(rt: WorkerRuntime, job: GenerateJob) -> bool:
    """True when the ledger has moved on: a later attempt, or the job already finished.
    Otherwise the attempt is marked as begun."""
    try:
        return not rt.attempts.begin(job.job_id, job.attempt, rt.server_id, time.time())
    except redis.RedisError as exc:
        # Without the ledger we cannot tell; running it is safe since delivery checks again.
        log.warning("job=%s server=%s ledger unreadable: %s", job.job_id, rt.server_id, exc)
        return False


def run_chat(rt: WorkerRuntime, request: ChatRequest, job_id: str) -> ChatOutcome:
    try:
        return rt.chat(request, job_id)
    except BackendError as exc:  # `generate failed` tells it
        return ChatOutcome(ok=False, error_kind=exc.kind, error=str(exc))
    except Exception as exc:  # a worker task must always hand a result to delivery
        log.exception("job=%s server=%s unexpected error", job_id, rt.server_id)
        return ChatOutcome(ok=False, error_kind=ErrorKind.WORKER_ERROR, error=repr(exc)[:500])


def log_generated(rt: WorkerRuntime, job: GenerateJob, outcome: ChatOutcome, ms: float) -> None:
    """`generate done` with the latency and the speed, or `generate failed` with why."""
    if not outcome.ok:
        log.warning(
            "generate failed job=%s attempt=%d server=%s error=%s ms=%.0f: %s %s",
            job.job_id, job.attempt, rt.server_id, outcome.error_kind, ms,
            rt.backend.kind, outcome.error,
        )  # fmt: skip
        return
    timings = outcome.timings
    eval_s = timings.eval_ms / 1000
    speed = timings.eval_count / eval_s if eval_s > 0 else 0.0
    log.info(
        "generate done job=%s attempt=%d server=%s ms=%.0f tokens=%d tokens_per_s=%.1f",
        job.job_id, job.attempt, rt.server_id, ms, timings.eval_count, speed,
    )  # fmt: skip


def send_to_delivery(task: Task, result: GenerateResult) -> None:
    """The result goes to control even when stale: delivery frees a slot the job no longer
    holds."""
    task.app.send_task(
        DELIVER_TASK,
        args=[result.model_dump(mode="json")],
        queue=CONTROL_QUEUE,
        argsrepr=result.argsrepr(),
    )


def generate(task: Task, job_payload: dict[str, Any]) -> None:
    started_at = time.time()
    job = GenerateJob.model_validate(job_payload)
    try:
        rt = worker_runtime.current(job.server_id)
    except LookupError:
        # A copy of another server's task (replayed, or pushed here by hand): it holds no slot
        # here and its job is not placed here, so nothing is run and nothing is sent.
        log.warning(
            "job=%s attempt=%d server=%s task placed on %s: dropped",
            job.job_id, job.attempt, ",".join(worker_runtime.served()), job.server_id,
        )  # fmt: skip
        return
    if is_stale(rt, job):
        log.info(
            "stale job=%s attempt=%d server=%s: dropped", job.job_id, job.attempt, rt.server_id
        )
        stale = GenerateResult(
            job_id=job.job_id,
            attempt=job.attempt,
            server_id=rt.server_id,
            outcome=ChatOutcome(ok=False, error_kind=ErrorKind.STALE),
            started_at=started_at,
            finished_at=time.time(),
            stale=True,
        )
        send_to_delivery(task, stale)
        return
    log.info(
        "generate start job=%s attempt=%d server=%s model=%s queued_ms=%.0f",
        job.job_id, job.attempt, rt.server_id, job.request.model,
        max(0.0, started_at - job.dispatched_at) * 1000,
    )  # fmt: skip
    outcome = run_chat(rt, job.request, job.job_id)
    finished_at = time.time()
    log_generated(rt, job, outcome, (finished_at - started_at) * 1000)
    result = GenerateResult(
        job_id=job.job_id,
        attempt=job.attempt,
        server_id=rt.server_id,
        outcome=outcome,
        started_at=started_at,
        finished_at=finished_at,
    )
    send_to_delivery(task, result)
    # Kept after it is sent, off the way to delivery: a delivery that is quicker keeps it
    # itself as it begins, and this guarded step then keeps nothing.
    keep_result(rt, result)


def register(app: Celery) -> None:
    app.task(name=GENERATE_TASK, bind=True, acks_late=True, ignore_result=True)(generate)
