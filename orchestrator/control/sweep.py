"""The sweep (beat, every second or so): one pass over the fleet and the active jobs.

- jobs on a server that stopped beating go to another server (their result, if the server
  finished them, is delivered instead); its queue is purged of them when it comes back;
- a result that was not delivered in time is delivered again from the ledger;
- jobs held by a bridge that stopped beating go to the other bridges;
- jobs past their deadline are given up (apology if set, complete, dead letter);
- slots held by jobs that ended are freed (finished jobs expire by themselves).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from celery import Celery

from orchestrator.control.delivery import end, give_up
from orchestrator.domain.job import Attempt, Job
from orchestrator.domain.servers import ServerView
from orchestrator.errors import QueueError
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.state.ledger import JobRow
from workers.contract.job import HELD_BY_BRIDGE, UNPLACED, JobState
from workers.contract.protocol import CONTROL_QUEUE, DELIVER_TASK, ErrorKind, GenerateResult

log = logging.getLogger(__name__)

# A job whose delivery keeps failing (the site queue away) is given up this long after its
# deadline, in units of `delivery_stall_s`.
DELIVERY_GRACE_STALLS = 10


@dataclass
class Pass:
    """One sweep's view of the fleet, and what it did."""

    now: float
    servers: dict[str, ServerView]
    gone: dict[str, str] = field(default_factory=dict)  # server id: why its worker is gone
    counts: dict[str, int] = field(
        default_factory=lambda: {"rerouted": 0, "redelivered": 0, "handed_over": 0, "given_up": 0}
    )


def sweep(services: Services, app: Celery | None = None) -> dict[str, int]:
    """One pass; returns what it did, by kind."""
    now, fleet = services.fleet.read_at()
    sweep_pass = Pass(now=now, servers={server.id: server for server in fleet})
    for server in services.fleet.gone_workers(fleet, now):
        if services.fleet.remove_gone(server):
            sweep_pass.gone[server.id] = (
                f"its worker's connections to Redis closed, no heartbeat for "
                f"{now - server.last_beat:.1f}s"
            )
            sweep_pass.servers[server.id] = replace(server, online=False)
            log.warning("server=%s worker gone: %s", server.id, sweep_pass.gone[server.id])
    counts = sweep_pass.counts
    counts["released"] = release_leaked(services, fleet)
    counts["expired_letters"] = services.ledger.expire_letters(now)
    counts["purged"] = purge_returned(services, sweep_pass.servers)
    rows = services.ledger.active_rows()
    bridges = sorted({row.bridge_id for _, row in rows if row is not None and row.bridge_id})
    alive = dict(zip(bridges, services.ledger.bridges_alive(bridges), strict=True))
    for job_id, row in rows:
        try:
            if row is None:
                services.ledger.forget(job_id)
            else:
                judge(services, row, sweep_pass, alive, app)
        except (QueueError, redis.RedisError, ValueError) as exc:
            log.error("job=%s sweep could not act on it: %s", job_id, exc)
    return counts


def judge(
    services: Services,
    row: JobRow,
    sweep_pass: Pass,
    alive: dict[str, bool],
    app: Celery | None,
) -> None:
    settings, counts, now = services.settings, sweep_pass.counts, sweep_pass.now
    overdue = bool(row.deadline) and now > row.deadline
    if row.state is JobState.DISPATCHED:
        check_dispatched(services, row, sweep_pass, app)
    elif row.state is JobState.DELIVERING:
        stalled = now - row.delivering_at > settings.delivery_stall_s
        grace = DELIVERY_GRACE_STALLS * settings.delivery_stall_s
        if row.deadline and now > row.deadline + grace:
            counts["given_up"] += give_up_overdue(services, row.id, row.state)
        elif stalled:
            counts["redelivered"] += redeliver(services, row.id, row.state, app)
    elif overdue:
        counts["given_up"] += give_up_overdue(services, row.id, row.state)
    elif row.state in HELD_BY_BRIDGE and not alive.get(row.bridge_id, False):
        # Its bridge holds it in memory only: when the bridge stops beating, another places it.
        long_held = now - row.claimed_at > settings.bridge_lost_after_s
        counts["handed_over"] += hand_over(services, row.id, row.bridge_id) if long_held else 0


def check_dispatched(services: Services, row: JobRow, sweep_pass: Pass, app: Celery | None) -> None:
    """A dispatched job: its result may be waiting for a delivery that was lost, or its server
    may have stopped beating (or its worker be gone), or it may be past its deadline."""
    settings, counts, now = services.settings, sweep_pass.counts, sweep_pass.now
    if row.result_at and now - row.result_at > settings.delivery_stall_s:
        counts["redelivered"] += redeliver(services, row.id, row.state, app)
        return
    if row.result_at:
        return
    lost = why_lost(settings, row, sweep_pass.servers.get(row.server_id), now, sweep_pass.gone)
    if lost is not None:
        job = services.ledger.get(row.id)
        if job is not None and reroute_from_lost(services, job, now, *lost):
            counts["rerouted"] += 1
    elif row.deadline and now > row.deadline:
        counts["given_up"] += give_up_overdue(services, row.id, row.state)


def why_lost(
    settings: Settings,
    row: JobRow,
    server: ServerView | None,
    now: float,
    gone: dict[str, str],
) -> tuple[ErrorKind, str] | None:
    """Why a dispatched job without a result will never get one from its server, as an
    attempt's error kind and text; None while it still may."""
    dispatched_at = row.dispatched_at if row.dispatched_at is not None else now
    if not row.started_at and now - dispatched_at > settings.start_lost_after_s:
        wait = f"{settings.start_lost_after_s:g}s"
        return ErrorKind.NOT_STARTED, f"no worker began it within {wait}"
    # Begun by a run of the worker that has since restarted (too quickly to be seen silent).
    if server and row.started_at and row.started_at < server.booted_at:
        return ErrorKind.WORKER_RESTARTED, "its worker restarted while running it"
    if server is None or not server.online:
        silent = f"no heartbeat for over {settings.server_lost_after_s:g}s"
        return ErrorKind.SERVER_LOST, gone.get(row.server_id, silent)
    return None


def reroute_from_lost(
    services: Services, job: Job, now: float, kind: ErrorKind, error: str
) -> bool:
    """The job's server stopped beating, its worker restarted, or no worker began the job (its
    task was lost): it goes to a server again, the attempt moves on (so a late start or result
    of the old one is dropped as stale), and the server's queue is purged when it returns."""
    server_id = job.server_id or ""
    lost = Attempt(attempt=job.attempt, server_id=server_id, error_kind=kind, error=error)
    failures = len(job.failures) + 1
    if failures >= services.settings.max_attempts or now >= job.deadline:
        after = job.with_attempt(lost)
        return give_up(
            services,
            after,
            f"{failures} attempts failed: {after.history()}",
            (JobState.DISPATCHED,),
            attempt=job.attempt,
        )
    moved = services.ledger.schedule_retry(
        job,
        (JobState.DISPATCHED,),
        at=time.time(),
        failed=lost,
        attempt=job.attempt,
        server_id=server_id,
    )
    if moved:
        services.fleet.mark_lost(server_id)
        log.warning(
            "failover job=%s attempt=%d server=%s error=%s: the job goes again",
            job.id, job.attempt, server_id, kind,
        )  # fmt: skip
    return moved


def redeliver(services: Services, job_id: str, state: JobState, app: Celery | None) -> int:
    """Send the kept result to delivery again (delivery is idempotent)."""
    job = services.ledger.get(job_id)
    if job is None or not job.result or app is None:
        return 0
    if not services.ledger.note_redelivery(job_id, state):
        return 0  # it moved on meanwhile
    result = GenerateResult.model_validate_json(job.result)
    app.send_task(
        DELIVER_TASK,
        args=[result.model_dump(mode="json")],
        queue=CONTROL_QUEUE,
        argsrepr=result.argsrepr(),
    )
    log.warning("job=%s result not delivered in time: delivering it again", job_id)
    return 1


def hand_over(services: Services, job_id: str, bridge_id: str) -> int:
    moved = services.ledger.hand_back(job_id, bridge_id)
    if moved:
        log.warning("job=%s its bridge %s stopped: handed to the others", job_id, bridge_id)
    return int(moved)


def give_up_overdue(services: Services, job_id: str, state: JobState) -> int:
    job = services.ledger.get(job_id)
    if job is None:
        return 0
    if job.state is JobState.ENDING:
        end(services, job, job.reason or "deadline passed")
        return 1
    history = job.history() or "no attempt finished"
    reason = f"deadline passed ({state}) after {len(job.attempts)} failed attempts: {history}"
    allowed = (*sorted(UNPLACED), JobState.DISPATCHED, JobState.DELIVERING)
    return int(give_up(services, job, reason, allowed, attempt=job.attempt))


def release_leaked(services: Services, fleet: Iterable[ServerView]) -> int:
    """Free slots held by jobs that ended, vanished, or moved on."""
    released = 0
    for server in fleet:
        for job_id in services.ledger.release_leaked(server.id):
            released += 1
            log.warning("job=%s server=%s slot leaked: released", job_id, server.id)
    return released


def purge_returned(services: Services, servers: dict[str, ServerView]) -> int:
    """A server that was lost and beats again: drop from its queue the attempts that were
    moved elsewhere meanwhile, before its worker spends time on them."""
    purged = 0
    for server_id in services.fleet.lost_servers():
        server = servers.get(server_id)
        if server is None or not server.online:
            continue
        purged += purge_stale_attempts(services, server_id)
        services.fleet.clear_lost(server_id)
    return purged


def purge_stale_attempts(services: Services, server_id: str) -> int:
    """Remove the queued generate tasks whose attempt the ledger has moved past."""
    queued = [(raw, queued_attempt(raw)) for raw in services.fleet.queued_tasks(server_id)]
    generate = [(raw, (job_id, attempt)) for raw, (job_id, attempt) in queued if job_id]
    current = services.ledger.current_attempts(
        [(str(job_id), attempt) for _, (job_id, attempt) in generate], server_id
    )
    purged = 0
    for (raw, _), still_current in zip(generate, current, strict=True):
        if not still_current:
            purged += services.fleet.remove_queued(server_id, raw)
    if purged:
        log.warning("server=%s back: %d stale attempts purged from its queue", server_id, purged)
    return purged


def queued_attempt(raw: str) -> tuple[str | None, int]:
    """The job id and attempt of a generate task as kombu keeps it in a Redis list."""
    try:
        envelope = json.loads(raw)
        body: Any = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        job = args[0]
        return str(job["job_id"]), int(job["attempt"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None, 0
