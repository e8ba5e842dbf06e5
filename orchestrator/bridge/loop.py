"""The bridge: claims messages while the fleet has room, ledgers them, places and dispatches them.

One message's path here: claim-next → ledger (first) → validate → entity → chat request →
route → reserve a slot → dispatch `generate` to the server's queue, its result linked to
`deliver` on `control`. A message that cannot be placed yet waits here, by priority then age.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from celery import Celery
from pydantic import ValidationError

from orchestrator.domain.messages import Message
from orchestrator.domain.prompts import build_chat_request, build_eq_request
from orchestrator.domain.routing import (
    Decision,
    Planner,
    SpeedDefaults,
    able_servers,
    choose_least_inflight,
    choose_random,
    hosting_servers,
)
from orchestrator.errors import MessageGone, QueueError
from orchestrator.services import Services
from orchestrator.state.fleet import ServerView
from orchestrator.state.ledger import Job, JobState
from workers.contract.protocol import (
    CONTROL_QUEUE,
    DELIVER_TASK,
    GENERATE_TASK,
    ChatRequest,
    GenerateJob,
)

log = logging.getLogger(__name__)


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


def eq_tokens(request: ChatRequest) -> int:
    return int(request.options.get("num_predict") or 0)


UNBOUNDED = 1_000_000
FLEET_RECORDS_MAX_AGE_S = 0.25
ALIVE_EVERY_S = 1.0  # how often the bridge says it is alive, and looks for retries regardless
# A retry after a context overflow keeps this share of the history room, per trim.
TRIM_FACTOR = 0.5


class Rejection(Exception):
    """A message that will get no reply, with the reason recorded in the ledger."""


class Bridge:
    def __init__(self, services: Services, celery_app: Celery) -> None:
        self.services = services
        self.settings = services.settings
        self.celery = celery_app
        self.waiting: list[ReadyJob] = []
        self._order = itertools.count()
        self._rng = random.Random()
        self._queue_empty_until = 0.0
        self._queue_backoff_s = 0.0
        # The comparison policies send work to full servers, as the old bot did.
        self.respects_capacity = self.settings.routing_policy == "soonest"
        self._planner: Planner | None = None
        self._fleet_records: list[ServerView] | None = None
        self._fleet_read_at = 0.0
        self.entity_models = frozenset(
            entity.model for entity in services.entities if entity.enabled
        )
        self._site_backlog = 0  # messages the site queue still holds, as of the last claim
        self._planned_fleet: list[ServerView] | None = None
        self.speed_defaults = SpeedDefaults(
            tokens_per_s=self.settings.default_tokens_per_s, load_s=self.settings.default_load_s
        )
        self._alive_until = 0.0  # next time to renew this bridge's liveness key
        self._retry_check_at = 0.0  # next time to look for due retries

    # The loop --------------------------------------------------------------------------------

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
                    stop.wait(0.5)
                    continue
                if not progressed:
                    self._wait_for_change(pubsub, stop)
        finally:
            pubsub.close()
            self.hand_back_waiting()
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
            self._retry_check_at = min(self._retry_check_at, time.monotonic() + max(0.0, due_in))
        elif kind in {"cool", "server", "gone"}:
            self._fleet_records = None  # a server's standing changed: read the records again

    def read_fleet(self) -> list[ServerView]:
        """The fleet for this step: records re-read a few times a second (they change with
        heartbeats), in-flight counts every step."""
        now = time.monotonic()
        if self._fleet_records is None or now - self._fleet_read_at > FLEET_RECORDS_MAX_AGE_S:
            self._fleet_records = self.services.fleet.read()
            self._fleet_read_at = now
            return list(self._fleet_records)
        return self.services.fleet.refresh_inflight(self._fleet_records)

    def step(self) -> bool:
        """Take due retries, place what waits, then claim one message if a slot is left.
        True if anything moved."""
        now = time.monotonic()
        if now >= self._alive_until:
            self.say_alive()
            self._alive_until = now + ALIVE_EVERY_S
        fleet = self.read_fleet()
        if now >= self._retry_check_at:
            self.take_retries(fleet)
        progressed = self.place_waiting(fleet)
        if time.monotonic() < self._queue_empty_until:
            return progressed
        if self.respects_capacity and not self.room_to_claim(fleet):
            return progressed
        return self.claim_one(fleet) or progressed

    def room_to_claim(self, fleet: list[ServerView]) -> bool:
        """Whether a message claimed now could use a free slot: more slots are free than jobs
        wait here, or one is free on a server that runs none of the waiting jobs' models (a
        server for one model would idle behind jobs for another). Only slots that some
        entity's model can use count, and never more jobs wait here than the fleet has slots."""
        usable = [server for server in fleet if server.models & self.entity_models]
        free_slots = sum(server.free_slots for server in usable)
        if len(self.waiting) < free_slots:
            return True
        if not free_slots or len(self.waiting) >= sum(s.usable_capacity for s in usable):
            return False
        wanted = {ready.model for ready in self.waiting}
        return any(server.free_slots and not server.models & wanted for server in usable)

    def say_alive(self) -> None:
        """While this key lives, the jobs this bridge holds are its own; when it expires the
        sweep hands them to other bridges."""
        keys = self.services.keys
        pipe = self.services.redis.pipeline(transaction=False)
        pipe.set(
            keys.bridge(self.settings.bridge_id),
            f"{time.time():.3f}",
            px=int(self.settings.bridge_lost_after_s * 1000),
        )
        pipe.sadd(keys.bridges, self.settings.bridge_id)
        pipe.execute()

    def take_retries(self, fleet: list[ServerView]) -> None:
        """Jobs any bridge may place (failover, lost servers and bridges), due now."""
        self._retry_check_at = time.monotonic() + ALIVE_EVERY_S
        for job in self.services.ledger.take_retries(self.settings.bridge_id):
            log.info(
                "job=%s taken for attempt %d (tried: %s)",
                job.id, job.attempt + 1, ",".join(job.servers_tried) or "none",
            )  # fmt: skip
            self.resume(job, fleet)
        # A retry announced before this look but due after it is looked for when it is due,
        # not a whole period later.
        upcoming = self.services.redis.zrange(self.services.keys.retry_jobs, 0, 0, withscores=True)
        if upcoming:
            due_in = float(upcoming[0][1]) - time.time()
            self._retry_check_at = min(self._retry_check_at, time.monotonic() + max(0.0, due_in))

    def hand_back_waiting(self) -> None:
        """On a clean stop, what still waits here goes back to be placed by another bridge."""
        if not self.waiting:
            return
        try:
            for ready in self.waiting:
                self.services.ledger.transition(
                    ready.job_id,
                    (JobState.CLAIMED, JobState.WAITING),
                    {"state": JobState.RETRYING.value, "bridge_id": ""},
                    retry_at=time.time(),
                )
            log.info("bridge: handed %d waiting jobs back", len(self.waiting))
        except redis.RedisError as exc:
            log.warning("bridge: waiting jobs stay with this bridge's id (%s)", exc)
        self.waiting.clear()

    # Claiming ---------------------------------------------------------------------------------

    def claim_one(self, fleet: list[ServerView]) -> bool:
        try:
            claimed = self.services.queue.claim_next(self.settings.bridge_id)
        except QueueError as exc:
            self._queue_backoff_s = min(5.0, max(0.2, self._queue_backoff_s * 2))
            self._queue_empty_until = time.monotonic() + self._queue_backoff_s
            log.warning(
                "bridge: claim-next failed (%s); next try in %.1fs", exc, self._queue_backoff_s
            )
            return False
        self._queue_backoff_s = 0.0
        self._site_backlog = claimed.remaining_pending if claimed.message is not None else 0
        if claimed.message is None:
            self._queue_empty_until = time.monotonic() + self.settings.claim_idle_s
            return False
        try:
            self.take(claimed.message, fleet)
        except redis.RedisError:
            raise  # the loop waits for Redis; the claim is found again by recovery
        except Exception:  # whatever a message carries, the bridge goes on
            log.exception("bridge: a claimed message could not be taken: %.200r", claimed.message)
            self.services.redis.hincrby(self.services.keys.counters, "untakeable", 1)
        return True

    def take(self, raw: dict[str, Any], fleet: list[ServerView]) -> None:
        """Handle one claimed message; never raises for anything the message carries."""
        job_id = raw.get("id")
        if not isinstance(job_id, str) or not job_id:
            log.error("bridge: claimed a message without an id; cannot complete it: %.200r", raw)
            self.services.redis.hincrby(self.services.keys.counters, "no_id", 1)
            return
        if not self.services.ledger.record_claim(
            job_id, raw, self.settings.bridge_id, self.settings.job_deadline_s
        ):
            log.warning("job=%s claimed again but already in the ledger: left as it is", job_id)
            return
        try:
            ready = self.prepare(job_id, raw)
        except Rejection as exc:
            self.reject(job_id, str(exc))
            return
        except Exception as exc:  # a message must never stop the bridge
            log.exception("job=%s could not be prepared", job_id)
            self.reject(job_id, f"internal error preparing the message: {exc!r}"[:500])
            return
        self.enqueue(ready, fleet)

    def prepare(self, job_id: str, raw: dict[str, Any], trim: int = 0) -> ReadyJob:
        try:
            json.dumps(raw, ensure_ascii=False).encode()
        except (UnicodeEncodeError, ValueError) as exc:
            raise Rejection(f"malformed message: not valid Unicode JSON ({exc})"[:500]) from exc
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
            region=getattr(entity, "region", None) or "",
            reply=reply,
            eq=eq,
            expected_tokens=entity.max_tokens + (eq_tokens(eq) if eq else 0),
            deadline=time.time() + self.settings.job_deadline_s,
        )

    def reject(self, job_id: str, reason: str) -> None:
        """No reply for this message: record why, then complete it on the site."""
        log.warning("job=%s rejected: %s", job_id, reason)
        self.services.ledger.finish(job_id, JobState.REJECTED, reason=reason, outcome="rejected")
        self.complete_quietly(job_id)

    def complete_quietly(self, job_id: str) -> None:
        try:
            self.services.queue.complete(job_id)
        except MessageGone:
            log.warning("job=%s already gone from the site queue", job_id)
        except QueueError as exc:
            log.error("job=%s could not be completed on the site queue: %s", job_id, exc)

    # Placing ---------------------------------------------------------------------------------

    def enqueue(self, ready: ReadyJob, fleet: list[ServerView]) -> None:
        if not hosting_servers(fleet, ready.model):
            reason = f"no online server has model {ready.model}"
            if ready.tried:
                reason += f"; tried: {', '.join(ready.tried)}"
            log.warning("job=%s dead: %s", ready.job_id, reason)
            self.services.ledger.finish(ready.job_id, JobState.DEAD, reason=reason, outcome="dead")
            self.complete_quietly(ready.job_id)
            return
        if not self.place(ready, fleet):
            self.services.ledger.mark_ready(
                ready.job_id, ready.entity, ready.model, -ready.sort_key[0]
            )
            heapq.heappush(self.waiting, ready)
            log.debug("job=%s waits for a slot for %s", ready.job_id, ready.model)

    def place_waiting(self, fleet: list[ServerView]) -> bool:
        if not self.waiting:
            return False
        placed_any = False
        still_waiting: list[ReadyJob] = []
        now = time.time()
        while self.waiting:
            ready = heapq.heappop(self.waiting)
            if ready.deadline < now:
                # The sweep gives it up (it is past its deadline in the ledger too).
                log.info("job=%s past its deadline while waiting: left to the sweep", ready.job_id)
                placed_any = True
                continue
            if self.place(ready, fleet):
                placed_any = True
            else:
                still_waiting.append(ready)
        for ready in still_waiting:
            heapq.heappush(self.waiting, ready)
        return placed_any

    def place(self, ready: ReadyJob, fleet: list[ServerView]) -> bool:
        """Reserve a slot on the chosen server and dispatch; False if no slot could be had."""
        for _ in range(3):
            decision = self.decide(ready, fleet)
            server = decision.server
            if server is None:
                log.debug("job=%s %s", ready.job_id, decision.reason)
                return False
            attempt = ready.attempt + 1
            dispatched = {
                "state": JobState.DISPATCHED.value,
                "attempt": str(attempt),
                "server_id": server.id,
                "dispatched_at": str(time.time()),
                # Not begun, no result: what an earlier attempt noted must not hide a lost
                # task or a lost server from the sweep.
                "started_at": "0",
                "result_at": "0",
                "entity": ready.entity,
                "model": ready.model,
                "priority": str(-ready.sort_key[0]),
            }
            capacity = server.usable_capacity if self.respects_capacity else UNBOUNDED
            reserved = self.services.fleet.reserve(
                server.id, capacity, ready.job_id, dispatched, owner=self.settings.bridge_id
            )
            if reserved < 0:
                # Given up by the sweep or handed to another bridge meanwhile: not ours now.
                log.info("job=%s no longer this bridge's to place: dropped here", ready.job_id)
                return True
            if reserved:
                log.debug("job=%s route to %s", ready.job_id, decision.reason)
                index = next(i for i, known in enumerate(fleet) if known.id == server.id)
                fleet[index] = replace(fleet[index], inflight=fleet[index].inflight + 1)
                return self.dispatch(ready, server.id, attempt)
            # Another bridge took that slot between our read and our reserve: look again.
            self._fleet_records = None
            fleet[:] = self.read_fleet()
            self._planner = None
        return False

    def decide(self, ready: ReadyJob, fleet: list[ServerView]) -> Decision:
        # A retry goes to a server not yet tried while one is usable; when none is, a tried
        # one may have it again once its cooldown ends.
        exclude: tuple[str, ...] = ()
        if ready.tried and any(
            server.id not in ready.tried for server in able_servers(fleet, ready.model)
        ):
            exclude = ready.tried
        policy = self.settings.routing_policy
        if policy == "random":
            return choose_random(fleet, ready.model, exclude=exclude, rng=self._rng)
        if policy == "least_inflight":
            return choose_least_inflight(fleet, ready.model, exclude=exclude, rng=self._rng)
        if self._planner is None or self._planned_fleet is not fleet:
            # One plan per snapshot of the fleet: each job placed sees the ones placed before.
            self._planner = Planner(fleet, self.speed_defaults, self._rng)
            self._planned_fleet = fleet
        self._planner.backlog = self._site_backlog + len(self.waiting)
        return self._planner.place(
            ready.model, tokens=ready.expected_tokens, region=ready.region, exclude=exclude
        )

    def dispatch(self, ready: ReadyJob, server_id: str, attempt: int) -> bool:
        """Send the generate task; the ledger already says where it went."""
        job = GenerateJob(
            job_id=ready.job_id,
            attempt=attempt,
            server_id=server_id,
            reply=ready.reply,
            eq=ready.eq,
            dispatched_at=time.time(),
        )
        try:
            self.celery.send_task(
                GENERATE_TASK,
                args=[job.model_dump(mode="json")],
                queue=server_id,
                link=self.celery.signature(DELIVER_TASK, queue=CONTROL_QUEUE),
            )
        except Exception as exc:  # the broker is Redis: when it is away, keep the job here
            log.warning(
                "job=%s server=%s dispatch failed (%s): waits", ready.job_id, server_id, exc
            )
            # Back to waiting here, the slot given back.
            self.services.ledger.transition(
                ready.job_id,
                (JobState.DISPATCHED,),
                {"state": JobState.WAITING.value},
                attempt=attempt,
            )
            return False
        log.info("job=%s attempt=%d server=%s dispatched", ready.job_id, attempt, server_id)
        return True

    # Restart ---------------------------------------------------------------------------------

    def resume_from_ledger(self) -> None:
        """Take back this bridge's jobs that were claimed but never dispatched."""
        ledger = self.services.ledger
        jobs = ledger.get_many(ledger.active_job_ids())
        mine = [
            job
            for job in jobs
            if job.bridge_id == self.settings.bridge_id
            and job.state in {JobState.CLAIMED, JobState.WAITING}
        ]
        fleet = self.services.fleet.read()
        for job in mine:
            self.resume(job, fleet)
        if mine:
            log.info("bridge: resumed %d jobs from the ledger", len(mine))

    def resume(self, job: Job, fleet: list[ServerView]) -> None:
        """Place again a job the ledger holds: its attempt count, the servers it failed on, how
        far its history was cut, and its deadline carry over."""
        try:
            ready = self.prepare(job.id, job.message, trim=job.trim)
        except Rejection as exc:
            self.reject(job.id, str(exc))
            return
        except Exception as exc:
            log.exception("job=%s could not be prepared again", job.id)
            self.reject(job.id, f"internal error preparing the message: {exc!r}"[:500])
            return
        ready.attempt = job.attempt
        ready.tried = tuple(job.servers_tried)
        ready.deadline = job.deadline or ready.deadline
        self.enqueue(ready, fleet)
