"""Intake: a claimed message's jobs (its reply's, and its score's) become jobs ready to place,
each with its chat request built, or end with their reason: a reply rejected is completed on
the site without a reply; a score that cannot be had is a dead letter, never a silent 0."""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from orchestrator.domain.job import JobKind
from orchestrator.domain.messages import Message
from orchestrator.domain.prompts import build_chat_request, build_eq_request
from orchestrator.refusals import end_unanswered
from orchestrator.services import Services
from workers.contract.model_names import model_key
from workers.contract.protocol import ChatRequest

log = logging.getLogger(__name__)

# A retry after a context overflow keeps this share of the history room, per trim.
TRIM_FACTOR = 0.5
REASON_CHARS = 500
DEFAULT_EXPECTED_TOKENS = 150


@dataclass(order=True)
class ReadyJob:
    """A validated job with its chat request built, waiting for a slot."""

    sort_key: tuple[int, float, int]
    job_id: str = field(compare=False)
    kind: JobKind = field(compare=False)
    entity: str = field(compare=False)
    model: str = field(compare=False)  # the key servers are matched by (model_names)
    region: str = field(compare=False)
    request: ChatRequest = field(compare=False)
    attempt: int = field(compare=False, default=0)
    tried: tuple[str, ...] = field(compare=False, default=())
    deadline: float = field(compare=False, default=float("inf"))

    @property
    def priority(self) -> int:
        return -self.sort_key[0]

    @property
    def expected_tokens(self) -> int:
        return self.request.max_tokens or DEFAULT_EXPECTED_TOKENS


class Rejection(Exception):
    """A job that will get no answer, with the reason recorded in the ledger."""

    def __init__(self, reason: str, *, malformed: bool = False) -> None:
        super().__init__(reason)
        self.malformed = malformed  # the message itself is bad: neither reply nor score


class Intake:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self._order = itertools.count()  # ties of priority and age keep their arrival order

    def admit(
        self, job_id: str, kind: JobKind, raw: dict[str, Any], *, trim: int = 0
    ) -> ReadyJob | None:
        """The job ready to place; None when it ended with its reason."""
        try:
            return self.prepare(job_id, kind, raw, trim=trim)
        except Rejection as exc:
            reason = str(exc)
            lost_score = kind is JobKind.SCORE and not exc.malformed
        except Exception as exc:  # a message must never stop the bridge
            log.exception("job=%s could not be prepared", job_id)
            reason = f"internal error preparing the message: {exc!r}"[:REASON_CHARS]
            lost_score = kind is JobKind.SCORE
        if lost_score:
            log.warning("score lost job=%s: %s", job_id, reason)
        else:
            log.warning("reject job=%s: %s", job_id, reason)
        end_unanswered(self.services, job_id, kind, reason, dead=lost_score)
        return None

    def prepare(self, job_id: str, kind: JobKind, raw: dict[str, Any], trim: int = 0) -> ReadyJob:
        message = valid_message(raw)
        params = message.bot_params
        entities = self.services.entities
        if kind is JobKind.SCORE:
            scorer = entities.get(self.settings.eq_entity)
            if scorer is None:
                raise Rejection(f"no scorer: entity {self.settings.eq_entity!r} is not loaded")
            if not scorer.enabled:
                raise Rejection(f"no scorer: entity {scorer.id!r} is disabled")
            entity, request = scorer, build_eq_request(scorer, message)
        else:
            entity_id = params.entity if params else None
            if not entity_id:
                raise Rejection("message names no entity")
            found = entities.get(entity_id)
            if found is None:
                raise Rejection(f"unknown entity {entity_id!r}")
            refusal = found.refusal()
            if refusal is not None:
                raise Rejection(refusal)
            entity = found
            request = build_chat_request(
                entity,
                message,
                entities.global_settings,
                history_budget_factor=TRIM_FACTOR**trim,
            )
        priority = params.effective_priority if params else 5
        return ReadyJob(
            sort_key=(-priority, message.timestamp, next(self._order)),
            job_id=job_id,
            kind=kind,
            entity=entity.id,
            model=model_key(entity.model),
            region=entity.region or "",
            request=request,
            deadline=time.time() + self.settings.job_deadline_s,
        )


def valid_message(raw: dict[str, Any]) -> Message:
    try:
        json.dumps(raw, ensure_ascii=False).encode()
    except (UnicodeEncodeError, ValueError) as exc:
        reason = f"malformed message: not valid Unicode JSON ({exc})"[:REASON_CHARS]
        raise Rejection(reason, malformed=True) from exc
    try:
        return Message.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise Rejection(f"malformed message: {problems}", malformed=True) from exc
