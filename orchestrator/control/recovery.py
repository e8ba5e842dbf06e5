"""Recovery (beat, slower): claims the site shows as ours that the ledger does not hold."""

from __future__ import annotations

import logging
import time

from orchestrator.services import Services

log = logging.getLogger(__name__)


def recover(services: Services) -> int:
    """Messages the site shows as `processing` by one of our bridges but that the ledger does
    not hold (a bridge that died between claim and ledger write): taken back in."""
    bridge_ids = services.ledger.known_bridges()
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
        settings = services.settings
        if services.ledger.recover_claim(
            job_id, message, settings.job_deadline_s, scored=settings.eq_enabled
        ):
            recovered += 1
            log.warning(
                "job=%s claimed by %s but missing from the ledger: recovered",
                job_id, params.get("claimedBy"),
            )  # fmt: skip
    return recovered
