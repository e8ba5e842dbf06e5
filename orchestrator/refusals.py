"""How the system says no: a job that gets no answer ends with its reason, and a message it
cannot take at all (an id that cannot be kept, too large to read or to carry) is refused with
one escaped log line and a recorded reason. Either way the message is completed on the site
where the site allows it, so it does not stay `processing` there for ever."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from orchestrator.domain.job import JobKind, Outcome
from orchestrator.domain.messages import excerpt_of
from orchestrator.errors import MessageGone, QueueError
from orchestrator.services import Services
from orchestrator.state.ledger import Claim
from workers.contract.job import JobState
from workers.contract.logs import excerpt

log = logging.getLogger(__name__)

# How a job that gets no answer ends: (state, outcome), by its kind and whether it could have
# been answered (`dead`) or never can be (a bad message, an unknown entity).
UNANSWERED = {
    (JobKind.REPLY, True): (JobState.DEAD, Outcome.DEAD),
    (JobKind.REPLY, False): (JobState.REJECTED, Outcome.REJECTED),
    (JobKind.SCORE, True): (JobState.DEAD, Outcome.SCORE_LOST),
    (JobKind.SCORE, False): (JobState.REJECTED, Outcome.REJECTED),
}


def end_unanswered(
    services: Services, job_id: str, kind: JobKind, reason: str, *, dead: bool
) -> None:
    """Record why. A reply's message is then completed on the site: it gets no reply. A
    score touches nothing on the site; a dead one is a dead letter, for `jobs` to show."""
    state, outcome = UNANSWERED[(kind, dead)]
    services.ledger.finish(job_id, state, reason=reason, outcome=outcome)
    if kind is not JobKind.SCORE:
        complete_on_site(services, job_id)


def complete_on_site(services: Services, message_id: str) -> None:
    """Complete a message the bridge gives no reply; a failure is logged, never raised."""
    try:
        services.queue.complete(message_id)
    except MessageGone:
        log.warning("job=%s already gone from the site queue", message_id)
    except QueueError as exc:
        log.error("job=%s could not be completed on the site queue: %s", message_id, exc)


def refuse_unkeepable(
    services: Services, message_id: object, reason: str, *, note: str = ""
) -> None:
    """A message whose id cannot be a job's (no id, a lone surrogate, a control character, too
    long): never written in the ledger. One line, a count and an entry in the refused list say
    why, and it is completed on the site when it has an id at all (the site takes it back as
    it sent it)."""
    what = excerpt(message_id if isinstance(message_id, str) else repr(message_id), 120)
    log.error("refuse job=%s: %s; completed without a reply", what, reason)
    ledger = services.ledger
    ledger.count("refused")
    ledger.note_refused(what, reason)
    if note:
        ledger.drop_claim_note(note)
    if isinstance(message_id, str) and message_id:
        complete_on_site(services, message_id)


def refuse_oversize(
    services: Services,
    raw: dict[str, Any],
    reason: str,
    *,
    bridge_id: str,
    size: int,
    digest: str | None = None,
    note: str = "",
) -> None:
    """A message too large to take: its ledger entry keeps an excerpt and a hash, never the
    whole; its reply's job ends rejected with the reason, and it is completed on the site."""
    message_id = str(raw["id"])
    if digest is None:
        digest = hashlib.sha256(json.dumps(raw).encode()).hexdigest()
    kept = excerpt_of(raw, size, digest)
    settings = services.settings
    claim = services.ledger.record_claim(
        message_id, kept, bridge_id, settings.job_deadline_s, scored=False, note=note
    )
    if claim is Claim.KNOWN:
        log.warning("job=%s too large, and already in the ledger: left as it is", message_id)
        return
    log.error("refuse job=%s: %s", message_id, reason)
    end_unanswered(services, message_id, JobKind.REPLY, reason, dead=False)
