"""The routing policy, rule by rule, on plain values."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from orchestrator.domain.routing import Planner, SpeedDefaults, choose_server, estimate
from orchestrator.domain.servers import ModelSpeed, ServerView

M = "llama3.2:3b"
DEFAULTS = SpeedDefaults(tokens_per_s=30.0, load_s=20.0)


def server(
    server_id: str,
    *,
    capacity: int = 2,
    inflight: int = 0,
    loaded: bool = True,
    tps: float | None = 50.0,
    load_s: float | None = 2.0,
    region: str = "",
    priority: int = 0,
    models: tuple[str, ...] = (M,),
    healthy: bool = True,
    online: bool = True,
) -> ServerView:
    return ServerView(
        id=server_id,
        capacity=capacity,
        inflight=inflight,
        models=frozenset(models),
        loaded=frozenset(models if loaded else ()),
        healthy=healthy,
        online=online,
        region=region,
        priority=priority,
        speeds={M: ModelSpeed(tokens_per_s=tps, load_s=load_s)},
    )


def choose(servers: list[ServerView], region: str = "", seed: int = 1) -> str | None:
    decision = choose_server(
        servers, M, tokens=100, region=region, defaults=DEFAULTS, rng=random.Random(seed)
    )
    return decision.server.id if decision.server else None


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        # Warm beats cold at equal speed.
        ([server("cold", loaded=False), server("warm")], "warm"),
        # A fast cold server beats a much slower warm one: 2 s load + 1 s vs 10 s.
        ([server("slow-warm", tps=10), server("fast-cold", tps=100, loaded=False)], "fast-cold"),
        # ... but not when loading costs more than the speed saves: 20 s + 1 s vs 10 s.
        ([server("slow-warm", tps=10), server("fast-cold", tps=100, loaded=False, load_s=20)],
         "slow-warm"),
        # Load time measured nowhere in the fleet counts as the setting (20 s).
        ([server("slow-warm", tps=10, load_s=None),
          server("fast-cold", tps=100, loaded=False, load_s=None)], "slow-warm"),
        # ... and measured elsewhere, as the fleet's typical load time (2 s here).
        ([server("slow-warm", tps=10, load_s=2.0),
          server("fast-cold", tps=100, loaded=False, load_s=None)], "fast-cold"),
        # Unmeasured speed counts as the default (30 tokens/s) against a measured 50.
        ([server("unmeasured", tps=None), server("measured", tps=50)], "measured"),
        # Only servers with the model, online, with Ollama answering.
        ([server("other", models=("qwen2.5:7b",)), server("has-it", tps=1)], "has-it"),
        ([server("down", healthy=False, tps=1000), server("up", tps=1)], "up"),
        ([server("gone", online=False, tps=1000), server("up", tps=1)], "up"),
        ([server("other", models=("qwen2.5:7b",))], None),
    ],
)  # fmt: skip
def test_soonest_finish(servers: list[ServerView], expected: str | None) -> None:
    assert choose(servers) == expected


def test_waits_for_a_busy_fast_server_rather_than_take_a_free_slow_slot() -> None:
    fast_busy = server("fast", tps=200, capacity=2, inflight=2)  # 0.25 s wait + 0.5 s
    slow_free = server("slow", tps=5, capacity=4)  # 20 s
    decision = choose_server([fast_busy, slow_free], M, tokens=100, defaults=DEFAULTS)
    assert decision.server is None
    assert decision.wait
    assert "waits for fast" in decision.reason


def test_a_free_slot_wins_when_the_busy_server_is_not_much_faster() -> None:
    busy = server("busy", tps=60, capacity=1, inflight=1)  # 1.67 s wait + 1.67 s
    free = server("free", tps=50)  # 2 s
    assert choose([busy, free]) == "free"


def test_never_more_than_capacity() -> None:
    full = server("full", capacity=3, inflight=3, tps=1000)
    decision = choose_server([full], M, tokens=100, defaults=DEFAULTS)
    assert decision.server is None and decision.wait


def test_region_then_priority_among_equally_soon() -> None:
    home = server("home", region="eu")
    away = server("away", region="us", priority=9)
    assert choose([away, home], region="eu") == "home"
    assert choose([away, home]) == "away"  # no region asked: priority decides
    # Region does not beat a much sooner finish.
    assert choose([server("home", region="eu", tps=5), server("away", region="us")], "eu") == "away"


def test_ties_broken_at_random() -> None:
    twins = [server("a"), server("b"), server("c")]
    picks = Counter(choose(twins, seed=seed) for seed in range(300))
    assert set(picks) == {"a", "b", "c"}
    assert min(picks.values()) > 60


def test_excluded_servers_are_not_chosen() -> None:
    decision = choose_server(
        [server("tried", tps=1000), server("fresh")], M, tokens=100, exclude={"tried"}
    )
    assert decision.server is not None and decision.server.id == "fresh"


def test_estimate_parts() -> None:
    parts = estimate(server("s", tps=50, loaded=False, load_s=3.0), M, 100, DEFAULTS)
    assert (parts.wait_s, parts.load_s, parts.generate_s) == (0.0, 3.0, 2.0)
    assert parts.finish_s == 5.0
    full = estimate(server("s", tps=50, capacity=2, inflight=2), M, 100, DEFAULTS)
    assert full.wait_s == 1.0


def test_an_unmeasured_server_is_assumed_typical_of_the_fleet() -> None:
    # A new Mac with no measurements yet is neither shunned nor favoured.
    measured = server("measured", tps=400)
    new = server("new", tps=None)
    picks = Counter(choose([measured, new], seed=seed) for seed in range(100))
    assert set(picks) == {"measured", "new"}


def test_a_free_slow_slot_is_used_while_a_backlog_waits_but_not_at_the_end() -> None:
    fast_busy = server("fast", tps=200, capacity=2, inflight=2)
    slow_free = server("slow", tps=5, capacity=4)  # 20 s a job
    # 200 jobs behind this one: the fleet needs about 48 s to drain them, so a job that is
    # done in 20 s on a slow slot delays nothing.
    planner = Planner([fast_busy, slow_free], DEFAULTS)
    planner.backlog = 200
    decision = planner.place(M, tokens=100)
    assert decision.server is not None and decision.server.id == "slow"
    # Two jobs left: the slow slot would finish last, so the job waits for the fast server.
    planner = Planner([fast_busy, slow_free], DEFAULTS)
    planner.backlog = 2
    assert planner.place(M, tokens=100).wait


def test_a_plan_places_each_job_after_the_ones_before_it() -> None:
    # Two free slots on a fast server, one on a slow one: the third job waits for the fast
    # server when that is sooner, and never exceeds the slots free now.
    planner = Planner([server("fast", tps=100, capacity=2), server("slow", tps=10, capacity=1)])
    decisions = [planner.place(M, tokens=100) for _ in range(3)]
    assert [d.server.id if d.server else None for d in decisions] == ["fast", "fast", None]
    assert decisions[2].wait


def test_a_cold_load_on_a_full_server_evicts_in_the_plan() -> None:
    # mini holds one model (qwen); loading llama there would evict it, so the qwen job after
    # the llama job is not planned as warm on mini.
    q = "qwen2.5:7b"
    speed = ModelSpeed(tokens_per_s=50, load_s=1.0)
    mini = ServerView(
        id="mini", capacity=2, inflight=0, models=frozenset({M, q}), loaded=frozenset({q}),
        speeds={M: speed, q: speed},
    )  # fmt: skip
    planner = Planner([mini], DEFAULTS)
    first = planner.estimate(mini, q, 100, DEFAULTS)
    assert first.load_s == 0.0
    planner.place(M, tokens=100)
    after = planner.estimate(mini, q, 100, DEFAULTS)
    assert after.load_s == 1.0
