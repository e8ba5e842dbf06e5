"""The job ledger in Redis: every claimed message, kept until it ends in a reply or a reason."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, Field

from orchestrator.redis_client import texts
from workers.keys import Keys

log = logging.getLogger(__name__)


class JobState(StrEnum):
    CLAIMED = "claimed"  # in the ledger, not yet placed on a server
    WAITING = "waiting"  # ready, waiting for a free slot
    DISPATCHED = "dispatched"  # sent to a server's queue
    DONE = "done"  # replied (or skipped by the entity's own rules) and completed
    REJECTED = "rejected"  # bad message or entity: completed without a reply
    DEAD = "dead"  # every attempt failed: completed, in the dead letters

    @property
    def finished(self) -> bool:
        return self in {JobState.DONE, JobState.REJECTED, JobState.DEAD}


FINISHED_STATES = frozenset(state.value for state in JobState if state.finished)


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

    @property
    def servers_tried(self) -> list[str]:
        return [entry.server_id for entry in self.attempts]


def job_from_hash(fields: dict[str, str]) -> Job:
    raw: dict[str, Any] = dict(fields)
    raw["message"] = json.loads(fields.get("message") or "{}")
    raw["attempts"] = json.loads(fields.get("attempts") or "[]")
    return Job.model_validate(raw)


# Check the result is for the ledger's current attempt and free its slot, in one step.
# Returns {verdict, job fields, reply posted?, EQ applied?}; verdict 0 unknown, 1 stale, 2 current.
BEGIN_DELIVERY = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {0} end
local attempt, state, server = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state', 'server_id'))
local current = attempt == ARGV[2] and state == 'dispatched'
-- A stale result frees its slot only when the job holds none there any more.
if current or server ~= ARGV[3] or state ~= 'dispatched' then
  if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[4], 'free:' .. ARGV[3])
  end
end
if not current then return {1, fields} end
return {2, fields, redis.call('EXISTS', KEYS[3]), redis.call('EXISTS', KEYS[4])}
"""


@dataclass(frozen=True)
class DeliveryStart:
    job: Job | None
    current: bool
    reply_posted: bool = False
    eq_applied: bool = False


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

    def record_claim(
        self, job_id: str, message: dict[str, Any], bridge_id: str, deadline_s: float
    ) -> bool:
        """Write a just-claimed message first of all. False if the ledger already holds it."""
        now = time.time()
        fields = {
            "id": job_id,
            "state": JobState.CLAIMED.value,
            "message": json.dumps(message, ensure_ascii=False),
            "attempt": 0,
            "bridge_id": bridge_id,
            "claimed_at": now,
            "deadline": now + deadline_s,
        }
        flat = [str(item) for pair in fields.items() for item in pair]
        created = self._record_claim(
            keys=[self.keys.job(job_id), self.keys.active_jobs],
            args=[job_id, now + deadline_s, *flat],
        )
        return bool(created)

    def begin_delivery(self, job_id: str, attempt: int, server_id: str) -> DeliveryStart:
        """Is this result the job's current attempt? Its slot is freed either way, unless the
        job was sent to that same server again."""
        answer = self._begin_delivery(
            keys=[
                self.keys.job(job_id),
                self.keys.inflight(server_id),
                self.keys.once_reply(job_id),
                self.keys.once_eq(job_id),
            ],
            args=[job_id, attempt, server_id, self.keys.slot_events],
        )
        if answer[0] == 0:
            return DeliveryStart(job=None, current=False)
        pairs = texts(answer[1])
        job = job_from_hash(dict(zip(pairs[::2], pairs[1::2], strict=True)))
        if answer[0] == 1:
            return DeliveryStart(job=job, current=False)
        return DeliveryStart(job, True, reply_posted=bool(answer[2]), eq_applied=bool(answer[3]))

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

    def record_attempt(self, job: Job, attempt: Attempt) -> None:
        history = [*job.attempts, attempt]
        self.redis.hset(
            self.keys.job(job.id),
            "attempts",
            json.dumps([entry.model_dump() for entry in history]),
        )

    def finish(
        self, job_id: str, state: JobState, *, reason: str | None = None, outcome: str | None = None
    ) -> None:
        """End a job: it leaves the active set; dead ones go to the dead letters too."""
        pipe = self.redis.pipeline(transaction=True)
        self.queue_finish(pipe, job_id, state, reason=reason, outcome=outcome)
        pipe.execute()

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
        """The commands of `finish`, added to a caller's pipeline to save round trips."""
        now = time.time()
        fields: dict[Any, Any] = {"state": state.value, "finished_at": now, **(extra or {})}
        if reason is not None:
            fields["reason"] = reason[:2000]
        if outcome is not None:
            fields["outcome"] = outcome
        pipe.hset(self.keys.job(job_id), mapping=fields)
        pipe.zrem(self.keys.active_jobs, job_id)
        pipe.zadd(self.keys.finished_jobs, {job_id: now})
        pipe.hincrby(self.keys.counters, outcome or state.value, 1)
        if state is JobState.DEAD:
            pipe.lpush(self.keys.dead_letters, job_id)

    def active_job_ids(self) -> list[str]:
        return list(self.redis.zrange(self.keys.active_jobs, 0, -1))  # type: ignore[arg-type]

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
