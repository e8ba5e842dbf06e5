"""The control worker's tasks (queue `control`): deliver results, and the beat's sweep and
recovery."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import redis
from celery import Celery, Task

from orchestrator.control.delivery import deliver as deliver_result
from orchestrator.control.delivery import end, give_up
from orchestrator.errors import QueueError, QueueServerError, QueueUnreachable
from orchestrator.services import Services, process_services
from orchestrator.settings import Settings
from orchestrator.state.fleet import ServerView
from orchestrator.state.ledger import UNPLACED_STATES, Attempt, Job, JobState
from orchestrator.state.redis_codec import texts
from workers.contract.protocol import CONTROL_QUEUE, DELIVER_TASK

log = logging.getLogger(__name__)

SWEEP_TASK = "ollama_cloud.sweep"
RECOVER_TASK = "ollama_cloud.recover"
DELIVERY_RETRIES = 8
# A job whose delivery keeps failing (the site queue away) is given up this long after its
# deadline, in units of `delivery_stall_s`.
DELIVERY_GRACE_STALLS = 10
# The ledger fields the sweep looks at, for every active job, once a pass.
SWEEP_FIELDS = (
    "state", "attempt", "server_id", "bridge_id", "claimed_at", "deadline", "result_at",
    "delivering_at", "dispatched_at", "started_at",
)  # fmt: skip


def deliver_task(self: Task, payload: dict[str, Any]) -> str:
    services = process_services()
    try:
        return deliver_result(services, payload)
    except (QueueUnreachable, QueueServerError, redis.RedisError) as exc:
        # Brief, growing pauses: the site queue or Redis blinks, it rarely stays away. After
        # the last retry the result stays in the ledger and the sweep delivers it again later.
        countdown = min(10.0, 0.2 * 2**self.request.retries)
        log.warning("job=%s delivery retry in %.1fs: %s", payload.get("job_id"), countdown, exc)
        raise self.retry(exc=exc, countdown=countdown, max_retries=DELIVERY_RETRIES) from exc
    except Exception as exc:
        # Trying again would fail the same way (the queue refused the reply, a bad result):
        # end the job now with the reason, rather than at its deadline.
        log.exception("job=%s delivery failed", payload.get("job_id"))
        return fail_delivery(services, payload, exc)


def fail_delivery(services: Services, payload: dict[str, Any], exc: Exception) -> str:
    job_id, attempt = payload.get("job_id"), payload.get("attempt")
    job = services.ledger.get(job_id) if isinstance(job_id, str) else None
    if job is None or not isinstance(attempt, int):
        return "unknown"
    reason = f"delivery failed: {type(exc).__name__}: {exc}"[:1000]
    ended = give_up(services, job, reason, (JobState.DELIVERING,), attempt=attempt)
    return "dead" if ended else "stale"


def sweep(services: Services, app: Celery | None = None) -> dict[str, int]:
    """One pass over the fleet and the active jobs:

    - jobs on a server that stopped beating go to another server (their result, if the server
      finished them, is delivered instead); its queue is purged of them when it comes back;
    - a result that was not delivered in time is delivered again from the ledger;
    - jobs held by a bridge that stopped beating go to the other bridges;
    - jobs past their deadline are given up (apology if set, complete, dead letter);
    - slots held by jobs that ended are freed; finished jobs past retention are pruned.
    """
    counts = {"rerouted": 0, "redelivered": 0, "handed_over": 0, "given_up": 0}
    now, fleet = services.fleet.read_at()
    by_id = {server.id: server for server in fleet}
    gone: dict[str, str] = {}
    for server in services.fleet.gone_workers(fleet, now):
        if services.fleet.remove_gone(server):
            gone[server.id] = (
                f"its worker's connections to Redis closed, no heartbeat for "
                f"{now - server.last_beat:.1f}s"
            )
            by_id[server.id] = replace(server, online=False)
            log.warning("server=%s worker gone: %s", server.id, gone[server.id])
    counts["released"] = release_leaked(services, fleet)
    counts["purged"] = purge_returned(services, by_id)
    ids = services.ledger.active_job_ids()
    pipe = services.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(services.keys.job(job_id), SWEEP_FIELDS)
    rows = [dict(zip(SWEEP_FIELDS, values, strict=True)) for values in pipe.execute()]
    bridges = sorted({row["bridge_id"] for row in rows if row["bridge_id"]})
    alive = dict(zip(bridges, bridges_alive(services, bridges), strict=True))
    settings = services.settings
    for job_id, row in zip(ids, rows, strict=True):
        state = row["state"]
        deadline = float(row["deadline"] or 0)
        try:
            if state is None:
                services.redis.zrem(services.keys.active_jobs, job_id)
            elif deadline and now > deadline and state not in {"delivering", "dispatched"}:
                counts["given_up"] += give_up_overdue(services, job_id, state)
            elif state == "dispatched":
                check_dispatched(services, job_id, row, by_id, now, counts, app, gone)
            elif state == "delivering":
                stalled = now - float(row["delivering_at"] or 0) > settings.delivery_stall_s
                if deadline and now > deadline + DELIVERY_GRACE_STALLS * settings.delivery_stall_s:
                    counts["given_up"] += give_up_overdue(services, job_id, state)
                elif stalled:
                    counts["redelivered"] += redeliver(services, job_id, "delivering_at", app)
            elif state in {"claimed", "waiting"} and not alive.get(row["bridge_id"] or "", False):
                claimed_at = float(row["claimed_at"] or 0)
                if now - claimed_at > settings.bridge_lost_after_s:
                    counts["handed_over"] += hand_over(services, job_id, row["bridge_id"] or "")
        except (QueueError, redis.RedisError, ValueError) as exc:
            log.error("job=%s sweep could not act on it: %s", job_id, exc)
    counts["pruned"] = services.ledger.prune_finished(settings.finished_retention_s)
    return counts


def check_dispatched(
    services: Services,
    job_id: str,
    row: dict[str, Any],
    by_id: dict[str, ServerView],
    now: float,
    counts: dict[str, int],
    app: Celery | None,
    gone: dict[str, str],
) -> None:
    """A dispatched job: its result may be waiting for a delivery that was lost, or its server
    may have stopped beating (or its worker be `gone`, with why), or it may be past its
    deadline."""
    settings = services.settings
    result_at = float(row["result_at"] or 0)
    if result_at and now - result_at > settings.delivery_stall_s:
        counts["redelivered"] += redeliver(services, job_id, "result_at", app)
        return
    server = by_id.get(row["server_id"] or "")
    deadline = float(row["deadline"] or 0)
    if result_at:
        return
    lost = why_lost(settings, row, server, now, gone)
    if lost is not None:
        job = services.ledger.get(job_id)
        if job is not None and reroute_from_lost(services, job, now, *lost):
            counts["rerouted"] += 1
    elif deadline and now > deadline:
        counts["given_up"] += give_up_overdue(services, job_id, "dispatched")


def why_lost(
    settings: Settings,
    row: dict[str, Any],
    server: ServerView | None,
    now: float,
    gone: dict[str, str],
) -> tuple[str, str] | None:
    """Why a dispatched job without a result will never get one from its server, as an
    attempt's error kind and text; None while it still may."""
    started_at = float(row["started_at"] or 0)
    if not started_at and now - float(row["dispatched_at"] or now) > settings.start_lost_after_s:
        return "not_started", f"no worker began it within {settings.start_lost_after_s:g}s"
    # Begun by a run of the worker that has since restarted (too quickly to be seen silent).
    if server and started_at and started_at < server.booted_at:
        return "worker_restarted", "its worker restarted while running it"
    if server is None or not server.online:
        silent = f"no heartbeat for over {settings.server_lost_after_s:g}s"
        return "server_lost", gone.get(row["server_id"] or "", silent)
    return None


def reroute_from_lost(services: Services, job: Job, now: float, kind: str, error: str) -> bool:
    """The job's server stopped beating, its worker restarted, or no worker began the job (its
    task was lost): it goes to a server again, the attempt moves on (so a late start or result
    of the old one is dropped as stale), and the server's queue is purged when it returns."""
    server_id = job.server_id or ""
    lost = Attempt(attempt=job.attempt, server_id=server_id, error_kind=kind, error=error)
    failures = len(job.failures) + 1
    if failures >= services.settings.max_attempts or now >= job.deadline:
        after = job.model_copy(update={"attempts": [*job.attempts, lost]})
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
        services.redis.sadd(services.keys.lost_servers, server_id)
        log.warning("job=%s server=%s %s: the job goes again", job.id, server_id, kind)
    return moved


def redeliver(services: Services, job_id: str, stamp: str, app: Celery | None) -> int:
    """Send the kept result to delivery again (delivery is idempotent)."""
    job = services.ledger.get(job_id)
    if job is None or not job.result or app is None:
        return 0
    services.redis.hset(services.keys.job(job_id), stamp, f"{time.time():.3f}")
    app.send_task(DELIVER_TASK, args=[json.loads(job.result)], queue=CONTROL_QUEUE)
    log.warning("job=%s result not delivered in time: delivering it again", job_id)
    return 1


def hand_over(services: Services, job_id: str, bridge_id: str) -> int:
    moved = services.ledger.transition(
        job_id,
        (JobState.CLAIMED, JobState.WAITING),
        {"state": JobState.RETRYING.value, "bridge_id": ""},
        retry_at=time.time(),
    )
    if moved:
        log.warning("job=%s its bridge %s stopped: handed to the others", job_id, bridge_id)
    return int(moved)


def give_up_overdue(services: Services, job_id: str, state: str) -> int:
    job = services.ledger.get(job_id)
    if job is None:
        return 0
    if job.state is JobState.ENDING:
        end(services, job, job.reason or "deadline passed")
        return 1
    history = job.history() or "no attempt finished"
    reason = f"deadline passed ({state}) after {len(job.attempts)} failed attempts: {history}"
    allowed = (*UNPLACED_STATES, JobState.DISPATCHED, JobState.DELIVERING)
    return int(give_up(services, job, reason, allowed, attempt=job.attempt))


def bridges_alive(services: Services, bridge_ids: list[str]) -> list[bool]:
    if not bridge_ids:
        return []
    pipe = services.redis.pipeline(transaction=False)
    for bridge_id in bridge_ids:
        pipe.exists(services.keys.bridge(bridge_id))
    return [bool(found) for found in pipe.execute()]


def release_leaked(services: Services, fleet: Iterable[ServerView]) -> int:
    """Free slots held by jobs that ended, vanished, or moved on."""
    released = 0
    for server in fleet:
        for job_id in services.fleet.release_leaked(server.id):
            released += 1
            log.warning("job=%s server=%s slot leaked: released", job_id, server.id)
    return released


def purge_returned(services: Services, by_id: dict[str, ServerView]) -> int:
    """A server that was lost and beats again: drop from its queue the attempts that were
    moved elsewhere meanwhile, before its worker spends time on them."""
    purged = 0
    for server_id in sorted(texts(services.redis.smembers(services.keys.lost_servers))):
        server = by_id.get(server_id)
        if server is None or not server.online:
            continue
        purged += purge_stale_attempts(services, server_id)
        services.redis.srem(services.keys.lost_servers, server_id)
    return purged


def purge_stale_attempts(services: Services, queue: str) -> int:
    """Remove the queued generate tasks whose attempt the ledger has moved past."""
    purged = 0
    for raw in texts(services.redis.lrange(queue, 0, -1)):
        job_id, attempt = queued_attempt(raw)
        if job_id is None:
            continue
        current, state, server = services.redis.hmget(
            services.keys.job(job_id), ["attempt", "state", "server_id"]
        )
        if current == str(attempt) and state == "dispatched" and server == queue:
            continue
        purged += int(services.redis.lrem(queue, 1, raw))
    if purged:
        log.warning("server=%s back: %d stale attempts purged from its queue", queue, purged)
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


def recover(services: Services) -> int:
    """Messages the site shows as `processing` by one of our bridges but that the ledger does
    not hold (a bridge that died between claim and ledger write): taken back in."""
    bridge_ids = set(texts(services.redis.smembers(services.keys.bridges)))
    bridge_ids.add(services.settings.bridge_id)
    now_ms = int(time.time() * 1000)
    after_ms = now_ms - int(services.settings.recover_window_s * 1000)
    recovered = 0
    for message in services.queue.comments_after(after_ms):
        params = message.get("botParams")
        job_id = message.get("id")
        if not isinstance(params, dict) or not isinstance(job_id, str) or not job_id:
            continue
        if params.get("status") != "processing" or params.get("claimedBy") not in bridge_ids:
            continue
        claimed_at = params.get("claimedAt")
        age_s = (now_ms - claimed_at) / 1000 if isinstance(claimed_at, int | float) else 1e9
        if age_s < services.settings.recover_after_s:
            continue
        if services.ledger.record_claim(
            job_id,
            message,
            "",
            services.settings.job_deadline_s,
            state=JobState.RETRYING,
        ):
            services.ledger.transition(job_id, (JobState.RETRYING,), {}, retry_at=time.time())
            recovered += 1
            log.warning(
                "job=%s claimed by %s but missing from the ledger: recovered",
                job_id, params.get("claimedBy"),
            )  # fmt: skip
    return recovered


def locked(services: Services, lock_key: str, timeout: float) -> Any:
    """A non-blocking Redis lock: one sweep (or recovery) at a time, whatever the number of
    beats or control workers."""
    return services.redis.lock(lock_key, timeout=timeout, blocking=False)


def sweep_task(self: Task) -> dict[str, int]:
    services = process_services()
    # Short: a control worker killed mid-pass holds the next passes back only this long.
    lock = locked(
        services, services.keys.beat_lock, max(5.0, 5 * services.settings.sweep_interval_s)
    )
    if not lock.acquire():
        return {}
    try:
        return sweep(services, self.app)
    finally:
        release_quietly(lock)


def recover_task() -> int:
    services = process_services()
    lock = locked(services, services.keys.recover_lock, 30)
    if not lock.acquire():
        return 0
    try:
        return recover(services)
    except QueueError as exc:
        log.warning("recovery: the site queue did not answer: %s", exc)
        return 0
    finally:
        release_quietly(lock)


def release_quietly(lock: Any) -> None:
    try:
        lock.release()
    except redis.exceptions.LockError:
        log.warning("a beat lock expired before its pass ended")


def register(app: Celery) -> None:
    app.task(name=DELIVER_TASK, bind=True, acks_late=True, ignore_result=True)(deliver_task)
    app.task(name=SWEEP_TASK, bind=True, acks_late=False, ignore_result=True, expires=10)(
        sweep_task
    )
    app.task(name=RECOVER_TASK, acks_late=False, ignore_result=True, expires=60)(recover_task)
