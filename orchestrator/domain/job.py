"""A job as the ledger holds it: the claimed message, where it stands, and every attempt.

States and the steps between them are the contract's (`workers.contract.job`), shared with the
workers; this is the orchestrator's reading of a job's record.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.domain.messages import id_problem
from workers.contract.job import JobState
from workers.contract.protocol import ErrorKind

# A message's score is a job of its own, next to its reply's: its id is the message's with this.
SCORE_SUFFIX = "#eq"


class JobKind(StrEnum):
    REPLY = "reply"  # the entity's reply: posted, then the message completed
    SCORE = "score"  # the message's EQ score: PATCHed once, nothing posted


class Outcome(StrEnum):
    """How a finished job ended, as `status` counts it."""

    ANSWERED = "answered"  # its reply was posted
    SKIPPED = "skipped"  # the entity's own rules left no reply (`[SKIP]`, filtered to nothing)
    REJECTED = "rejected"  # a bad message or entity: completed without a reply
    DEAD = "dead"  # no server could answer it: a dead letter
    DROPPED = "dropped"  # an operator ended it without a reply (or score)
    SCORED = "scored"  # its score was found (and applied, when above 0)
    SCORE_LOST = "score_lost"  # no score could be had: a dead letter, with its reason


def score_job_id(message_id: str) -> str:
    return f"{message_id}{SCORE_SUFFIX}"


class Attempt(BaseModel):
    """One attempt that failed: where, and why."""

    attempt: int
    server_id: str
    error_kind: ErrorKind | None = None
    error: str | None = None
    at: float = Field(default_factory=time.time)

    def describe(self) -> str:
        return f"{self.error_kind}: {self.error or ''}".strip()


class Job(BaseModel):
    """A ledger entry, as read back from its hash."""

    id: str
    state: JobState
    message: dict[str, Any] = Field(default_factory=dict)  # dropped once the job is done
    kind: JobKind = JobKind.REPLY
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
    outcome: Outcome | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    trim: int = 0  # times the history was cut after a context overflow
    attempts_from: int = 0  # failures before this index were forgiven by an operator's retry
    result: str | None = None  # the generation's result, kept until it is delivered
    result_at: float | None = None
    delivering_at: float | None = None
    apology_posted: bool = False
    score: int | None = None  # a score job's score, once found

    @property
    def message_id(self) -> str:
        """The site message this job is for."""
        return self.id.removesuffix(SCORE_SUFFIX) if self.kind is JobKind.SCORE else self.id

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> Job:
        raw: dict[str, Any] = dict(fields)
        raw["message"] = json.loads(fields.get("message") or "{}")
        raw["attempts"] = json.loads(fields.get("attempts") or "[]")
        raw["apology_posted"] = fields.get("apology_posted") == "1"
        return cls.model_validate(raw)

    @property
    def failures(self) -> list[Attempt]:
        """Failed attempts that count against `max_attempts` (a context overflow does not)."""
        return [
            entry
            for entry in self.attempts[self.attempts_from :]
            if entry.error_kind is None or entry.error_kind.counts_against_attempts
        ]

    @property
    def servers_tried(self) -> list[str]:
        return [entry.server_id for entry in self.failures]

    @property
    def last_error(self) -> str | None:
        return self.attempts[-1].describe() if self.attempts else None

    def with_attempt(self, failed: Attempt) -> Job:
        """The job as it will be once `failed` is in its history."""
        return self.model_copy(update={"attempts": [*self.attempts, failed]})

    def history(self) -> str:
        """Every attempt's server and error, for a dead letter's reason."""
        return "; ".join(
            f"#{entry.attempt} {entry.server_id}: {entry.describe()}" for entry in self.attempts
        )


def job_id_problem(message_id: object) -> str | None:
    """Why a message's id cannot be its reply's job id (nor give its score's one); None when
    it can. An id ending as a score's does (`abc#eq`) would name another message's score."""
    problem = id_problem(message_id)
    if problem is None and str(message_id).endswith(SCORE_SUFFIX):
        return f"its id ends with {SCORE_SUFFIX!r}, which names a score's job"
    return problem
