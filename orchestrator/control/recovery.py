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

import logging
import time
from dataclasses import dataclass

from orchestrator.domain.job import SCORE_SUFFIX
from orchestrator.services import Services

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
    for message in services.queue.comments_after(after_ms):
        params = message.get("botParams")
        job_id = message.get("id")
        if not isinstance(params, dict) or not isinstance(job_id, str) or not job_id:
            continue
        if job_id.endswith(SCORE_SUFFIX):
            continue  # a bridge refuses such an id: it would name another message's score
        bridge_id = params.get("claimedBy")
        if params.get("status") != "processing" or bridge_id not in began:
            continue
        claimed_at = params.get("claimedAt")
        if isinstance(claimed_at, int | float) and claimed_at < began[str(bridge_id)]:
            continue  # claimed before any claim in doubt: written, or recovered already
        if ledger.recover_claim(
            job_id, message, settings.job_deadline_s, scored=settings.eq_enabled
        ):
            recovered += 1
            log.warning(
                "job=%s claimed by %s but missing from the ledger: recovered", job_id, bridge_id
            )
    ledger.forget_claim_notes([note.id for note in due])
    site_bytes = services.queue.bytes_received - bytes_before
    log.info(
        "recovery: %d claims in doubt looked into (%d bytes from the site): %d recovered",
        len(due), site_bytes, recovered,
    )  # fmt: skip
    return RecoveryPass(recovered, len(due), site_bytes)
