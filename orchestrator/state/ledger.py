"""The job ledger in Redis: every claimed message, kept until it ends in a reply or a reason.

This is the only code of the orchestrator that reads or writes a job's keys (its hash, the
indexes it sits in, its once-guards); the worker's two steps on a job are in
`workers.contract.attempts`. Every change is a guarded step (a script that checks the state,
attempt, server or bridge it expects), so a delivery, the sweep, a second bridge and an
operator can all act on the same job and each step still happens once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

import redis

from orchestrator.domain.job import Attempt, Job, JobKind, Outcome, score_job_id
from orchestrator.errors import JobRefused
from orchestrator.state.metrics import REROUTED, Figure
from workers.contract.job import HELD_BY_BRIDGE, JobState, may_step
from workers.contract.keys import Keys
from workers.contract.scripts import pairs_to_dict, register

log = logging.getLogger(__name__)
REFUSED_KEPT = 1000  # refused messages kept for an operator to see, newest first

ONCE_GUARD_TTL_S = 7 * 86400
# A finished score's once-guard lingers this long, for a delivery of its result still on its
# way (one that began before the finish must not find the guard gone).
ONCE_GUARD_LINGER_S = 600
REASON_CHARS = 2000
ERROR_CHARS = 500


class Claim(IntEnum):
    """What came of writing a claim."""

    KNOWN = 0  # the ledger already held the message: nothing written
    WRITTEN = 1  # its jobs are written
    SCORE_ID_TAKEN = 2  # its reply's job is written; its score's id was another job's


def stamp(at: float) -> str:
    """A time as the ledger writes it: seconds to the millisecond, enough for any reading and
    short enough to keep a finished job's hash in Redis's compact encoding."""
    return f"{at:.3f}"


@dataclass(frozen=True)
class ClaimNote:
    """A claim a bridge began: when, and how old the message it gets may be at most."""

    id: str  # unique to the claim: the bridge's id, its run's and a count
    bridge_id: str
    at_ms: int  # when the bridge asked, on its clock
    floor_ms: int  # the message was posted after this: the site had nothing pending then

    def value(self) -> str:
        return f"{self.at_ms}:{self.floor_ms}:{self.bridge_id}"

    @classmethod
    def read(cls, note_id: str, value: str) -> ClaimNote | None:
        at, _, rest = value.partition(":")
        floor, _, bridge_id = rest.partition(":")
        try:
            return cls(note_id, bridge_id, int(at), int(floor))
        except ValueError:
            return None


class Reservation(IntEnum):
    """What came of asking for a slot for a job."""

    NOT_OURS = -1  # the job is no longer the asking bridge's to place (moved, given up)
    FULL = 0  # the server has no free slot
    TAKEN = 1  # the slot is the job's, and the job is dispatched there


@dataclass(frozen=True)
class DeliveryStart:
    job: Job | None
    current: bool
    eq_guard: str | None = None  # the EQ once-guard's value: None, "pending:<time>", or done


@dataclass(frozen=True)
class JobRow:
    """The fields of an active job that the sweep judges it by."""

    id: str
    state: JobState
    attempt: int
    server_id: str
    bridge_id: str
    claimed_at: float
    deadline: float
    dispatched_at: float | None
    started_at: float
    result_at: float
    delivering_at: float


ROW_FIELDS = (
    "state", "attempt", "server_id", "bridge_id", "claimed_at", "deadline", "dispatched_at",
    "started_at", "result_at", "delivering_at",
)  # fmt: skip


def _row(job_id: str, values: list[str | None]) -> JobRow | None:
    fields = dict(zip(ROW_FIELDS, values, strict=True))
    if fields["state"] is None:
        return None

    def number(name: str) -> float:
        return float(fields[name] or 0)

    return JobRow(
        id=job_id,
        state=JobState(fields["state"]),
        attempt=int(fields["attempt"] or 0),
        server_id=fields["server_id"] or "",
        bridge_id=fields["bridge_id"] or "",
        claimed_at=number("claimed_at"),
        deadline=number("deadline"),
        dispatched_at=float(fields["dispatched_at"]) if fields["dispatched_at"] else None,
        started_at=number("started_at"),
        result_at=number("result_at"),
        delivering_at=number("delivering_at"),
    )


def flatten(fields: dict[str, Any]) -> list[str]:
    return [str(item) for pair in fields.items() for item in pair]


@dataclass(frozen=True)
class Kept:
    """How many of one kind of letter are kept, and when the oldest and newest came."""

    count: int
    oldest_at: float | None
    newest_at: float | None


@dataclass(frozen=True)
class Letters:
    dead: Kept  # replies given up
    lost_scores: Kept
    broker: Kept  # poison items taken from a queue (workers.contract.broker)
    refused: Kept  # messages refused before they became jobs


def _entry_at(entry: str | None) -> float | None:
    """When a JSON entry of a bounded list was written (its `at`)."""
    if entry is None:
        return None
    try:
        at = json.loads(entry).get("at")
    except (ValueError, AttributeError):
        return None
    return float(at) if isinstance(at, int | float) else None


def attempts_json(attempts: list[Attempt]) -> str:
    return json.dumps([entry.model_dump(mode="json") for entry in attempts])


class Ledger:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        finished_retention_s: float = 86400.0,
        dead_retention_s: float = 7 * 86400.0,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.finished_retention_s = finished_retention_s
        self.dead_retention_s = dead_retention_s
        self._record_claims = register(client, "record_claims")
        self._move = register(client, "move")
        self._finish = register(client, "finish")
        self._take_retries = register(client, "take_retries")
        self._begin_delivery = register(client, "begin_delivery")
        self._reserve = register(client, "reserve")
        self._release_leaked = register(client, "release_leaked")
        self._revive = register(client, "revive")
        self._add_figures = register(client, "add_figures")

    # Reading ------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        fields: dict[str, str] = self.redis.hgetall(self.keys.job(job_id))  # type: ignore[assignment]
        if not fields or "state" not in fields:
            return None
        return Job.from_hash(fields)

    def get_many(self, job_ids: Iterable[str]) -> list[Job]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [Job.from_hash(fields) for fields in pipe.execute() if fields and "state" in fields]

    def states(self, job_ids: list[str]) -> list[JobState | None]:
        """Each job's state, None for one the ledger does not hold."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), "state")
        return [JobState(state) if state else None for state in pipe.execute()]

    def active_job_ids(self, limit: int | None = None) -> list[str]:
        """Jobs not yet finished, soonest deadline first."""
        end = -1 if limit is None else limit - 1
        return list(self.redis.zrange(self.keys.active_jobs, 0, end))  # type: ignore[arg-type]

    def dead_job_ids(self, limit: int = 1000) -> list[str]:
        """Dead letters, newest first, then the lost scores within the retention, newest
        first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(self.keys.dead_letters, 0, limit - 1)
        pipe.zrevrange(self.keys.lost_scores, 0, limit - 1)
        dead, lost = pipe.execute()
        return [*dead, *lost][:limit]

    def expire_letters(self, now: float) -> int:
        """Forget the dead letters and lost scores past their retention (their hashes have
        expired already); how many went."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.dead_letters, "-inf", f"({now - self.dead_retention_s}")
        pipe.zremrangebyscore(self.keys.lost_scores, "-inf", f"({now - self.finished_retention_s}")
        return sum(int(gone) for gone in pipe.execute())

    def letters(self) -> Letters:
        """How many of each kind of letter are kept, and the oldest and newest of each."""
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        for index in (keys.dead_letters, keys.lost_scores):
            pipe.zcard(index)
            pipe.zrange(index, 0, 0, withscores=True)
            pipe.zrange(index, -1, -1, withscores=True)
        for entries in (keys.broker_dead_letters, keys.refused_messages):
            pipe.llen(entries)
            pipe.lindex(entries, -1)
            pipe.lindex(entries, 0)
        answers = pipe.execute()
        kept = []
        for at in range(0, 6, 3):
            count, oldest, newest = answers[at : at + 3]
            kept.append(Kept(int(count), oldest[0][1] if oldest else None,
                             newest[0][1] if newest else None))  # fmt: skip
        for at in range(6, 12, 3):
            count, oldest, newest = answers[at : at + 3]
            kept.append(Kept(int(count), _entry_at(oldest), _entry_at(newest)))
        return Letters(*kept)

    def totals(self) -> tuple[int, int]:
        """How many jobs are active, and how many are dead letters (lost scores included)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.active_jobs)
        pipe.zcard(self.keys.dead_letters)
        pipe.zcard(self.keys.lost_scores)
        active, dead, lost = pipe.execute()
        return int(active), int(dead) + int(lost)

    def retrying_count(self) -> int:
        """How many jobs are queued to be placed again (failover, sweep, recovery)."""
        return int(self.redis.zcard(self.keys.retry_jobs))

    def finished_count(self) -> int:
        """How many jobs have finished."""
        return int(cast(str | None, self.redis.get(self.keys.finished_jobs)) or 0)

    def held_by(self, bridge_id: str) -> list[Job]:
        """The active jobs this bridge holds and has not yet dispatched."""
        return [
            job
            for job in self.get_many(self.active_job_ids())
            if job.bridge_id == bridge_id and job.state in HELD_BY_BRIDGE
        ]

    def counters(self) -> dict[str, int]:
        raw: dict[str, str] = self.redis.hgetall(self.keys.counters)  # type: ignore[assignment]
        return {name: int(value) for name, value in raw.items()}

    def count(self, name: str) -> None:
        """One more of an outcome that has no job to record it on (a message without an id)."""
        self.redis.hincrby(self.keys.counters, name, 1)

    def note_refused(self, what: str, reason: str, *, kept: int = REFUSED_KEPT) -> None:
        """A message that could not become a job (its id cannot be kept, its answer was too
        large to read): `what` (an escaped excerpt of its id) and why, in a bounded list."""
        entry = json.dumps({"at": round(time.time(), 3), "what": what, "reason": reason})
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.keys.refused_messages, entry)
        pipe.ltrim(self.keys.refused_messages, 0, kept - 1)
        pipe.execute()

    def refused(self, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """How many refused messages are kept, and the newest `limit` of them."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.keys.refused_messages)
        pipe.lrange(self.keys.refused_messages, 0, limit - 1)
        count, entries = pipe.execute()
        return int(count), [json.loads(entry) for entry in entries]

    # Claims -------------------------------------------------------------------------------

    def record_claim(
        self,
        message_id: str,
        message: dict[str, Any],
        bridge_id: str,
        deadline_s: float,
        *,
        scored: bool,
        state: JobState = JobState.CLAIMED,
        note: str = "",
    ) -> Claim:
        """Write a just-claimed message first of all: its reply's job and, when `scored`, its
        score's, in one step; the claim's `note` goes with it."""
        now = time.time()
        deadline = now + deadline_s
        reply = self._new_job(message_id, JobKind.REPLY, message, bridge_id, state, now, deadline)
        score_id = score_job_id(message_id) if scored else ""
        score: list[str] = []
        if scored:
            # The score needs the message's text, not its history.
            slim = {name: value for name, value in message.items() if name != "context"}
            score = self._new_job(score_id, JobKind.SCORE, slim, bridge_id, state, now, deadline)
        written = self._record_claims(
            keys=[
                self.keys.active_jobs,
                self.keys.job(message_id),
                self.keys.job(score_id),
                self.keys.claim_notes,
            ],
            args=[deadline, message_id, score_id, note, len(reply), *reply, *score],
        )
        return Claim(int(written))

    @staticmethod
    def _new_job(
        job_id: str,
        kind: JobKind,
        message: dict[str, Any],
        bridge_id: str,
        state: JobState,
        now: float,
        deadline: float,
    ) -> list[str]:
        return flatten(
            {
                "id": job_id,
                "kind": kind.value,
                "state": state.value,
                # ASCII-escaped: any text the site sent, even a lone surrogate, is kept as it came.
                "message": json.dumps(message),
                "attempt": 0,
                "bridge_id": bridge_id,
                "claimed_at": stamp(now),
                "deadline": stamp(deadline),
            }
        )

    def recover_claim(
        self, message_id: str, message: dict[str, Any], deadline_s: float, *, scored: bool
    ) -> bool:
        """A claim the ledger missed (its bridge died before writing it): its jobs written,
        and queued for any bridge to place. False if the ledger already holds it."""
        claim = self.record_claim(
            message_id, message, "", deadline_s, scored=scored, state=JobState.RETRYING
        )
        if claim is Claim.KNOWN:
            return False
        now = time.time()
        self._step(message_id, (JobState.RETRYING,), {}, retry_at=now)
        if claim is Claim.WRITTEN and scored:
            self._step(score_job_id(message_id), (JobState.RETRYING,), {}, retry_at=now)
        return True

    def mark_waiting(
        self, job_id: str, bridge_id: str, *, entity: str, model: str, priority: int
    ) -> bool:
        """The job is ready and waits in its bridge for a slot. False if the bridge no longer
        holds it (handed over or given up meanwhile)."""
        fields = {
            "state": JobState.WAITING.value,
            "entity": entity,
            "model": model,
            "priority": priority,
        }
        return self._step(job_id, HELD_BY_BRIDGE, fields, bridge_id=bridge_id)

    # Placing ------------------------------------------------------------------------------

    def reserve(
        self,
        job_id: str,
        server_id: str,
        capacity: int,
        *,
        attempt: int,
        entity: str,
        model: str,
        priority: int,
        bridge_id: str,
        model_slots: int = 0,
    ) -> Reservation:
        """Take one of the server's slots for the job and record it dispatched there, in one
        step: never more than `capacity` jobs on the server, nor more than `model_slots` of
        its model when the model has slots of its own, and only while `bridge_id` holds the
        job."""
        dispatched = {
            "state": JobState.DISPATCHED.value,
            "attempt": str(attempt),
            "server_id": server_id,
            "dispatched_at": stamp(time.time()),
            # Not begun, no result: what an earlier attempt noted must not hide a lost task or
            # a lost server from the sweep.
            "started_at": "0",
            "result_at": "0",
            "entity": entity,
            "model": model,
            "priority": str(priority),
        }
        taken = self._reserve(
            keys=[self.keys.inflight(server_id), self.keys.job(job_id)],
            args=[capacity, job_id, bridge_id, model, model_slots, *flatten(dispatched)],
        )
        return Reservation(int(taken))

    def undo_dispatch(self, job_id: str, attempt: int) -> bool:
        """The task could not be sent: the job waits in its bridge again, its slot given back."""
        fields = {"state": JobState.WAITING.value}
        return self._step(job_id, (JobState.DISPATCHED,), fields, attempt=attempt)

    def hand_back(self, job_id: str, bridge_id: str = "") -> bool:
        """A job its bridge held (`bridge_id`, or whichever) goes to the retry set, for any
        bridge to place: its bridge stopped, or stopped beating."""
        fields = {"state": JobState.RETRYING.value, "bridge_id": ""}
        return self._step(job_id, HELD_BY_BRIDGE, fields, bridge_id=bridge_id, retry_at=time.time())

    def schedule_retry(
        self,
        job: Job,
        allowed: tuple[JobState, ...],
        *,
        at: float,
        failed: Attempt | None = None,
        trim: int | None = None,
        attempt: int | None = None,
        server_id: str | None = None,
    ) -> bool:
        """Queue the job to be placed again at `at` by whichever bridge is free, recording the
        failed attempt in its history (and how far its history is to be cut)."""
        fields: dict[str, Any] = {"state": JobState.RETRYING.value, "bridge_id": ""}
        if trim is not None:
            fields["trim"] = trim
        if failed is not None:
            fields["attempts"] = attempts_json([*job.attempts, failed])
            fields["last_error"] = failed.describe()[:ERROR_CHARS]
        moved = self._step(
            job.id, allowed, fields, attempt=attempt, server_id=server_id, retry_at=at
        )
        if moved:
            reason = failed.error_kind if failed is not None and failed.error_kind else "other"
            self.redis.hincrby(self.keys.metric_counts, f"{REROUTED}:{job.kind}:{reason}", 1)
        return moved

    def take_retries(self, bridge_id: str, limit: int = 50) -> list[Job]:
        """The retries due now, each now held (`waiting`) by this bridge alone."""
        answer = self._take_retries(
            keys=[self.keys.retry_jobs],
            args=[stamp(time.time()), limit, self.keys.job_prefix, bridge_id],
        )
        return [Job.from_hash(pairs_to_dict(flat)) for flat in answer]

    def next_retry_at(self) -> float | None:
        """When the soonest retry is due, if any is queued."""
        upcoming = cast(
            list[tuple[str, float]], self.redis.zrange(self.keys.retry_jobs, 0, 0, withscores=True)
        )
        return float(upcoming[0][1]) if upcoming else None

    # Delivering ---------------------------------------------------------------------------

    def begin_delivery(
        self, job_id: str, attempt: int, server_id: str, result: str
    ) -> DeliveryStart:
        """Is this result the job's current attempt? Its slot is freed either way, unless the
        job was sent to that same server again. A current one is now `delivering`, its `result`
        (JSON) kept: its worker keeps it only after sending it, and may lose the race."""
        answer = self._begin_delivery(
            keys=[
                self.keys.job(job_id),
                self.keys.inflight(server_id),
                self.keys.once_eq(job_id),
            ],
            args=[job_id, attempt, server_id, self.keys.slot_events, stamp(time.time()), result],
        )
        if answer[0] == 0:
            return DeliveryStart(job=None, current=False)
        job = Job.from_hash(pairs_to_dict(answer[1]))
        if answer[0] == 1:
            return DeliveryStart(job=job, current=False)
        guard = answer[2] if len(answer) > 2 and answer[2] else None
        return DeliveryStart(job, True, eq_guard=guard)

    def claim_eq_guard(self, job_id: str, value: str) -> str | None:
        """Set the EQ once-guard to `value` if nothing holds it; else what holds it."""
        key = self.keys.once_eq(job_id)
        if self.redis.set(key, value, nx=True, ex=ONCE_GUARD_TTL_S):
            return None
        return str(self.redis.get(key) or "")

    def set_eq_guard(self, job_id: str, value: str | float) -> None:
        self.redis.set(self.keys.once_eq(job_id), value, ex=ONCE_GUARD_TTL_S)

    def lift_eq_guard(self, job_id: str) -> None:
        self.redis.delete(self.keys.once_eq(job_id))

    def note_redelivery(self, job_id: str, state: JobState) -> bool:
        """Stamp a redelivery of the kept result, so the sweep waits a stall again before the
        next: `result_at` while dispatched, `delivering_at` while delivering."""
        field = "result_at" if state is JobState.DISPATCHED else "delivering_at"
        return self._step(job_id, (state,), {field: stamp(time.time())})

    # Ending -------------------------------------------------------------------------------

    def begin_ending(
        self,
        job: Job,
        reason: str,
        allowed: tuple[JobState, ...],
        *,
        attempt: int | None = None,
    ) -> bool:
        """Take the job from one of the states `allowed` (once, whoever else tries) to
        `ending`, with its reason and attempts; ending it is then the caller's."""
        fields = {
            "state": JobState.ENDING.value,
            "reason": reason[:REASON_CHARS],
            "attempts": attempts_json(job.attempts),
        }
        return self._step(job.id, allowed, fields, attempt=attempt)

    def note_apology(self, job_id: str) -> bool:
        """The operator's apology was posted in the reply's place: the job cannot be retried."""
        return self._step(job_id, (JobState.ENDING,), {"apology_posted": "1"})

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        reason: str | None = None,
        outcome: Outcome | None = None,
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
        outcome: Outcome | None = None,
        started_at: float | None = None,
        generated_at: float | None = None,
        score: int | None = None,
        figures: list[Figure] | None = None,
    ) -> None:
        """The `finish` step, added to a caller's pipeline to save round trips. A finished job
        keeps a compact summary: not its message (but for a dead letter, which may be retried),
        nor its result, nor its once-guards (a finished job takes no delivery again). Its
        `figures` (for the metrics) are added with it, once, when `pipe` is a transaction."""
        if not state.finished:
            raise ValueError(f"{state} is not a finished state")
        now = time.time()
        fields: dict[str, Any] = {"state": state.value, "finished_at": stamp(now)}
        if started_at is not None:
            fields["started_at"] = stamp(started_at)
        if generated_at is not None:
            fields["generated_at"] = stamp(generated_at)
        if score is not None:
            fields["score"] = score
        if reason is not None:
            fields["reason"] = reason[:REASON_CHARS]
        if outcome is not None:
            fields["outcome"] = outcome
        if state is not JobState.DEAD:
            kept = "summary"
        else:
            kept = "lost" if outcome == Outcome.SCORE_LOST else "letter"
        keys = self.keys
        if figures:
            hashes = sorted({figure.key for figure in figures})
            where = {key: str(index) for index, key in enumerate(hashes, start=2)}
            self._add_figures(
                keys=[keys.job(job_id), *hashes],
                args=[str(item) for figure in figures
                      for item in (where[figure.key], figure.field, figure.amount)],
                client=pipe,
            )  # fmt: skip
        self._finish(
            keys=[
                keys.job(job_id),
                keys.active_jobs,
                keys.retry_jobs,
                keys.finished_jobs,
                keys.counters,
                keys.dead_letters,
                keys.once_eq(job_id),
                keys.lost_scores,
                keys.metric_counts,
            ],
            args=[
                job_id,
                stamp(now),
                outcome or state.value,
                kept,
                int(self.finished_retention_s * 1000),
                ONCE_GUARD_LINGER_S * 1000,
                int(self.dead_retention_s * 1000),
                *flatten(fields),
            ],
            client=pipe,
        )

    # The sweep ----------------------------------------------------------------------------

    def active_rows(self) -> list[tuple[str, JobRow | None]]:
        """Every active job's id with what the sweep judges it by; None for an id whose job
        is gone. A job whose fields do not read is left out, with a log line."""
        ids = self.active_job_ids()
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(job_id), ROW_FIELDS)
        rows: list[tuple[str, JobRow | None]] = []
        for job_id, values in zip(ids, pipe.execute(), strict=True):
            try:
                rows.append((job_id, _row(job_id, values)))
            except ValueError as exc:
                log.error("job=%s ledger entry unreadable, left as it is: %s", job_id, exc)
        return rows

    def forget(self, job_id: str) -> None:
        """An active job whose hash is gone leaves the active set."""
        self.redis.zrem(self.keys.active_jobs, job_id)

    def release_leaked(self, server_id: str) -> list[str]:
        """Free the server's slots held by jobs that no longer hold them; their ids."""
        freed = self._release_leaked(
            keys=[self.keys.inflight(server_id)],
            args=[self.keys.job_prefix, server_id, self.keys.slot_events],
        )
        return list(freed)

    def current_attempts(self, attempts: list[tuple[str, int]], server_id: str) -> list[bool]:
        """For each (job, attempt): is it the job's current attempt, dispatched to that
        server?"""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, _ in attempts:
            pipe.hmget(self.keys.job(job_id), ["attempt", "state", "server_id"])
        return [
            current == str(attempt) and state == JobState.DISPATCHED and server == server_id
            for (_, attempt), (current, state, server) in zip(attempts, pipe.execute(), strict=True)
        ]

    # Bridges ------------------------------------------------------------------------------

    def say_alive(self, bridge_id: str, ttl_s: float) -> None:
        """While this key lives, the jobs the bridge holds are its own; when it expires the
        sweep hands them to other bridges."""
        self.redis.set(self.keys.bridge(bridge_id), stamp(time.time()), px=int(ttl_s * 1000))

    def bridges_alive(self, bridge_ids: list[str]) -> list[bool]:
        if not bridge_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for bridge_id in bridge_ids:
            pipe.exists(self.keys.bridge(bridge_id))
        return [bool(found) for found in pipe.execute()]

    # Claims in the making -------------------------------------------------------------------

    def note_claim(self, note: ClaimNote) -> None:
        """Before a bridge asks the site for a message: should its jobs never be written (the
        bridge killed meanwhile, the answer lost), recovery looks for it."""
        self.redis.hset(self.keys.claim_notes, note.id, note.value())

    def drop_claim_note(self, note_id: str) -> None:
        """The claim came to nothing on the site (nothing pending, or never sent)."""
        self.redis.hdel(self.keys.claim_notes, note_id)

    def note_site_empty(self, at_ms: int) -> None:
        """The site had nothing pending at `at_ms`: whatever is claimed later was posted later.
        Shared by every bridge, and kept across their restarts."""
        self.redis.zadd(self.keys.site_seen_empty, {"at": at_ms}, gt=True)

    def site_seen_empty_ms(self) -> int | None:
        at = self.redis.zscore(self.keys.site_seen_empty, "at")
        return None if at is None else int(at)

    def claim_notes(self) -> list[ClaimNote]:
        notes = self.redis.hgetall(self.keys.claim_notes)
        return [
            note
            for note_id, value in cast(dict[str, str], notes).items()
            if (note := ClaimNote.read(note_id, value)) is not None
        ]

    def forget_claim_notes(self, note_ids: list[str]) -> None:
        if note_ids:
            self.redis.hdel(self.keys.claim_notes, *note_ids)

    # An operator's levers -----------------------------------------------------------------

    def revive(self, job_id: str, deadline_s: float) -> Job:
        """Place a dead letter again, on any server, with its failures so far forgiven and a
        new deadline. Refused unless the job is dead and no apology took its reply's place."""
        now = time.time()
        keys = self.keys
        answer = int(
            self._revive(
                keys=[
                    keys.job(job_id),
                    keys.active_jobs,
                    keys.dead_letters,
                    keys.retry_jobs,
                    keys.lost_scores,
                ],
                args=[job_id, stamp(now + deadline_s), stamp(now), keys.slot_events],
            )
        )
        job = self.get(job_id)
        if answer == 0 or job is None:
            raise JobRefused(f"no job {job_id!r} in the ledger")
        if answer == -1:
            raise JobRefused(
                f"job {job_id!r} is {job.state.value}, not dead: only a dead letter can be retried"
            )
        if answer == -2:
            raise JobRefused(
                f"job {job_id!r} cannot be retried: an apology was posted as its reply, "
                "so the site would refuse an answer"
            )
        return job

    def drop(self, job_id: str, reason: str, outcome: Outcome = Outcome.DROPPED) -> Job:
        """End an active or dead job without a reply: its slot freed, out of the retry set
        and the dead letters, rejected. Returns the job as it was. Refused for an unknown job
        or one already answered or rejected."""
        job = self.get(job_id)
        if job is None:
            raise JobRefused(f"no job {job_id!r} in the ledger")
        droppable = tuple(state for state in JobState if may_step(state, JobState.ENDING))
        if job.state not in droppable:
            raise JobRefused(
                f"job {job_id!r} has already ended ({job.state.value}): nothing to drop"
            )
        # Out of its state first, in one guarded step: a dispatched job's slot is freed, and no
        # delivery, sweep or bridge acts on it after this.
        ending = {"state": JobState.ENDING.value, "reason": reason}
        if not self._step(job_id, droppable, ending):
            raise JobRefused(f"job {job_id!r} ended meanwhile: nothing to drop")
        pipe = self.redis.pipeline(transaction=True)
        self.queue_finish(pipe, job_id, JobState.REJECTED, reason=reason, outcome=outcome)
        pipe.zrem(self.keys.dead_letters, job_id)
        pipe.zrem(self.keys.lost_scores, job_id)
        pipe.execute()
        return job

    # The one guarded step -----------------------------------------------------------------

    def _step(
        self,
        job_id: str,
        allowed: tuple[JobState, ...],
        fields: dict[str, Any],
        *,
        attempt: int | None = None,
        server_id: str | None = None,
        bridge_id: str = "",
        retry_at: float | None = None,
    ) -> bool:
        """Move the job on if it is still in one of `allowed` (at `attempt`, on `server_id`,
        held by `bridge_id`); True if this call moved it. `retry_at` queues it for any bridge
        to place again."""
        target = fields.get("state")
        if target is not None:
            wrong = [state for state in allowed if not may_step(state, JobState(target))]
            if wrong:
                raise ValueError(f"a job cannot go from {wrong} to {target}")
        moved = self._move(
            keys=[self.keys.job(job_id), self.keys.retry_jobs],
            args=[
                job_id,
                "" if attempt is None else attempt,
                ",".join(state.value for state in allowed),
                server_id or "",
                bridge_id,
                self.keys.inflight_prefix,
                self.keys.slot_events,
                "" if retry_at is None else stamp(retry_at),
                *flatten(fields),
            ],
        )
        return bool(moved)
