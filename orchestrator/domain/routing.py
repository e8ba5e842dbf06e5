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
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import ClassVar

from orchestrator.domain.servers import ServerView

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

    @property
    def finish_s(self) -> float:
        return self.wait_s + self.load_s + self.generate_s

    def explain(self) -> str:
        return (
            f"{self.server.id} {self.finish_s:.2f}s (wait {self.wait_s:.2f} + load "
            f"{self.load_s:.2f} + generate {self.generate_s:.2f}, "
            f"{self.server.inflight}/{self.server.capacity} busy)"
        )


@dataclass(frozen=True)
class Decision:
    """`server` to dispatch to now, or None: `wait` for a slot, or no server can run it."""

    server: ServerView | None
    why: str | Callable[[], str]  # the reason, or how to tell it: only a debug log asks
    wait: bool = False

    @property
    def reason(self) -> str:
        return self.why if isinstance(self.why, str) else self.why()


def able_servers(servers: Iterable[ServerView], model: str) -> list[ServerView]:
    """Servers that are online, whose Ollama answers, that are not cooling down after failures,
    and that have the model installed."""
    return [server for server in servers if model in server.models and server.usable_capacity > 0]


def hosting_servers(servers: Iterable[ServerView], model: str) -> list[ServerView]:
    """Online servers with the model, usable now or not (cooling, Ollama away for a moment):
    a job for the model may wait for one of them."""
    return [server for server in servers if server.online and model in server.models]


def fleet_defaults(servers: list[ServerView], model: str, fallback: SpeedDefaults) -> SpeedDefaults:
    """A server not yet measured for a model is assumed typical of the fleet for that model:
    the median of what the others have shown, else the settings."""
    speeds = [server.speeds[model] for server in servers if model in server.speeds]
    tokens_per_s = [speed.tokens_per_s for speed in speeds if speed.tokens_per_s]
    load_s = [speed.load_s for speed in speeds if speed.load_s is not None]
    return SpeedDefaults(
        tokens_per_s=statistics.median(tokens_per_s) if tokens_per_s else fallback.tokens_per_s,
        load_s=statistics.median(load_s) if load_s else fallback.load_s,
    )


class Planner:
    """Places jobs one after another, each where it would finish soonest given the jobs placed
    before it: a list scheduler over the fleet's slots. A job is dispatched only to a slot that
    is free now; one whose soonest finish is behind a busy slot waits for it."""

    def __init__(
        self,
        servers: Iterable[ServerView],
        defaults: SpeedDefaults = SpeedDefaults(),
        rng: random.Random | None = None,
    ) -> None:
        self.servers = list(servers)
        self.defaults = defaults
        self.rng = rng or random.Random()
        self.backlog = 0  # jobs known to be waiting behind this one (in the bridge, the site)
        self._slots: dict[str, list[float]] = {}  # per server: seconds until each slot frees
        self._loaded: dict[str, set[str]] = {}
        self._room: dict[str, int] = {}

    def _slots_of(self, server: ServerView, generate_s: float) -> list[float]:
        if server.id not in self._slots:
            capacity = server.usable_capacity
            busy = min(server.inflight, capacity)
            # A busy slot frees, on average, halfway through a job like this one.
            self._slots[server.id] = [0.0] * (capacity - busy) + [generate_s / 2] * busy
            self._loaded[server.id] = set(server.loaded)
            # Ollama does not say how many models fit; a server holds at least what it holds now.
            self._room[server.id] = max(1, len(server.loaded))
        return self._slots[server.id]

    def estimate(
        self, server: ServerView, model: str, tokens: int, typical: SpeedDefaults
    ) -> Estimate:
        speed = server.speeds.get(model)
        tokens_per_s = (speed.tokens_per_s if speed else None) or typical.tokens_per_s
        generate_s = tokens / tokens_per_s
        wait_s = min(self._slots_of(server, generate_s))
        if model in self._loaded[server.id]:
            load_s = 0.0
        else:
            measured = speed.load_s if speed else None
            load_s = measured if measured is not None else typical.load_s
        return Estimate(server, wait_s, load_s, generate_s)

    def place(
        self, model: str, *, tokens: int, region: str = "", exclude: Collection[str] = ()
    ) -> Decision:
        able = [server for server in able_servers(self.servers, model) if server.id not in exclude]
        if not able:
            return unplaceable(self.servers, model)
        typical = fleet_defaults(able, model, self.defaults)
        estimates = sorted(
            (self.estimate(server, model, tokens, typical) for server in able),
            key=lambda entry: entry.finish_s,
        )
        soonest = estimates[0].finish_s
        equally_soon = [
            entry
            for entry in estimates
            if entry.finish_s <= soonest * (1 + EQUAL_SHARE) + EQUAL_SECONDS
        ]
        best = max(
            equally_soon,
            key=lambda entry: (
                bool(region) and entry.server.region == region,
                entry.server.priority,
                -sum(1 for left in self._slots[entry.server.id] if left > 0),
                self.rng.random(),
            ),
        )
        if best.wait_s > 0.0:
            best = self._free_slot_before_drain(estimates, tokens) or best
        slots = self._slots[best.server.id]
        slots[slots.index(best.wait_s)] = best.finish_s
        loaded = self._loaded[best.server.id]
        if model not in loaded and len(loaded) >= self._room[best.server.id]:
            # Loading one more evicts one: later jobs for it would load it again.
            loaded.discard(sorted(loaded)[0])
        loaded.add(model)

        def reason() -> str:
            others = "; ".join(entry.explain() for entry in estimates[:4] if entry is not best)
            return best.explain() + (f" over {others}" if others else "")

        if best.wait_s == 0.0:
            return Decision(best.server, reason)
        return Decision(None, lambda: f"waits for {reason()}", wait=True)

    def _free_slot_before_drain(self, estimates: list[Estimate], tokens: int) -> Estimate | None:
        """While a backlog is waiting, a free slot is worth taking if the job would be done there
        before the fleet could drain the backlog anyway: keep every slot busy, and hold back
        only near the end, when a slow slot would finish last."""
        if self.backlog <= 0:
            return None
        throughput = sum(
            entry.server.usable_capacity * tokens / entry.generate_s for entry in estimates
        )  # tokens per second of every able slot
        drain_s = (self.backlog + sum(e.server.inflight for e in estimates)) * tokens / throughput
        free = [entry for entry in estimates if entry.wait_s == 0.0 and entry.finish_s <= drain_s]
        return min(free, key=lambda entry: entry.finish_s) if free else None


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
) -> Estimate:
    """One job's expected finish on one server, alone."""
    return Planner([server], defaults).estimate(server, model, tokens, defaults)


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
    ) -> Decision:
        """Where this job goes now, or why it waits (or cannot be placed). `backlog` is how
        many jobs are known to wait behind it (in the bridge and on the site)."""
        raise NotImplementedError


class SoonestFinish(RoutingPolicy):
    """Each job where it will be finished soonest, given the jobs placed before it on the
    same snapshot (see Planner)."""

    name = "soonest"

    def __init__(self, defaults: SpeedDefaults = SpeedDefaults(), rng: random.Random | None = None):
        super().__init__(defaults, rng)
        self._planner: Planner | None = None

    def on_fleet(self, servers: list[ServerView]) -> None:
        self._planner = Planner(servers, self.defaults, self.rng)

    def choose(
        self,
        servers: list[ServerView],
        model: str,
        *,
        tokens: int,
        region: str = "",
        exclude: Collection[str] = (),
        backlog: int = 0,
    ) -> Decision:
        if self._planner is None:
            self.on_fleet(servers)
        assert self._planner is not None
        self._planner.backlog = backlog
        return self._planner.place(model, tokens=tokens, region=region, exclude=exclude)


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
        return Decision(chosen, f"{chosen.id} at random of {len(able)}")


class LeastInflight(CapacityBlind):
    """The server with the fewest jobs in flight, blind to capacity and speed."""

    name = "least_inflight"

    def pick(self, able: list[ServerView]) -> Decision:
        chosen = min(able, key=lambda server: (server.inflight, self.rng.random()))
        return Decision(chosen, f"{chosen.id} with {chosen.inflight} in flight")


POLICIES: dict[str, type[RoutingPolicy]] = {
    policy.name: policy for policy in (SoonestFinish, RandomChoice, LeastInflight)
}


def policy_named(
    name: str, defaults: SpeedDefaults = SpeedDefaults(), rng: random.Random | None = None
) -> RoutingPolicy:
    try:
        return POLICIES[name](defaults, rng)
    except KeyError:
        raise ValueError(f"no routing policy {name!r}: one of {', '.join(POLICIES)}") from None
