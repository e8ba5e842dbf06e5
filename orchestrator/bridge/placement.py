"""Placement: the jobs ready to run, the routing policy that picks their servers, the slot each
takes and the task that carries it. A job that cannot be placed yet waits here, by priority
then age, and is placed the moment a slot frees."""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque

from celery import Celery

from orchestrator.bridge.intake import ReadyJob
from orchestrator.domain.routing import Decision, RoutingPolicy, able_servers, hosting_servers
from orchestrator.domain.servers import ServerView
from orchestrator.refusals import end_unanswered
from orchestrator.services import Services
from orchestrator.state.fleet import Fleet
from orchestrator.state.ledger import Reservation
from workers.contract.model_names import model_key
from workers.contract.protocol import GENERATE_TASK, GenerateJob, generate_task_id

log = logging.getLogger(__name__)

UNBOUNDED = 1_000_000  # the capacity a policy that overfills servers reserves against
FLEET_RECORDS_MAX_AGE_S = 0.25
RESERVE_TRIES = 3
RECENT_MODELS = 200
# The site's backlog counts for a model's expected work while the bridge has heard of it lately.
SITE_BACKLOG_FRESH_S = 5.0


class FleetCache:
    """The fleet for each step: records re-read a few times a second (they change with
    heartbeats, and a server that stops or cools says so on the event channel), in-flight
    counts every step."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._records: list[ServerView] | None = None
        self._read_at = 0.0

    def read(self) -> list[ServerView]:
        now = time.monotonic()
        if self._records is None or now - self._read_at > FLEET_RECORDS_MAX_AGE_S:
            self._records = self.fleet.read()
            self._read_at = now
            return list(self._records)
        return self.fleet.refresh_inflight(self._records)

    def invalidate(self) -> None:
        """A server's standing changed: read the records again next time."""
        self._records = None


class Placement:
    def __init__(
        self,
        services: Services,
        celery_app: Celery,
        policy: RoutingPolicy,
        fleet_cache: FleetCache,
    ) -> None:
        self.services = services
        self.bridge_id = services.settings.bridge_id
        self.celery = celery_app
        self.policy = policy
        self.fleet_cache = fleet_cache
        self.waiting: list[ReadyJob] = []
        self.site_backlog = 0  # messages the site queue still holds, as of the last claim
        self.site_backlog_at = 0.0  # when that was (monotonic)
        # The models of the jobs claimed lately: the site's backlog is taken to be like them.
        self.recent_models: deque[str] = deque(maxlen=RECENT_MODELS)
        self._planned_for: list[ServerView] | None = None

    def wanted_models(self) -> frozenset[str]:
        """The models a claimed message may need: its entity's, and the scorer's."""
        catalog = self.services.entities.catalog()
        models = {model_key(model) for model in catalog.answered_models}
        scorer = catalog.get(self.services.settings.eq_entity)
        if self.services.settings.eq_enabled and scorer is not None and scorer.enabled:
            models.add(model_key(scorer.model))
        return frozenset(models)

    # Back-pressure ------------------------------------------------------------------------

    def room_to_claim(self, fleet: list[ServerView]) -> bool:
        """Whether a message claimed now could use a free slot: more slots are free than jobs
        wait here, or one is free on a server that runs none of the waiting jobs' models (a
        server for one model would idle behind jobs for another). Only slots that some
        entity's model can use count, and never more jobs wait here than the fleet has slots.
        A policy that overfills servers claims whenever it can."""
        if not self.policy.respects_capacity:
            return True
        wanted_models = self.wanted_models()
        usable = [server for server in fleet if server.models & wanted_models]
        free_slots = sum(server.free_slots for server in usable)
        if len(self.waiting) < free_slots:
            return True
        if not free_slots or len(self.waiting) >= sum(s.usable_capacity for s in usable):
            return False
        wanted = {ready.model for ready in self.waiting}
        return any(server.free_slots and not server.models & wanted for server in usable)

    # Waiting ------------------------------------------------------------------------------

    def enqueue(self, ready: ReadyJob, fleet: list[ServerView]) -> None:
        """Place the job now, or keep it waiting here; dead when no online server has its
        model at all."""
        self.recent_models.append(ready.model)
        if not hosting_servers(fleet, ready.model):
            reason = f"no online server has model {ready.request.model} (entity {ready.entity})"
            if ready.tried:
                reason += f"; tried: {', '.join(ready.tried)}"
            log.warning("dead job=%s attempt=%d: %s", ready.job_id, ready.attempt, reason)
            end_unanswered(self.services, ready.job_id, ready.kind, reason, dead=True)
            return
        if self.place(ready, fleet):
            return
        held = self.services.ledger.mark_waiting(
            ready.job_id,
            self.bridge_id,
            entity=ready.entity,
            model=ready.model,
            priority=ready.priority,
        )
        if not held:
            log.info("job=%s no longer this bridge's to place: dropped here", ready.job_id)
            return
        heapq.heappush(self.waiting, ready)
        log.debug("wait job=%s model=%s: no free slot worth taking", ready.job_id, ready.model)

    def place_waiting(self, fleet: list[ServerView]) -> bool:
        """Place what waits, in order, where slots allow; True if any left."""
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

    def hand_back_waiting(self) -> int:
        """Everything waiting here goes back for another bridge to place (a clean stop)."""
        handed = 0
        for ready in self.waiting:
            handed += self.services.ledger.hand_back(ready.job_id, self.bridge_id)
        self.waiting.clear()
        return handed

    # Placing ------------------------------------------------------------------------------

    def place(self, ready: ReadyJob, fleet: list[ServerView]) -> bool:
        """Reserve a slot on the chosen server and dispatch; False if no slot could be had
        (True too when the job turned out not to be this bridge's any more)."""
        for _ in range(RESERVE_TRIES):
            decision = self.decide(ready, fleet)
            server = decision.server
            if server is None:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("wait job=%s: %s", ready.job_id, decision.reason)
                return False
            attempt = ready.attempt + 1
            respects = self.policy.respects_capacity
            capacity = server.usable_capacity if respects else UNBOUNDED
            model_slots = server.model_slots.get(ready.model, 0) if respects else 0
            reserved = self.services.ledger.reserve(
                ready.job_id,
                server.id,
                capacity,
                attempt=attempt,
                entity=ready.entity,
                model=ready.model,
                priority=ready.priority,
                bridge_id=self.bridge_id,
                model_slots=model_slots,
            )
            if reserved is Reservation.NOT_OURS:
                # Given up by the sweep or handed to another bridge meanwhile.
                log.info("job=%s no longer this bridge's to place: dropped here", ready.job_id)
                return True
            if reserved is Reservation.TAKEN:
                log.info(
                    "route job=%s attempt=%d server=%s %s",
                    ready.job_id, attempt, server.id, route_figures(decision),
                )  # fmt: skip
                if log.isEnabledFor(logging.DEBUG):  # the whole comparison, told only when asked
                    log.debug("route job=%s attempt=%d: %s", ready.job_id, attempt, decision.reason)
                index = next(i for i, known in enumerate(fleet) if known.id == server.id)
                fleet[index] = fleet[index].with_one_more(ready.model)
                return self.dispatch(ready, server.id, attempt)
            # Another bridge took that slot between our read and our reserve: look again.
            self.fleet_cache.invalidate()
            fleet[:] = self.fleet_cache.read()
            self._planned_for = None
        return False

    def decide(self, ready: ReadyJob, fleet: list[ServerView]) -> Decision:
        # A retry goes to a server not yet tried while one is usable; when none is, a tried
        # one may have it again once its cooldown ends.
        exclude: tuple[str, ...] = ()
        if ready.tried and any(
            server.id not in ready.tried for server in able_servers(fleet, ready.model)
        ):
            exclude = ready.tried
        if self._planned_for is not fleet:
            # One plan per snapshot of the fleet: each job placed sees the ones placed before.
            self.policy.on_fleet(fleet)
            self._planned_for = fleet
        return self.policy.choose(
            fleet,
            ready.model,
            tokens=ready.expected_tokens,
            region=ready.region,
            exclude=exclude,
            backlog=self.site_backlog + len(self.waiting),
            backlog_by_model=self.backlog_by_model(),
        )

    def backlog_by_model(self) -> dict[str, float]:
        """The jobs waiting, by model: those here, and the site's backlog shared out as the
        models of the jobs claimed lately."""
        counts: dict[str, float] = {}
        for ready in self.waiting:
            counts[ready.model] = counts.get(ready.model, 0.0) + 1
        fresh = time.monotonic() - self.site_backlog_at < SITE_BACKLOG_FRESH_S
        if fresh and self.site_backlog and self.recent_models:
            share = self.site_backlog / len(self.recent_models)
            for model in self.recent_models:
                counts[model] = counts.get(model, 0.0) + share
        return counts

    def dispatch(self, ready: ReadyJob, server_id: str, attempt: int) -> bool:
        """Send the generate task (its worker sends the result on to `deliver`); the ledger
        already says where it went."""
        job = GenerateJob(
            job_id=ready.job_id,
            attempt=attempt,
            server_id=server_id,
            request=ready.request,
            dispatched_at=time.time(),
        )
        try:
            self.celery.send_task(
                GENERATE_TASK,
                args=[job.model_dump(mode="json")],
                queue=server_id,
                task_id=generate_task_id(ready.job_id, attempt),
                argsrepr=job.argsrepr(),
            )
        except Exception as exc:  # the broker is Redis: when it is away, keep the job here
            log.warning(
                "dispatch failed job=%s attempt=%d server=%s: %s; it waits",
                ready.job_id, attempt, server_id, exc,
            )  # fmt: skip
            self.services.ledger.undo_dispatch(ready.job_id, attempt)
            return False
        log.info("dispatch job=%s attempt=%d server=%s", ready.job_id, attempt, server_id)
        return True


def route_figures(decision: Decision) -> str:
    """`finish=0.80s runner_up=mac-1 runner_up_finish=1.30s reason=soonest`: the winner's
    expected finish, the next soonest server's, and what decided it."""
    parts = []
    if decision.finish_s is not None:
        parts.append(f"finish={decision.finish_s:.2f}s")
        parts.append(f"runner_up={decision.runner_up or 'none'}")
        if decision.runner_up_finish_s is not None:
            parts.append(f"runner_up_finish={decision.runner_up_finish_s:.2f}s")
    parts.append(f"reason={decision.basis or 'chosen'}")
    return " ".join(parts)
