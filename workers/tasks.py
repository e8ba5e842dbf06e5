"""The one task a server's worker runs: a chat request against its own Ollama."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Celery

from workers import runtime as worker_runtime
from workers.contract.protocol import (
    GENERATE_TASK,
    ChatOutcome,
    ChatRequest,
    GenerateJob,
    GenerateResult,
)
from workers.errors import OllamaError
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# Keep the result in the job's ledger entry while the attempt is still current, so that a
# control worker lost before delivering it does not lose it: the sweep delivers it again.
STORE_RESULT = """
local attempt, state = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state'))
if attempt ~= ARGV[1] or state ~= 'dispatched' then return 0 end
redis.call('HSET', KEYS[1], 'result', ARGV[2], 'result_at', ARGV[3])
return 1
"""


def keep_result(rt: WorkerRuntime, result: GenerateResult) -> None:
    try:
        rt.redis.eval(
            STORE_RESULT,
            1,
            rt.keys.job(result.job_id),
            result.attempt,
            result.model_dump_json(),
            f"{result.finished_at:.3f}",
        )
    except redis.RedisError as exc:
        # The result still travels to delivery through Celery.
        log.warning("job=%s server=%s result not kept: %s", result.job_id, rt.server_id, exc)


# Begin an attempt only if it is still the ledger's current one, and note that it began: the
# sweep re-dispatches an attempt that never began (its task lost before a worker took it).
BEGIN_ATTEMPT = """
local attempt, state = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state'))
if attempt ~= ARGV[1] or state ~= 'dispatched' then return 0 end
redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
return 1
"""


def is_stale(rt: WorkerRuntime, job: GenerateJob) -> bool:
    """True when the ledger has moved on: a later attempt, or the job already finished.
    Otherwise the attempt is marked as begun."""
    try:
        current = rt.redis.eval(
            BEGIN_ATTEMPT, 1, rt.keys.job(job.job_id), job.attempt, f"{time.time():.3f}"
        )
    except redis.RedisError as exc:
        # Without the ledger we cannot tell; running it is safe since delivery checks again.
        log.warning("job=%s server=%s ledger unreadable: %s", job.job_id, rt.server_id, exc)
        return False
    return not current


def run_chat(rt: WorkerRuntime, request: ChatRequest, job_id: str) -> ChatOutcome:
    try:
        return rt.ollama.chat(request)
    except OllamaError as exc:
        log.warning("job=%s server=%s ollama %s: %s", job_id, rt.server_id, exc.kind, exc)
        return ChatOutcome(ok=False, error_kind=exc.kind, error=str(exc))
    except Exception as exc:  # a worker task must always hand a result to delivery
        log.exception("job=%s server=%s unexpected error", job_id, rt.server_id)
        return ChatOutcome(ok=False, error_kind="worker_error", error=repr(exc)[:500])


def generate(job_payload: dict[str, Any]) -> dict[str, Any]:
    rt = worker_runtime.current()
    started_at = time.time()
    job = GenerateJob.model_validate(job_payload)
    if is_stale(rt, job):
        log.info(
            "job=%s attempt=%d server=%s stale: dropped", job.job_id, job.attempt, rt.server_id
        )
        return GenerateResult(
            job_id=job.job_id,
            attempt=job.attempt,
            server_id=rt.server_id,
            reply=ChatOutcome(ok=False, error_kind="stale"),
            started_at=started_at,
            finished_at=time.time(),
            stale=True,
        ).model_dump(mode="json")
    reply = run_chat(rt, job.reply, job.job_id)
    eq = run_chat(rt, job.eq, job.job_id) if job.eq is not None and reply.ok else None
    finished_at = time.time()
    log.info(
        "job=%s attempt=%d server=%s generated ok=%s in %.0f ms",
        job.job_id,
        job.attempt,
        rt.server_id,
        reply.ok,
        (finished_at - started_at) * 1000,
    )
    result = GenerateResult(
        job_id=job.job_id,
        attempt=job.attempt,
        server_id=rt.server_id,
        reply=reply,
        eq=eq,
        started_at=started_at,
        finished_at=finished_at,
    )
    keep_result(rt, result)
    return result.model_dump(mode="json")


def register(app: Celery) -> None:
    app.task(name=GENERATE_TASK, acks_late=True, ignore_result=True)(generate)
