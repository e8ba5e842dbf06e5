"""The control worker's tasks (queue `control`): deliver results, and the beat's sweep."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from orchestrator.delivery import deliver
from orchestrator.errors import QueueServerError, QueueUnreachable
from orchestrator.ledger import FINISHED_STATES
from orchestrator.services import Services, process_services
from workers.protocol import DELIVER_TASK

log = logging.getLogger(__name__)

SWEEP_TASK = "ollama_cloud.sweep"


def deliver_task(self: Task, payload: dict[str, Any]) -> str:
    try:
        return deliver(process_services(), payload)
    except (QueueUnreachable, QueueServerError) as exc:
        # Brief, growing pauses: the site queue blinks, it rarely stays away.
        countdown = min(10.0, 0.2 * 2**self.request.retries)
        log.warning("job=%s delivery retry in %.1fs: %s", payload.get("job_id"), countdown, exc)
        raise self.retry(exc=exc, countdown=countdown, max_retries=8) from exc


def sweep(services: Services) -> dict[str, int]:
    """Free slots held by jobs that ended or vanished; drop finished jobs past retention."""
    released = 0
    for server in services.fleet.read():
        holders = sorted(services.fleet.inflight_jobs(server.id))
        if not holders:
            continue
        states = services.redis.pipeline(transaction=False)
        for job_id in holders:
            states.hget(services.keys.job(job_id), "state")
        for job_id, state in zip(holders, states.execute(), strict=True):
            if state is None or state in FINISHED_STATES:
                services.fleet.release(server.id, job_id)
                released += 1
                log.warning(
                    "job=%s server=%s slot leaked (job %s): released", job_id, server.id, state
                )
    pruned = services.ledger.prune_finished(services.settings.finished_retention_s)
    return {"released": released, "pruned": pruned}


def sweep_task() -> dict[str, int]:
    services = process_services()
    # Exactly one sweep at a time, whatever number of beats or control workers run.
    lock = services.redis.lock(services.keys.beat_lock, timeout=30, blocking=False)
    if not lock.acquire():
        return {"released": 0, "pruned": 0}
    try:
        return sweep(services)
    finally:
        lock.release()


def register(app: Celery) -> None:
    app.task(name=DELIVER_TASK, bind=True, acks_late=True, ignore_result=True)(deliver_task)
    app.task(name=SWEEP_TASK, acks_late=False, ignore_result=True, expires=10)(sweep_task)
