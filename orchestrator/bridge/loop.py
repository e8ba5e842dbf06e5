"""The bridge's loop: claim while the fleet has room, take due retries, place what waits, and
sleep until a slot frees, a server changes or a retry is due.

One message's path: claim-next → ledger (first) → intake (validate, entity, chat requests) →
placement (route, reserve a slot, dispatch `generate` to the server's queue, whose worker
sends its result to `deliver` on `control`).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import secrets
import threading
import time
from typing import Any

import redis
from celery import Celery

from orchestrator.bridge.intake import Intake, ReadyJob
from orchestrator.bridge.placement import FleetCache, Placement
from orchestrator.domain.job import Job, JobKind, job_id_problem, score_job_id
from orchestrator.domain.messages import size_problem
from orchestrator.domain.routing import Informed, SpeedDefaults, facts_from_json, policy_named
from orchestrator.domain.servers import ServerView
from orchestrator.errors import QueueError, QueueNotReached
from orchestrator.refusals import refuse_oversize, refuse_unkeepable
from orchestrator.services import Services
from orchestrator.site_queue import OversizeClaim
from orchestrator.state.ledger import Claim, ClaimNote
from orchestrator.state.metrics import CLAIMED
from workers.contract.job import HELD_BY_BRIDGE

log = logging.getLogger(__name__)

ALIVE_EVERY_S = 1.0  # how often the bridge says it is alive, and looks for retries regardless
QUEUE_BACKOFF_MIN_S = 0.2
QUEUE_BACKOFF_MAX_S = 5.0
EMPTY_SHARED_EVERY_S = 1.0  # how often a bridge tells the others it saw the site empty


class Bridge:
    def __init__(self, services: Services, celery_app: Celery) -> None:
        self.services = services
        self.settings = services.settings
        self.fleet_cache = FleetCache(services.fleet)
        policy = policy_named(
            self.settings.routing_policy,
            SpeedDefaults(
                tokens_per_s=self.settings.default_tokens_per_s,
                load_s=self.settings.default_load_s,
            ),
            random.Random(),
        )
        if isinstance(policy, Informed) and self.settings.routing_facts_file:
            policy.facts = facts_from_json(json.loads(self.settings.routing_facts_file.read_text()))
        self.intake = Intake(services)
        self.placement = Placement(services, celery_app, policy, self.fleet_cache)
        self._queue_empty_until = 0.0  # don't ask the site queue again before this
        self._queue_backoff_s = 0.0
        self._alive_until = 0.0  # next time to renew this bridge's liveness key
        self._retry_check_at = 0.0  # next time to look for due retries
        self._claims = itertools.count()
        self._run = secrets.token_hex(4)  # this run's, so its notes are its own after a restart
        # A message claimed now was posted after the last time the site had nothing pending;
        # until this bridge sees that itself, the last time any bridge did, or the window.
        window_ms = int((time.time() - self.settings.recover_window_s) * 1000)
        self._nothing_pending_ms = max(window_ms, services.ledger.site_seen_empty_ms() or 0)
        self._empty_shared_at = 0.0  # when this bridge last told the others, monotonic

    @property
    def waiting(self) -> list[ReadyJob]:
        """The jobs waiting here for a slot."""
        return self.placement.waiting

    # The loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("bridge %s starting: queue=%s", self.settings.bridge_id, self.settings.queue_url)
        pubsub = self.services.redis.pubsub(ignore_subscribe_messages=True)
        started = False
        try:
            while not stop.is_set():
                try:
                    if not started:
                        pubsub.subscribe(self.services.keys.slot_events)
                        self.resume_from_ledger()
                        started = True
                    progressed = self.step()
                except redis.RedisError as exc:
                    log.warning("bridge: redis unavailable (%s); retrying", exc)
                    started = False  # then take back what was cut short: its jobs are written
                    stop.wait(0.5)
                    continue
                if not progressed:
                    self._wait_for_change(pubsub, stop)
        finally:
            pubsub.close()
            self.hand_back_waiting()
            self.services.metrics.note_waiting(self.settings.bridge_id, len(self.waiting))
            log.info("bridge %s stopped", self.settings.bridge_id)

    def _wait_for_change(self, pubsub: redis.client.PubSub, stop: threading.Event) -> None:
        """Sleep until a slot frees, a server changes or a retry is due, or until the queue is
        worth asking again."""
        now = time.monotonic()
        timeout = max(0.01, min(0.5, self._queue_empty_until - now, self._retry_check_at - now))
        try:
            event = pubsub.get_message(timeout=timeout)
            # Drain a burst of events so one freed slot is one wake-up, not many.
            while event is not None and not stop.is_set():
                self._note_event(str(event.get("data", "")))
                event = pubsub.get_message(timeout=0)
        except redis.RedisError as exc:
            log.warning("bridge: event channel lost (%s)", exc)
            stop.wait(0.5)

    def _note_event(self, data: str) -> None:
        kind, _, detail = data.partition(":")
        if kind == "retry":
            try:
                due_in = float(detail) - time.time()
            except ValueError:
                due_in = 0.0
            self._retry_soon(due_in)
        elif kind in {"cool", "server", "gone"}:
            self.fleet_cache.invalidate()

    def _retry_soon(self, due_in: float) -> None:
        self._retry_check_at = min(self._retry_check_at, time.monotonic() + max(0.0, due_in))

    def step(self) -> bool:
        """Take due retries, place what waits, then claim one message if a slot is left.
        True if anything moved."""
        now = time.monotonic()
        if now >= self._alive_until:
            self.services.ledger.say_alive(
                self.settings.bridge_id, self.settings.bridge_lost_after_s
            )
            self.services.metrics.note_waiting(self.settings.bridge_id, len(self.waiting))
            self._alive_until = now + ALIVE_EVERY_S
        fleet = self.fleet_cache.read()
        if now >= self._retry_check_at:
            self.take_retries(fleet)
        progressed = self.placement.place_waiting(fleet)
        if time.monotonic() < self._queue_empty_until:
            return progressed
        if not self.placement.room_to_claim(fleet):
            return progressed
        return self.claim_one(fleet) or progressed

    # Claiming -----------------------------------------------------------------------------

    def claim_one(self, fleet: list[ServerView]) -> bool:
        asked_ms = int(time.time() * 1000)
        note = ClaimNote(
            f"{self.settings.bridge_id}:{self._run}:{next(self._claims)}",
            self.settings.bridge_id,
            asked_ms,
            self._nothing_pending_ms,
        )
        self.services.ledger.note_claim(note)
        try:
            claimed = self.services.queue.claim_next(self.settings.bridge_id)
        except QueueError as exc:
            if isinstance(exc, QueueNotReached):
                self.services.ledger.drop_claim_note(note.id)  # the site never heard of it
            self._queue_backoff_s = min(
                QUEUE_BACKOFF_MAX_S, max(QUEUE_BACKOFF_MIN_S, self._queue_backoff_s * 2)
            )
            self._queue_empty_until = time.monotonic() + self._queue_backoff_s
            log.warning(
                "bridge: claim-next failed (%s); next try in %.1fs", exc, self._queue_backoff_s
            )
            return False
        self._queue_backoff_s = 0.0
        message = claimed.message
        if message is not None or claimed.oversize is not None:
            self.services.metrics.count(CLAIMED)
        self.placement.site_backlog = claimed.remaining_pending if message is not None else 0
        self.placement.site_backlog_at = time.monotonic()
        if message is None or claimed.remaining_pending == 0:
            # Nothing else pending: whatever is claimed next was posted after this.
            self._nothing_pending_ms = asked_ms
            if time.monotonic() - self._empty_shared_at >= EMPTY_SHARED_EVERY_S:
                self._empty_shared_at = time.monotonic()
                self.services.ledger.note_site_empty(asked_ms)
        if claimed.oversize is not None:
            self.refuse_oversize_claim(claimed.oversize, note.id)
            return True
        if message is None:
            self.services.ledger.drop_claim_note(note.id)
            self._queue_empty_until = time.monotonic() + self.settings.claim_idle_s
            return False
        try:
            self.take(message, fleet, note=note.id)
        except redis.RedisError:
            raise  # the loop waits for Redis: then takes the claim back from the ledger if it
            # was written, and recovery finds it by its note if not
        except Exception:  # whatever a message carries, the bridge goes on
            log.exception("bridge: a claimed message could not be taken: %.200r", message)
            self.services.ledger.count("untakeable")
        return True

    def take(self, raw: dict[str, Any], fleet: list[ServerView], *, note: str = "") -> None:
        """Handle one claimed message; never raises for anything the message carries. Its
        claim's `note` goes when its jobs are written."""
        job_id = raw.get("id")
        problem = job_id_problem(job_id)
        if problem is not None or not isinstance(job_id, str):
            refuse_unkeepable(self.services, job_id, problem or "no id", note=note)
            return
        size = len(json.dumps(raw))
        too_large = size_problem(raw, size, self.settings.message_limits())
        if too_large is not None:
            refuse_oversize(
                self.services, raw, too_large, bridge_id=self.settings.bridge_id, size=size,
                note=note,
            )  # fmt: skip
            return
        scored = self.settings.eq_enabled
        claim = self.services.ledger.record_claim(
            job_id,
            raw,
            self.settings.bridge_id,
            self.settings.job_deadline_s,
            scored=scored,
            note=note,
        )
        if claim is not Claim.KNOWN:
            log.info("claim job=%s bridge=%s", job_id, self.settings.bridge_id)
        if claim is Claim.KNOWN:
            if not self.take_back_written(job_id, fleet):
                log.warning("job=%s claimed again but already in the ledger: left as it is",
                            job_id)  # fmt: skip
            return
        if claim is Claim.SCORE_ID_TAKEN:
            log.error("job=%s its score's job id %r is another job's: not scored", job_id,
                      score_job_id(job_id))  # fmt: skip
            self.services.ledger.count("score_not_scheduled")
        kinds = (
            [JobKind.REPLY, JobKind.SCORE] if claim is Claim.WRITTEN and scored else [JobKind.REPLY]
        )
        for kind in kinds:
            kind_id = job_id if kind is JobKind.REPLY else score_job_id(job_id)
            ready = self.intake.admit(kind_id, kind, raw)
            if ready is not None:
                self.placement.enqueue(ready, fleet)

    def take_back_written(self, job_id: str, fleet: list[ServerView]) -> bool:
        """A claim's write that Redis carried out but whose answer was lost (a restart): the
        client sent it again and found it written. Its jobs are this bridge's and wait nowhere:
        take them up as written. False when the ledger's jobs are not such."""
        here = {ready.job_id for ready in self.placement.waiting}
        written = [
            job
            for job in self.services.ledger.get_many([job_id, score_job_id(job_id)])
            if job.bridge_id == self.settings.bridge_id
            and job.state in HELD_BY_BRIDGE
            and job.id not in here
        ]
        for job in written:
            log.warning("job=%s its claim was written before Redis answered: taken up", job.id)
            self.resume(job, fleet)
        return bool(written)

    def refuse_oversize_claim(self, oversize: OversizeClaim, note: str) -> None:
        """A claim-next answer too large to read: the message it claimed is ended by the id its
        first bytes give; without one, its note stays for recovery, which reads the site's
        list one message at a time."""
        fields = oversize.fields
        job_id = fields.get("id")
        reason = (
            f"the site's answer for it was over the {self.settings.max_answer_bytes}-byte "
            f"cap (read {oversize.bytes_read} bytes)"
        )
        if not isinstance(job_id, str):
            log.error("bridge: %s, and no id in its first bytes: %s", reason,
                      oversize.prefix[:200])  # fmt: skip
            self.services.ledger.count("oversize_without_id")
            return
        problem = job_id_problem(job_id)
        if problem is not None:
            refuse_unkeepable(self.services, job_id, problem, note=note)
            return
        kept = {**fields, "id": job_id, "text": str(fields.get("text", ""))}
        refuse_oversize(
            self.services, kept, f"too large: {reason}",
            bridge_id=self.settings.bridge_id, size=oversize.bytes_read, digest=oversize.sha256,
            note=note,
        )  # fmt: skip

    # Jobs the ledger holds ----------------------------------------------------------------

    def take_retries(self, fleet: list[ServerView]) -> None:
        """Jobs any bridge may place (failover, lost servers and bridges), due now."""
        self._retry_check_at = time.monotonic() + ALIVE_EVERY_S
        for job in self.services.ledger.take_retries(self.settings.bridge_id):
            log.info(
                "reroute job=%s attempt=%d tried=%s",
                job.id, job.attempt + 1, ",".join(job.servers_tried) or "none",
            )  # fmt: skip
            self.resume(job, fleet)
        # A retry announced before this look but due after it is looked for when it is due,
        # not a whole period later.
        due = self.services.ledger.next_retry_at()
        if due is not None:
            self._retry_soon(due - time.time())

    def resume_from_ledger(self) -> None:
        """Take back this bridge's jobs that were claimed but never dispatched, and are not
        waiting here already (after a restart, all; after a Redis error, those it cut short)."""
        here = {ready.job_id for ready in self.placement.waiting}
        held = self.services.ledger.held_by(self.settings.bridge_id)
        mine = [job for job in held if job.id not in here]
        fleet = self.services.fleet.read()
        for job in mine:
            self.resume(job, fleet)
        if mine:
            log.info("bridge: resumed %d jobs from the ledger", len(mine))

    def resume(self, job: Job, fleet: list[ServerView]) -> None:
        """Place again a job the ledger holds: its attempt count, the servers it failed on, how
        far its history was cut, and its deadline carry over."""
        ready = self.intake.admit(job.id, job.kind, job.message, trim=job.trim)
        if ready is None:
            return
        ready.attempt = job.attempt
        ready.tried = tuple(job.servers_tried)
        ready.deadline = job.deadline or ready.deadline
        self.placement.enqueue(ready, fleet)

    def hand_back_waiting(self) -> None:
        """On a clean stop, what still waits here goes back to be placed by another bridge."""
        if not self.placement.waiting:
            return
        try:
            handed = self.placement.hand_back_waiting()
            log.info("bridge: handed %d waiting jobs back", handed)
        except redis.RedisError as exc:
            log.warning("bridge: waiting jobs stay with this bridge's id (%s)", exc)
