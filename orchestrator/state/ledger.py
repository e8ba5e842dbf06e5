"""The job ledger in Redis: every claimed message, kept until it ends in a reply or a reason.

A job moves through its states only by guarded steps (Lua scripts that check the state and the
attempt they expect), so a delivery, the sweep, a second bridge and an operator can all act on
the same job and each step still happens once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, Field

from orchestrator.state.redis_codec import text, texts
from workers.contract.keys import Keys

log = logging.getLogger(__name__)


class JobState(StrEnum):
    CLAIMED = "claimed"  # in the ledger, not yet placed on a server
    WAITING = "waiting"  # ready, held by its bridge until a slot frees
    RETRYING = "retrying"  # to be placed again (failover, a lost server or bridge): any bridge
    DISPATCHED = "dispatched"  # sent to a server's queue
    DELIVERING = "delivering"  # its result is being posted
    ENDING = "ending"  # given up: being completed on the site, then dead
    DONE = "done"  # replied (or skipped by the entity's own rules) and completed
    REJECTED = "rejected"  # bad message or entity, or dropped: completed without a reply
    DEAD = "dead"  # every attempt failed: completed, in the dead letters

    @property
    def finished(self) -> bool:
        return self in {JobState.DONE, JobState.REJECTED, JobState.DEAD}


FINISHED_STATES = frozenset(state.value for state in JobState if state.finished)
# States in which a job is nobody's to run at this moment: the sweep may give it up.
UNPLACED_STATES = (JobState.CLAIMED, JobState.WAITING, JobState.RETRYING)


class Attempt(BaseModel):
    attempt: int
    server_id: str
    error_kind: str | None = None
    error: str | None = None
    at: float = Field(default_factory=time.time)


class Job(BaseModel):
    """A ledger entry, as read back from its hash."""

    id: str
    state: JobState
    message: dict[str, Any]
    attempt: int = 0
    server_id: str | None = None
    bridge_id: str = ""
    entity: str | None = None
    model: str | None = None
    priority: int = 5
    claimed_at: float = 0.0
    dispatched_at: float | None = None
    finished_at: float | None = None
    started_at: float | None = None  # the server began generating
    generated_at: float | None = None  # the server finished generating
    deadline: float = 0.0
    reason: str | None = None
    outcome: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    trim: int = 0  # times the history was cut after a context overflow
    attempts_from: int = 0  # failures before this index were forgiven by an operator's retry
    result: str | None = None  # the generation's result, kept until it is delivered
    result_at: float | None = None
    delivering_at: float | None = None
    apology_posted: bool = False

    @property
    def failures(self) -> list[Attempt]:
        """Failed attempts that count against `max_attempts` (a context overflow does not)."""
        return [
            entry
            for entry in self.attempts[self.attempts_from :]
            if entry.error_kind != "context_overflow"
        ]

    @property
    def servers_tried(self) -> list[str]:
        return [entry.server_id for entry in self.failures]

    def history(self) -> str:
        """Every attempt's server and error, for a dead letter's reason."""
        return "; ".join(
            f"#{entry.attempt} {entry.server_id}: {entry.error_kind}: {entry.error or ''}".strip()
            for entry in self.attempts
        )


def job_from_hash(fields: dict[str, str]) -> Job:
    raw: dict[str, Any] = dict(fields)
    raw["message"] = json.loads(fields.get("message") or "{}")
    raw["attempts"] = json.loads(fields.get("attempts") or "[]")
    raw["apology_posted"] = fields.get("apology_posted") == "1"
    return Job.model_validate(raw)


def flatten(fields: dict[str, Any]) -> list[str]:
    return [str(item) for pair in fields.items() for item in pair]


# Check the result is for the ledger's current attempt and free its slot, in one step; a current
# one moves the job to `delivering`. Returns {verdict, job fields, reply posted?, EQ applied?};
# verdict 0 unknown, 1 stale, 2 current.
BEGIN_DELIVERY = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {0} end
local attempt, state, server = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state', 'server_id'))
-- A delivery that was interrupted may begin again: delivering is idempotent.
local current = attempt == ARGV[2] and server == ARGV[3]
  and (state == 'dispatched' or state == 'delivering')
-- A stale result frees its slot only when the job holds none there any more.
if current or server ~= ARGV[3] or state ~= 'dispatched' then
  if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[4], 'free:' .. ARGV[3])
  end
end
if not current then return {1, fields} end
-- Each delivery (again) stamps its start, so the sweep leaves a delivery in progress alone.
redis.call('HSET', KEYS[1], 'state', 'delivering', 'delivering_at', ARGV[5])
return {2, fields, redis.call('EXISTS', KEYS[3]), redis.call('GET', KEYS[4])}
"""

# Move a job on from one of the states given, if its attempt (and server) are still the ones
# expected. A job leaving `dispatched` gives its slot back. Optionally it is queued for any
# bridge to place again.
# KEYS: job, retry set. ARGV: job id, attempt ('' any), allowed states (comma separated),
# server ('' any), inflight key prefix, event channel, retry due time ('' none), field pairs.
TRANSITION = """
local attempt, state, server = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state', 'server_id'))
if not state then return 0 end
if ARGV[2] ~= '' and attempt ~= ARGV[2] then return 0 end
if not string.find(',' .. ARGV[3] .. ',', ',' .. state .. ',', 1, true) then return 0 end
if ARGV[4] ~= '' and server ~= ARGV[4] then return 0 end
if state == 'dispatched' and server then
  if redis.call('SREM', ARGV[5] .. server, ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[6], 'free:' .. server)
  end
end
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
  redis.call('PUBLISH', ARGV[6], 'retry:' .. ARGV[7])
end
return 1
"""

# End a job once: a repeated end (two deliveries of one result) changes and counts nothing.
# KEYS: job, active, retry, finished, counters, dead letters.
# ARGV: job id, now, counter name, dead (1/0), field pairs.
FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'done' or state == 'rejected' or state == 'dead' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('HDEL', KEYS[1], 'result')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
if ARGV[4] == '1' then redis.call('LPUSH', KEYS[6], ARGV[1]) end
return 1
"""

# Hand the due retries to one bridge: each job is taken by exactly one.
# KEYS: retry set. ARGV: now, how many, job key prefix, bridge id.
TAKE_RETRIES = """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'state') == 'retrying' then
    redis.call('HSET', key, 'state', 'waiting', 'bridge_id', ARGV[4])
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
"""


@dataclass(frozen=True)
class DeliveryStart:
    job: Job | None
    current: bool
    reply_posted: bool = False
    eq_guard: str | None = None  # the EQ once-guard's value: None, "pending:<time>", or done


# Create the job and index it in one step, or not at all if it exists.
RECORD_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


class Ledger:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._record_claim = client.register_script(RECORD_CLAIM)
        self._begin_delivery = client.register_script(BEGIN_DELIVERY)
        self._transition = client.register_script(TRANSITION)
        self._finish = client.register_script(FINISH)
        self._take_retries = client.register_script(TAKE_RETRIES)

    def record_claim(
        self,
        job_id: str,
        message: dict[str, Any],
        bridge_id: str,
        deadline_s: float,
        state: JobState = JobState.CLAIMED,
    ) -> bool:
        """Write a just-claimed message first of all. False if the ledger already holds it."""
        now = time.time()
        fields = {
            "id": job_id,
            "state": state.value,
            # ASCII-escaped: any text the site sent, even a lone surrogate, is stored as it came.
            "message": json.dumps(message),
            "attempt": 0,
            "bridge_id": bridge_id,
            "claimed_at": now,
            "deadline": now + deadline_s,
        }
        created = self._record_claim(
            keys=[self.keys.job(job_id), self.keys.active_jobs],
            args=[job_id, now + deadline_s, *flatten(fields)],
        )
        return bool(created)

    def begin_delivery(self, job_id: str, attempt: int, server_id: str) -> DeliveryStart:
        """Is this result the job's current attempt? Its slot is freed either way, unless the
        job was sent to that same server again. A current one is now `delivering`."""
        answer = self._begin_delivery(
            keys=[
                self.keys.job(job_id),
                self.keys.inflight(server_id),
                self.keys.once_reply(job_id),
                self.keys.once_eq(job_id),
            ],
            args=[job_id, attempt, server_id, self.keys.slot_events, time.time()],
        )
        if answer[0] == 0:
            return DeliveryStart(job=None, current=False)
        pairs = texts(answer[1])
        job = job_from_hash(dict(zip(pairs[::2], pairs[1::2], strict=True)))
        if answer[0] == 1:
            return DeliveryStart(job=job, current=False)
        guard = answer[3] if len(answer) > 3 and answer[3] else None
        return DeliveryStart(
            job, True, reply_posted=bool(answer[2]), eq_guard=text(guard) if guard else None
        )

    def transition(
        self,
        job_id: str,
        allowed: tuple[JobState, ...],
        fields: dict[str, Any],
        *,
        attempt: int | None = None,
        server_id: str | None = None,
        retry_at: float | None = None,
    ) -> bool:
        """Move the job on if it is still in one of `allowed` (at `attempt`, on `server_id`);
        True if this call moved it. `retry_at` queues it for any bridge to place again."""
        moved = self._transition(
            keys=[self.keys.job(job_id), self.keys.retry_jobs],
            args=[
                job_id,
                "" if attempt is None else attempt,
                ",".join(state.value for state in allowed),
                server_id or "",
                self.keys.inflight(""),
                self.keys.slot_events,
                "" if retry_at is None else f"{retry_at:.3f}",
                *flatten(fields),
            ],
        )
        return bool(moved)

    def schedule_retry(
        self,
        job: Job,
        allowed: tuple[JobState, ...],
        *,
        at: float,
        failed: Attempt | None = None,
        fields: dict[str, Any] | None = None,
        attempt: int | None = None,
        server_id: str | None = None,
    ) -> bool:
        """Queue the job to be placed again at `at` by whichever bridge is free, recording the
        failed attempt in its history."""
        extra: dict[str, Any] = {
            "state": JobState.RETRYING.value,
            "bridge_id": "",
            **(fields or {}),
        }
        if failed is not None:
            extra["attempts"] = attempts_json([*job.attempts, failed])
            extra["last_error"] = f"{failed.error_kind}: {failed.error or ''}"[:500]
        return self.transition(
            job.id, allowed, extra, attempt=attempt, server_id=server_id, retry_at=at
        )

    def take_retries(self, bridge_id: str, limit: int = 50) -> list[Job]:
        """The retries due now, each now held (`waiting`) by this bridge alone."""
        answer = self._take_retries(
            keys=[self.keys.retry_jobs],
            args=[f"{time.time():.3f}", limit, self.keys.job(""), bridge_id],
        )
        jobs = []
        for flat in answer:
            pairs = texts(flat)
            jobs.append(job_from_hash(dict(zip(pairs[::2], pairs[1::2], strict=True))))
        return jobs

    def get(self, job_id: str) -> Job | None:
        fields: dict[str, str] = self.redis.hgetall(self.keys.job(job_id))  # type: ignore[assignment]
        if not fields or "state" not in fields:
            return None
        return job_from_hash(fields)

    def get_many(self, job_ids: list[str]) -> list[Job]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [job_from_hash(fields) for fields in pipe.execute() if fields and "state" in fields]

    def mark_ready(self, job_id: str, entity: str, model: str, priority: int) -> None:
        self.redis.hset(
            self.keys.job(job_id),
            mapping={
                "state": JobState.WAITING.value,
                "entity": entity,
                "model": model,
                "priority": priority,
            },
        )

    def finish(
        self, job_id: str, state: JobState, *, reason: str | None = None, outcome: str | None = None
    ) -> bool:
        """End a job once: it leaves the active set; dead ones go to the dead letters too.
        False if it had already ended."""
        pipe = self.redis.pipeline(transaction=True)
        self.queue_finish(pipe, job_id, state, reason=reason, outcome=outcome)
        return bool(pipe.execute()[0])

    def queue_finish(
        self,
        pipe: redis.client.Pipeline,
        job_id: str,
        state: JobState,
        *,
        reason: str | None = None,
        outcome: str | None = None,
        extra: dict[str, float] | None = None,
    ) -> None:
        """The `finish` script, added to a caller's pipeline to save round trips."""
        now = time.time()
        fields: dict[str, Any] = {"state": state.value, "finished_at": now, **(extra or {})}
        if reason is not None:
            fields["reason"] = reason[:2000]
        if outcome is not None:
            fields["outcome"] = outcome
        keys = self.keys
        self._finish(
            keys=[
                keys.job(job_id),
                keys.active_jobs,
                keys.retry_jobs,
                keys.finished_jobs,
                keys.counters,
                keys.dead_letters,
            ],
            args=[
                job_id,
                now,
                outcome or state.value,
                "1" if state is JobState.DEAD else "0",
                *flatten(fields),
            ],
            client=pipe,
        )

    def active_job_ids(self) -> list[str]:
        return list(self.redis.zrange(self.keys.active_jobs, 0, -1))  # type: ignore[arg-type]

    def overdue_job_ids(self, now: float, limit: int = 200) -> list[str]:
        """Active jobs past their deadline, oldest deadline first."""
        return list(
            self.redis.zrangebyscore(self.keys.active_jobs, "-inf", now, start=0, num=limit)  # type: ignore[arg-type]
        )

    def dead_job_ids(self, limit: int = 1000) -> list[str]:
        return list(self.redis.lrange(self.keys.dead_letters, 0, limit - 1))  # type: ignore[arg-type]

    def counters(self) -> dict[str, int]:
        raw: dict[str, str] = self.redis.hgetall(self.keys.counters)  # type: ignore[assignment]
        return {name: int(value) for name, value in raw.items()}

    def prune_finished(self, older_than_s: float) -> int:
        """Drop finished jobs past their retention (dead letters are kept)."""
        cutoff = time.time() - older_than_s
        old: list[str] = self.redis.zrangebyscore(
            self.keys.finished_jobs, 0, cutoff, start=0, num=500
        )  # type: ignore[assignment]
        if not old:
            return 0
        dead = set(self.redis.lrange(self.keys.dead_letters, 0, -1))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in old:
            if job_id not in dead:
                pipe.delete(
                    self.keys.job(job_id), self.keys.once_reply(job_id), self.keys.once_eq(job_id)
                )
            pipe.zrem(self.keys.finished_jobs, job_id)
        pipe.execute()
        return len(old)


def attempts_json(attempts: list[Attempt]) -> str:
    return json.dumps([entry.model_dump() for entry in attempts])
