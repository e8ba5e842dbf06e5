"""Intake: a claimed message becomes a job ready to place (its chat requests built), or is
rejected with its reason and completed on the site without a reply."""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from orchestrator.domain.job import Outcome
from orchestrator.domain.messages import Message
from orchestrator.domain.prompts import build_chat_request, build_eq_request
from orchestrator.errors import MessageGone, QueueError
from orchestrator.services import Services
from workers.contract.job import JobState
from workers.contract.protocol import ChatRequest

log = logging.getLogger(__name__)

# A retry after a context overflow keeps this share of the history room, per trim.
TRIM_FACTOR = 0.5
REASON_CHARS = 500


@dataclass(order=True)
class ReadyJob:
    """A validated job with its chat requests built, waiting for a slot."""

    sort_key: tuple[int, float, int]
    job_id: str = field(compare=False)
    entity: str = field(compare=False)
    model: str = field(compare=False)
    region: str = field(compare=False)
    reply: ChatRequest = field(compare=False)
    eq: ChatRequest | None = field(compare=False)
    expected_tokens: int = field(compare=False, default=150)
    attempt: int = field(compare=False, default=0)
    tried: tuple[str, ...] = field(compare=False, default=())
    deadline: float = field(compare=False, default=float("inf"))

    @property
    def priority(self) -> int:
        return -self.sort_key[0]


class Rejection(Exception):
    """A message that will get no reply, with the reason recorded in the ledger."""


def eq_tokens(request: ChatRequest) -> int:
    return int(request.options.get("num_predict") or 0)


def end_without_reply(
    services: Services, job_id: str, state: JobState, reason: str, outcome: Outcome
) -> None:
    """Record why, then complete the message on the site: it gets no reply."""
    services.ledger.finish(job_id, state, reason=reason, outcome=outcome)
    try:
        services.queue.complete(job_id)
    except MessageGone:
        log.warning("job=%s already gone from the site queue", job_id)
    except QueueError as exc:
        log.error("job=%s could not be completed on the site queue: %s", job_id, exc)


class Intake:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self._order = itertools.count()  # ties of priority and age keep their arrival order

    def admit(self, job_id: str, raw: dict[str, Any], *, trim: int = 0) -> ReadyJob | None:
        """The job ready to place; None when it was rejected (recorded and completed)."""
        try:
            return self.prepare(job_id, raw, trim=trim)
        except Rejection as exc:
            reason = str(exc)
        except Exception as exc:  # a message must never stop the bridge
            log.exception("job=%s could not be prepared", job_id)
            reason = f"internal error preparing the message: {exc!r}"[:REASON_CHARS]
        log.warning("job=%s rejected: %s", job_id, reason)
        end_without_reply(self.services, job_id, JobState.REJECTED, reason, Outcome.REJECTED)
        return None

    def prepare(self, job_id: str, raw: dict[str, Any], trim: int = 0) -> ReadyJob:
        try:
            json.dumps(raw, ensure_ascii=False).encode()
        except (UnicodeEncodeError, ValueError) as exc:
            raise Rejection(
                f"malformed message: not valid Unicode JSON ({exc})"[:REASON_CHARS]
            ) from exc
        try:
            message = Message.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()[:5]
            )
            raise Rejection(f"malformed message: {problems}") from exc
        params = message.bot_params
        entity_id = params.entity if params else None
        if not entity_id:
            raise Rejection("message names no entity")
        entity = self.services.entities.get(entity_id)
        if entity is None:
            raise Rejection(f"unknown entity {entity_id!r}")
        if not entity.enabled:
            raise Rejection(f"entity {entity_id!r} is disabled")
        reply = build_chat_request(entity, message, history_budget_factor=TRIM_FACTOR**trim)
        eq = None
        scorer = self.services.entities.get(self.settings.eq_entity)
        if self.settings.eq_enabled and scorer is not None and scorer.enabled:
            eq = build_eq_request(scorer, message)
        priority = params.effective_priority if params else 5
        return ReadyJob(
            sort_key=(-priority, message.timestamp, next(self._order)),
            job_id=job_id,
            entity=entity.id,
            model=entity.model,
            region=entity.region or "",
            reply=reply,
            eq=eq,
            expected_tokens=entity.max_tokens + (eq_tokens(eq) if eq else 0),
            deadline=time.time() + self.settings.job_deadline_s,
        )
