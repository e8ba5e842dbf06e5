"""Which server gets a job: pure policy over a snapshot of the fleet, no I/O.

A job goes where it will be finished soonest. Its expected finish on a server is the wait for a
slot there, the model's load time when the model is not loaded, and the generation time at the
server's measured speed for that model. Servers that would finish it about as soon are told
apart by the job's region, then priority, then at random. When the soonest server is full the
job waits for it rather than take a slower free slot: a server is never sent more than its
capacity.

The bridge asks a `RoutingPolicy`; `SoonestFinish` is the router, `RandomChoice` and
`LeastInflight` (blind to capacity and speed, as the old bot was) exist to compare against.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

from orchestrator.domain.servers import ModelSpeed, ServerView
from workers.contract.model_names import model_key

# Finish times within this share (or this many seconds) of the soonest count as equally soon.
EQUAL_SHARE = 0.05
EQUAL_SECONDS = 0.05


@dataclass(frozen=True)
class SpeedDefaults:
    """What to assume of a server and model until it has been measured (when no other server
    has been measured for that model either)."""

    tokens_per_s: float = 30.0
    load_s: float = 20.0


@dataclass(frozen=True)
class Estimate:
    server: ServerView
    wait_s: float
    load_s: float
    generate_s: float
    evicts: str | None = None  # the model a load here puts out of memory
    penalty_s: float = 0.0  # what that costs later: the evicted model's next load

    @property
    def finish_s(self) -> float:
        return self.wait_s + self.load_s + self.generate_s

    @property
    def cost_s(self) -> float:
        """The finish, and what placing the job here costs the jobs after it."""
        return self.finish_s + self.penalty_s

    def explain(self) -> str:
        evicts = f", evicts {self.evicts} (+{self.penalty_s:.2f})" if self.evicts else ""
        return (
            f"{self.server.id} {self.finish_s:.2f}s (wait {self.wait_s:.2f} + load "
            f"{self.load_s:.2f} + generate {self.generate_s:.2f}, "
            f"{self.server.inflight}/{self.server.capacity} busy{evicts})"
        )


@dataclass(frozen=True)
class Decision:
    """`server` to dispatch to now, or None: `wait` for a slot, or no server can run it.

    For the log's route line: the winner's expected finish, the runner-up (the next soonest
    other server) and its finish, and `basis`, the word for why the winner won: `soonest`,
    `only` (no other server could take it), `region`, `priority`, `fewer_busy` or `random`
    (among servers about as soon), `free_slot` (a free slot taken while the soonest is busy),
    or the name of a policy that does not estimate finishes."""

    server: ServerView | None
    why: str | Callable[[], str]  # the reason, or how to tell it: only a debug log asks
    wait: bool = False
    finish_s: float | None = None
    runner_up: str | None = None
    runner_up_finish_s: float | None = None
    basis: str = ""

    @property
    def reason(self) -> str:
        return self.why if isinstance(self.why, str) else self.why()


def able_servers(servers: Iterable[ServerView], model: str) -> list[ServerView]:
    """Servers that are online, whose model server answers, that are not cooling down after
    failures, and that have the model installed (with a slot of its own, where its slots are
    its own)."""
    return [
        server for server in servers if model in server.models and server.model_capacity(model) > 0
    ]


def hosting_servers(servers: Iterable[ServerView], model: str) -> list[ServerView]:
    """Online servers with the model, usable now or not (cooling, Ollama away for a moment):
    a job for the model may wait for one of them."""
    return [server for server in servers if server.online and model in server.models]


class SpeedBook:
    """Each server's speed and load time for each model: as measured, else as the server says
    of itself, else estimated from what is known of that server and of that model elsewhere.
    Speeds are taken to be a server's factor times a model's typical speed: a Mac that runs
    one model at a quarter of the fleet's typical speed runs another at about a quarter too."""

    def __init__(self, servers: Iterable[ServerView], defaults: SpeedDefaults) -> None:
        self.defaults = defaults
        self.tps: dict[tuple[str, str], float] = {}
        self.load: dict[tuple[str, str], float] = {}
        for server in servers:
            for source in (server.own_speeds, server.speeds):  # measured last: it wins
                for model, speed in source.items():
                    if speed.tokens_per_s:
                        self.tps[server.id, model] = speed.tokens_per_s
                    if speed.load_s is not None:
                        self.load[server.id, model] = speed.load_s
        self.model_tps = _medians((model, tps) for (_, model), tps in self.tps.items())
        self.factor = _medians(
            (server_id, tps / self.model_tps[model]) for (server_id, model), tps in self.tps.items()
        )
        self.fleet_tps = _median(self.tps.values())
        self.model_load = _medians((model, load) for (_, model), load in self.load.items())
        self.server_load = _medians((server_id, load) for (server_id, _), load in self.load.items())
        self.fleet_load = _median(self.load.values())

    def tokens_per_s(self, server_id: str, model: str) -> float:
        known = self.tps.get((server_id, model))
        if known:
            return known
        factor = self.factor.get(server_id, 1.0)
        typical = self.model_tps.get(model) or self.fleet_tps
        return typical * factor if typical else self.defaults.tokens_per_s

    def load_s(self, server_id: str, model: str) -> float:
        for known in (
            self.load.get((server_id, model)),
            self.model_load.get(model),
            self.server_load.get(server_id),
            self.fleet_load,
        ):
            if known is not None:
                return known
        return self.defaults.load_s


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _medians(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    grouped: dict[str, list[float]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return {name: statistics.median(values) for name, values in grouped.items()}


@dataclass
class _Plan:
    """One server as a plan has filled it so far."""

    slots: list[float]  # seconds until each of its slots is free
    model_slots: dict[str, list[float]]  # the same, for each model with slots of its own
    loaded: list[str]  # least recently used first
    loading: set[str]
    room: int  # most models loaded at once
    busy: Counter[str]  # jobs per model, running or planned


class Planner:
    """Places jobs one after another, each where it would finish soonest given the jobs placed
    before it: a list scheduler over the fleet's slots. A job is dispatched only to a slot that
    is free now; one whose soonest finish is behind a busy slot waits for it.

    A load that puts another model out of memory is charged that model's next load when jobs
    for it are waiting; where a model server's own manager evicts (a pool, one llama-server per
    model), a model with jobs running or with the most waiting is never evicted. While a
    backlog of the job's model waits, a free slot is taken if the job would be done there
    before the servers for that model could drain their backlog anyway (`hold_back`)."""

    def __init__(
        self,
        servers: Iterable[ServerView],
        defaults: SpeedDefaults = SpeedDefaults(),
        rng: random.Random | None = None,
        *,
        hold_back: bool = True,
    ) -> None:
        self.servers = list(servers)
        self.defaults = defaults
        self.book = SpeedBook(self.servers, defaults)
        self.rng = rng or random.Random()
        self.hold_back = hold_back
        self.backlog = 0  # jobs known to be waiting behind this one (in the bridge, the site)
        self.backlog_by_model: Mapping[str, float] = {}  # the same, by model, where known
        self._plans: dict[str, _Plan] = {}

    def _plan_of(self, server: ServerView, generate_s: float) -> _Plan:
        plan = self._plans.get(server.id)
        if plan is None:
            capacity = server.usable_capacity
            busy = min(server.inflight, capacity)
            loaded = [model for model in server.lru if model in server.loaded]
            loaded += sorted(server.loaded - set(loaded))
            plan = _Plan(
                # A busy slot frees, on average, halfway through a job like this one.
                slots=[0.0] * (capacity - busy) + [generate_s / 2] * busy,
                model_slots={},
                loaded=loaded,
                loading=set(server.loading),
                # Ollama does not say how many models fit: at least what it holds now.
                room=server.max_loaded or max(1, len(server.loaded) + len(server.loading)),
                busy=Counter(server.inflight_models),
            )
            self._plans[server.id] = plan
        return plan

    def _model_slots(
        self, server: ServerView, plan: _Plan, model: str, generate_s: float
    ) -> list[float] | None:
        own = server.model_slots.get(model)
        if own is None:
            return None
        if model not in plan.model_slots:
            busy = min(server.inflight_models.get(model, 0), own)
            plan.model_slots[model] = [0.0] * (own - busy) + [generate_s / 2] * busy
        return plan.model_slots[model]

    def backlog_of(self, model: str) -> float:
        return self.backlog_by_model.get(model, 0.0) if self.backlog_by_model else self.backlog

    def estimate(self, server: ServerView, model: str, tokens: int) -> Estimate | None:
        """The job's expected finish on the server, or None when it cannot go there now (a
        load would evict a model that must stay)."""
        generate_s = tokens / self.book.tokens_per_s(server.id, model)
        plan = self._plan_of(server, generate_s)
        wait_s = min(plan.slots)
        own = self._model_slots(server, plan, model, generate_s)
        if own is not None:
            wait_s = max(wait_s, min(own))
        if model in plan.loaded:
            return Estimate(server, wait_s, 0.0, generate_s)
        load_s = self.book.load_s(server.id, model)
        if model in plan.loading:
            return Estimate(server, wait_s, load_s / 2, generate_s)
        if len(plan.loaded) + len(plan.loading) < plan.room:
            return Estimate(server, wait_s, load_s, generate_s)
        victim = self._victim(server, plan, model)
        if victim is None:
            return None
        penalty_s = self.book.load_s(server.id, victim) if self.backlog_of(victim) > 0 else 0.0
        return Estimate(server, wait_s, load_s, generate_s, victim, penalty_s)

    def _victim(self, server: ServerView, plan: _Plan, model: str) -> str | None:
        """The model a load of `model` puts out. Ollama unloads an idle model when it needs
        the room; a pool manager evicts its least recently used server, busy or not, so there
        the load waits while that one has work."""
        if not plan.loaded:
            return None
        if model not in server.model_slots:
            idle = [name for name in plan.loaded if not plan.busy[name]]
            return (idle or plan.loaded)[0]
        victim = plan.loaded[0]
        if plan.busy[victim]:
            return None
        # Nor the model with the most work waiting: its jobs are placed first (the job asking
        # counts for its own model).
        victim_work = self.backlog_of(victim)
        others = [self.backlog_of(name) for name in plan.loaded[1:]]
        if victim_work > max([self.backlog_of(model) + 1, *others]):
            return None
        return victim

    def place(
        self, model: str, *, tokens: int, region: str = "", exclude: Collection[str] = ()
    ) -> Decision:
        able = [server for server in able_servers(self.servers, model) if server.id not in exclude]
        if not able:
            return unplaceable(self.servers, model)
        estimates = sorted(
            (
                estimate
                for server in able
                if (estimate := self.estimate(server, model, tokens)) is not None
            ),
            key=lambda entry: entry.cost_s,
        )
        if not estimates:
            held = ", ".join(server.id for server in able[:4])
            return Decision(
                None, f"waits: a load of {model} would evict a busy model ({held})", wait=True
            )
        soonest = estimates[0].cost_s
        equally_soon = [
            entry
            for entry in estimates
            if entry.cost_s <= soonest * (1 + EQUAL_SHARE) + EQUAL_SECONDS
        ]
        ranks = [
            (
                bool(region) and entry.server.region == region,
                entry.server.priority,
                -sum(1 for left in self._plans[entry.server.id].slots if left > 0),
                self.rng.random(),
            )
            for entry in equally_soon
        ]
        top = max(range(len(equally_soon)), key=ranks.__getitem__)
        best = equally_soon[top]
        basis = tie_basis(ranks, top) if len(equally_soon) > 1 else "soonest"
        if len(estimates) == 1:
            basis = "only"
        if best.wait_s > 0.0 and self.hold_back:
            free = self._free_slot_before_drain(estimates, model)
            if free is not None:
                best, basis = free, "free_slot"
        self._commit(best, model)
        runner_up = next((entry for entry in estimates if entry is not best), None)

        def reason() -> str:
            others = "; ".join(entry.explain() for entry in estimates[:4] if entry is not best)
            return best.explain() + (f" over {others}" if others else "")

        waits = best.wait_s > 0.0
        return Decision(
            None if waits else best.server,
            (lambda: f"waits for {reason()}") if waits else reason,
            wait=waits,
            finish_s=best.finish_s,
            runner_up=runner_up.server.id if runner_up else None,
            runner_up_finish_s=runner_up.finish_s if runner_up else None,
            basis=basis,
        )

    def _commit(self, best: Estimate, model: str) -> None:
        """The job is placed (or will wait for) `best`: the plan fills that slot."""
        plan = self._plans[best.server.id]
        plan.slots[plan.slots.index(min(plan.slots))] = best.finish_s
        own = plan.model_slots.get(model)
        if own is not None:
            own[own.index(min(own))] = best.finish_s
        if best.evicts is not None:
            plan.loaded.remove(best.evicts)
        if model in plan.loaded:
            plan.loaded.remove(model)
        plan.loading.discard(model)
        plan.loaded.append(model)
        plan.busy[model] += 1

    def _free_slot_before_drain(self, estimates: list[Estimate], model: str) -> Estimate | None:
        """While a backlog of this model is waiting, a free slot is worth taking if the job
        would be done there before the servers for the model could drain it anyway: keep every
        slot busy, and hold back only near the end, when a slow slot would finish last."""
        backlog = self.backlog_of(model)
        if backlog <= 0:
            return None
        # Jobs per second of every able slot, each at its own speed for this model.
        throughput = sum(
            entry.server.model_capacity(model) / entry.generate_s for entry in estimates
        )
        running = sum(self._plans[entry.server.id].busy[model] for entry in estimates)
        drain_s = (backlog + running) / throughput
        # Not by putting out a model that has work waiting too: its jobs would load it back.
        free = [
            entry
            for entry in estimates
            if entry.wait_s == 0.0 and entry.cost_s <= drain_s and not entry.penalty_s
        ]
        return min(free, key=lambda entry: entry.cost_s) if free else None


TIE_BASES = ("region", "priority", "fewer_busy", "random")


def tie_basis(ranks: list[tuple[bool, int, int, float]], top: int) -> str:
    """Among servers about as soon, what set the winner (rank `top`) above the next of them."""
    second = max(rank for index, rank in enumerate(ranks) if index != top)
    for basis, ours, theirs in zip(TIE_BASES, ranks[top], second, strict=True):
        if ours != theirs:
            return basis
    return "random"


def unplaceable(servers: Iterable[ServerView], model: str) -> Decision:
    """No usable server: wait when one that has the model may come back, else say so."""
    hosts = hosting_servers(servers, model)
    if not hosts:
        return Decision(None, f"no online server has model {model}")
    states = ", ".join(f"{server.id} {standing(server)}" for server in hosts[:4])
    return Decision(None, f"waits for a usable server with {model} ({states})", wait=True)


def standing(server: ServerView) -> str:
    if server.cooling:
        return f"cooling {server.cooling_s:.1f}s"
    if not server.healthy:
        return "ollama not answering"
    return "probing"


def estimate(
    server: ServerView, model: str, tokens: int, defaults: SpeedDefaults = SpeedDefaults()
) -> Estimate | None:
    """One job's expected finish on one server, alone."""
    return Planner([server], defaults).estimate(server, model, tokens)


def choose_server(
    servers: Iterable[ServerView],
    model: str,
    *,
    tokens: int,
    exclude: Collection[str] = (),
    region: str = "",
    defaults: SpeedDefaults = SpeedDefaults(),
    rng: random.Random | None = None,
) -> Decision:
    """Where one job goes now, or that it waits (see Planner)."""
    planner = Planner(servers, defaults, rng)
    return planner.place(model, tokens=tokens, region=region, exclude=exclude)


# Policies ---------------------------------------------------------------------------------------


class RoutingPolicy:
    """Where each job goes. The bridge tells a policy of each new snapshot of the fleet, then
    asks it for one job after another; a policy is a subclass, its hooks do nothing unless
    it needs them."""

    name: ClassVar[str]
    # Whether the bridge holds a job back while the chosen server has no free slot, and claims
    # from the site only while a slot is free. The comparison policies overfill, as the old bot.
    respects_capacity: ClassVar[bool] = True

    def __init__(self, defaults: SpeedDefaults = SpeedDefaults(), rng: random.Random | None = None):
        self.defaults = defaults
        self.rng = rng or random.Random()

    def on_fleet(self, servers: list[ServerView]) -> None:
        """A new snapshot of the fleet: whatever was planned on the last one is forgotten."""

    def choose(
        self,
        servers: list[ServerView],
        model: str,
        *,
        tokens: int,
        region: str = "",
        exclude: Collection[str] = (),
        backlog: int = 0,
        backlog_by_model: Mapping[str, float] | None = None,
    ) -> Decision:
        """Where this job goes now, or why it waits (or cannot be placed). `backlog` is how
        many jobs are known to wait behind it (in the bridge and on the site), and
        `backlog_by_model` how many of them are for each model, where that is known."""
        raise NotImplementedError


class SoonestFinish(RoutingPolicy):
    """Each job where it will be finished soonest, given the jobs placed before it on the
    same snapshot (see Planner)."""

    name = "soonest"
    hold_back = True

    def __init__(self, defaults: SpeedDefaults = SpeedDefaults(), rng: random.Random | None = None):
        super().__init__(defaults, rng)
        self._planner: Planner | None = None

    def on_fleet(self, servers: list[ServerView]) -> None:
        self._planner = Planner(servers, self.defaults, self.rng, hold_back=self.hold_back)

    def choose(
        self,
        servers: list[ServerView],
        model: str,
        *,
        tokens: int,
        region: str = "",
        exclude: Collection[str] = (),
        backlog: int = 0,
        backlog_by_model: Mapping[str, float] | None = None,
    ) -> Decision:
        if self._planner is None:
            self.on_fleet(servers)
        assert self._planner is not None
        self._planner.backlog = backlog
        self._planner.backlog_by_model = backlog_by_model or {}
        return self._planner.place(model, tokens=tokens, region=region, exclude=exclude)


@dataclass(frozen=True)
class ServerFacts:
    """A server's true parameters, as a yardstick is told them."""

    speeds: dict[str, ModelSpeed]  # by model key
    max_loaded: int = 0


class Informed(SoonestFinish):
    """A yardstick to measure the router against (bench/fleet.py): each job where it finishes
    soonest, never over a server's slots, planned with every server's true speeds and load
    times (`facts`), as no router can know them."""

    name = "yardstick"
    hold_back = False

    def __init__(self, defaults: SpeedDefaults = SpeedDefaults(), rng: random.Random | None = None):
        super().__init__(defaults, rng)
        self.facts: dict[str, ServerFacts] = {}

    def on_fleet(self, servers: list[ServerView]) -> None:
        super().on_fleet([told(server, self.facts.get(server.id)) for server in servers])


def told(server: ServerView, facts: ServerFacts | None) -> ServerView:
    if facts is None:
        return server
    return replace(
        server,
        speeds=facts.speeds,
        own_speeds={},
        max_loaded=facts.max_loaded or server.max_loaded,
    )


def facts_from_json(data: object) -> dict[str, ServerFacts]:
    """`{server: {"max_loaded": n, "models": {model: {"tokens_per_s": x, "load_s": y}}}}`."""
    if not isinstance(data, dict):
        raise ValueError("routing facts: a JSON object of servers")
    facts = {}
    for server_id, entry in data.items():
        models = entry.get("models", {}) if isinstance(entry, dict) else {}
        speeds = {
            model_key(name): ModelSpeed(
                tokens_per_s=float(values["tokens_per_s"]), load_s=float(values["load_s"])
            )
            for name, values in models.items()
        }
        facts[str(server_id)] = ServerFacts(speeds, int(entry.get("max_loaded", 0)))
    return facts


class CapacityBlind(RoutingPolicy):
    """The old bot's kind of choice, for comparison: any usable server with the model, full or
    not (a full Ollama queues the request); subclasses say which."""

    respects_capacity = False

    def choose(
        self,
        servers: list[ServerView],
        model: str,
        *,
        tokens: int,
        region: str = "",
        exclude: Collection[str] = (),
        backlog: int = 0,
        backlog_by_model: Mapping[str, float] | None = None,
    ) -> Decision:
        able = [server for server in able_servers(servers, model) if server.id not in exclude]
        if not able:
            return Decision(None, f"no online server has model {model}")
        return self.pick(able)

    def pick(self, able: list[ServerView]) -> Decision:
        raise NotImplementedError


class RandomChoice(CapacityBlind):
    name = "random"

    def pick(self, able: list[ServerView]) -> Decision:
        chosen = self.rng.choice(able)
        return Decision(chosen, f"{chosen.id} at random of {len(able)}", basis=self.name)


class LeastInflight(CapacityBlind):
    """The server with the fewest jobs in flight, blind to capacity and speed."""

    name = "least_inflight"

    def pick(self, able: list[ServerView]) -> Decision:
        chosen = min(able, key=lambda server: (server.inflight, self.rng.random()))
        return Decision(chosen, f"{chosen.id} with {chosen.inflight} in flight", basis=self.name)


POLICIES: dict[str, type[RoutingPolicy]] = {
    policy.name: policy for policy in (SoonestFinish, RandomChoice, LeastInflight, Informed)
}


def policy_named(
    name: str, defaults: SpeedDefaults = SpeedDefaults(), rng: random.Random | None = None
) -> RoutingPolicy:
    try:
        return POLICIES[name](defaults, rng)
    except KeyError:
        raise ValueError(f"no routing policy {name!r}: one of {', '.join(POLICIES)}") from None
