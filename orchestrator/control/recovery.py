"""Recovery (beat, slower): claims that may have been made on the site but never written to the
ledger (a bridge killed between claim-next and its ledger write, an answer lost on the way).

A bridge notes each claim before it asks the site, and the note goes when the claim's jobs are
written: in steady state there is no note older than a moment, and a pass asks the site
nothing. A note left behind says when the claim began and how old its message can be at most
(the bridge had last seen the site with nothing pending then); recovery asks the site for the
messages posted since, takes back the ones `processing` under that bridge's id that the ledger
does not hold, and forgets the note.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from orchestrator.domain.job import job_id_problem
from orchestrator.domain.messages import size_problem
from orchestrator.errors import AnswerTooLarge, QueueError
from orchestrator.refusals import refuse_oversize, refuse_unkeepable
from orchestrator.services import Services
from orchestrator.site_queue import OVERSIZE_FIELD

log = logging.getLogger(__name__)

# Message timestamps come from the site, or a poster's clock: looked at this much earlier.
CLOCK_SLACK_MS = 300_000


@dataclass(frozen=True)
class RecoveryPass:
    recovered: int = 0
    notes: int = 0  # claim notes old enough to look into
    site_bytes: int = 0  # what the site sent for it


def recover(services: Services) -> RecoveryPass:
    ledger, settings = services.ledger, services.settings
    now_ms = int(time.time() * 1000)
    due = [
        note
        for note in ledger.claim_notes()
        if now_ms - note.at_ms >= settings.recover_after_s * 1000
    ]
    stale = [note for note in due if now_ms - note.at_ms > settings.recover_window_s * 1000]
    if stale:  # looked for in vain for a whole window (the site unreachable all along)
        ledger.forget_claim_notes([note.id for note in stale])
        log.error(
            "recovery: %d claims in doubt older than the recovery window given up, the oldest "
            "by %s", len(stale), min(stale, key=lambda note: note.at_ms).bridge_id,
        )  # fmt: skip
        due = [note for note in due if note not in stale]
    if not due:
        return RecoveryPass()
    bytes_before = services.queue.bytes_received
    after_ms = min(note.floor_ms for note in due) - CLOCK_SLACK_MS
    began: dict[str, int] = {}  # each bridge's earliest claim in doubt
    for note in due:
        began[note.bridge_id] = min(began.get(note.bridge_id, note.at_ms), note.at_ms)
    began = {bridge_id: at_ms - CLOCK_SLACK_MS for bridge_id, at_ms in began.items()}
    recovered = 0
    try:
        for message in services.queue.iter_comments_after(after_ms):
            try:
                recovered += recover_one(services, message, began)
            except (QueueError, redis.RedisError):
                raise  # the pass ends; its notes stay for the next
            except Exception:  # one message never stops the pass for the others
                log.exception("recovery: a listed message could not be looked into: %.200r",
                              message.get("id"))  # fmt: skip
    except AnswerTooLarge as exc:
        log.error("recovery: %s; the messages read before it were looked into", exc)
    ledger.forget_claim_notes([note.id for note in due])
    site_bytes = services.queue.bytes_received - bytes_before
    log.info(
        "recovery: %d claims in doubt looked into (%d bytes from the site): %d recovered",
        len(due), site_bytes, recovered,
    )  # fmt: skip
    return RecoveryPass(recovered, len(due), site_bytes)


def recover_one(services: Services, message: dict[str, Any], began: dict[str, int]) -> int:
    """1 if this listed message is a claim in doubt that the ledger missed, now taken back
    (or, if it cannot be taken, ended with its reason as its bridge would have)."""
    params = message.get("botParams")
    if not isinstance(params, dict):
        return 0
    bridge_id = params.get("claimedBy")
    if params.get("status") != "processing" or bridge_id not in began:
        return 0
    claimed_at = params.get("claimedAt")
    if isinstance(claimed_at, int | float) and claimed_at < began[str(bridge_id)]:
        return 0  # claimed before any claim in doubt: written, or recovered already
    job_id = message.get("id")
    problem = job_id_problem(job_id)
    if problem is not None or not isinstance(job_id, str):
        refuse_unkeepable(services, job_id, problem or "no id")
        return 1
    settings = services.settings
    # One too large for the client to parse comes with its size and what its ends told.
    size = int(message.get(OVERSIZE_FIELD) or len(json.dumps(message)))
    too_large = size_problem(message, size, settings.message_limits())
    if too_large is not None:
        refuse_oversize(services, message, too_large, bridge_id="", size=size)
        return 1
    if not services.ledger.recover_claim(
        job_id, message, settings.job_deadline_s, scored=settings.eq_enabled
    ):
        return 0
    log.warning("job=%s claimed by %s but missing from the ledger: recovered", job_id, bridge_id)
    return 1
