"""The routing policy, rule by rule, on plain values."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from orchestrator.domain.routing import (
    Informed,
    Planner,
    SpeedDefaults,
    choose_server,
    estimate,
    facts_from_json,
)
from orchestrator.domain.servers import ModelSpeed, ServerView
from orchestrator.state.fleet import cold_load_ms
from workers.contract.protocol import ChatTimings

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
    assert parts is not None
    assert (parts.wait_s, parts.load_s, parts.generate_s) == (0.0, 3.0, 2.0)
    assert parts.finish_s == 5.0
    full = estimate(server("s", tps=50, capacity=2, inflight=2), M, 100, DEFAULTS)
    assert full is not None and full.wait_s == 1.0


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
    first = planner.estimate(mini, q, 100)
    assert first is not None and first.load_s == 0.0
    planner.place(M, tokens=100)
    after = planner.estimate(mini, q, 100)
    assert after is not None and after.load_s == 1.0


# Per-model slots, loads and what the router learns -------------------------------------------

A, B, C = "alpha-f16:latest", "beta-f16:latest", "gamma-f16:latest"


def pool(
    server_id: str,
    *,
    loaded: tuple[str, ...] = (),
    busy: tuple[str, ...] = (),
    max_loaded: int = 2,
    tps: float = 50.0,
    load_s: float = 3.0,
) -> ServerView:
    """A pool manager's server: one llama-server per model, one slot each."""
    models = (A, B, C)
    view = ServerView(
        id=server_id,
        capacity=8,
        inflight=0,
        models=frozenset(models),
        loaded=frozenset(loaded),
        lru=loaded,
        backend="pool",
        model_slots=dict.fromkeys(models, 1),
        max_loaded=max_loaded,
        speeds={model: ModelSpeed(tokens_per_s=tps, load_s=load_s) for model in models},
    )
    return view.with_inflight(busy)


def test_a_model_with_slots_of_its_own_is_placed_only_where_one_is_free() -> None:
    server_a = pool("p", loaded=(A, B), busy=(A,))
    assert server_a.free_slots == 7 and server_a.free_for(A) == 0 and server_a.free_for(B) == 1
    planner = Planner([server_a], DEFAULTS)
    assert planner.place(A, tokens=100).wait  # A's one slot is taken: it waits
    decision = planner.place(B, tokens=100)
    assert decision.server is not None and decision.server.id == "p"
    assert planner.place(B, tokens=100).wait  # B's slot is now planned full


def test_a_pool_never_evicts_a_model_with_a_job_running() -> None:
    # Full pool (two of two), A least recently used and busy: a cold start of C would make
    # the pool evict A in the middle of its reply, so C waits.
    full = pool("p", loaded=(A, B), busy=(A,))
    assert Planner([full], DEFAULTS).place(C, tokens=100).wait
    # With A idle, C may start: A goes, as the pool would choose.
    idle = pool("p", loaded=(A, B))
    planner = Planner([idle], DEFAULTS)
    decision = planner.place(C, tokens=100)
    assert decision.server is not None
    assert "evicts alpha" in decision.reason


def test_a_pool_keeps_the_model_with_the_most_work_waiting() -> None:
    planner = Planner([pool("p", loaded=(A, B))], DEFAULTS)
    planner.backlog_by_model = {A: 5, B: 1, C: 1}
    assert planner.place(C, tokens=100).wait


def test_a_cold_load_is_weighed_against_a_warm_server_for_the_same_models_backlog() -> None:
    # The fleet's backlog is all for another model: for this one, waiting a second for the
    # warm fast server beats a 20 s cold load on a free one.
    warm = server("warm", tps=100, capacity=1, inflight=1)
    cold = server("cold", tps=100, capacity=4, loaded=False, load_s=20.0)
    planner = Planner([warm, cold], DEFAULTS)
    planner.backlog = 300
    planner.backlog_by_model = {M: 1, "other:latest": 299}
    assert planner.place(M, tokens=100).wait
    # With 300 of its own jobs waiting, the cold server is worth loading.
    planner = Planner([warm, cold], DEFAULTS)
    planner.backlog_by_model = {M: 300}
    decision = planner.place(M, tokens=100)
    assert decision.server is not None and decision.server.id == "cold"


def test_an_eviction_is_charged_the_evicted_models_next_load() -> None:
    q = "qwen2.5:7b"
    speed = ModelSpeed(tokens_per_s=50, load_s=4.0)
    one_model = ServerView(
        id="one", capacity=2, inflight=0, models=frozenset({M, q}), loaded=frozenset({q}),
        lru=(q,), max_loaded=1, speeds={M: speed, q: speed},
    )  # fmt: skip
    roomy = ServerView(
        id="roomy", capacity=2, inflight=0, models=frozenset({M}),
        speeds={M: ModelSpeed(tokens_per_s=40, load_s=4.0)},
    )  # fmt: skip
    planner = Planner([one_model, roomy], DEFAULTS)
    planner.backlog_by_model = {q: 10}
    decision = planner.place(M, tokens=100)  # 4 + 2 (+ 4 to reload qwen) vs 4 + 2.5
    assert decision.server is not None and decision.server.id == "roomy"
    planner = Planner([one_model, roomy], DEFAULTS)
    decision = planner.place(M, tokens=100)  # nothing waits for qwen: no charge
    assert decision.server is not None and decision.server.id == "one"


def test_an_unmeasured_pair_is_estimated_from_its_server_and_its_model() -> None:
    small, big = "small:3b", "big:9b"
    fast = ServerView(
        id="fast", capacity=1, inflight=0, models=frozenset({small, big}),
        speeds={small: ModelSpeed(tokens_per_s=200), big: ModelSpeed(tokens_per_s=115)},
    )  # fmt: skip
    slow = ServerView(
        id="slow", capacity=1, inflight=0, models=frozenset({small, big}),
        speeds={small: ModelSpeed(tokens_per_s=40)},
    )  # fmt: skip
    book = Planner([fast, slow], DEFAULTS).book
    # The slow Mac runs the small model at a fifth of the fast one's speed (the median of
    # 200 and 40 is 120: a third of it); the big one is estimated at that share too.
    assert book.tokens_per_s("slow", big) == pytest.approx(115 * 40 / 120)
    assert book.tokens_per_s("slow", small) == 40
    # A server's own word stands until it is measured.
    told = ServerView(
        id="told", capacity=1, inflight=0, models=frozenset({big}),
        own_speeds={big: ModelSpeed(tokens_per_s=60, load_s=1.5)},
    )  # fmt: skip
    book = Planner([fast, told], DEFAULTS).book
    assert book.tokens_per_s("told", big) == 60 and book.load_s("told", big) == 1.5


def test_the_yardstick_plans_with_the_facts_it_is_told() -> None:
    yardstick = Informed(DEFAULTS, random.Random(1))
    # Measured: "a" looks fast; in truth "b" is.
    fleet = [server("a", tps=500, capacity=1), server("b", tps=10, capacity=1)]
    yardstick.facts = facts_from_json(
        {
            "a": {"models": {M: {"tokens_per_s": 10, "load_s": 1}}},
            "b": {"models": {M: {"tokens_per_s": 500, "load_s": 1}}},
        }
    )
    yardstick.on_fleet(fleet)
    decision = yardstick.choose(fleet, M, tokens=100)
    assert decision.server is not None and decision.server.id == "b"


def test_load_times_are_learnt_from_the_server_or_from_a_first_requests_extra_time() -> None:
    # Ollama says: a few milliseconds is a loaded model, seconds a cold one.
    assert cold_load_ms(ChatTimings(wall_ms=900, load_ms=12, eval_ms=800)) == 0.0
    assert cold_load_ms(ChatTimings(wall_ms=4900, load_ms=4000, eval_ms=800)) == 4000
    # A server that tells no load: seconds beyond its prompt and generation were a load...
    told = ChatTimings(wall_ms=5200, prompt_eval_ms=150, eval_ms=1000)
    assert cold_load_ms(told) == pytest.approx(4050)
    # ... a few milliseconds of overhead are not, nor is anything from a server that tells
    # nothing of its own times.
    assert cold_load_ms(ChatTimings(wall_ms=1180, prompt_eval_ms=150, eval_ms=1000)) == 0.0
    assert cold_load_ms(ChatTimings(wall_ms=9000)) == 0.0


def test_a_free_slot_is_not_taken_early_by_evicting_a_model_with_work_waiting() -> None:
    # mini holds one model at a time and runs qwen, which has work waiting: using its free
    # slot for a llama job now would put qwen out, only for qwen's jobs to load it back.
    q = "qwen2.5:7b"
    speed = ModelSpeed(tokens_per_s=50, load_s=2.0)
    mini = ServerView(
        id="mini", capacity=2, inflight=0, models=frozenset({M, q}), loaded=frozenset({q}),
        lru=(q,), max_loaded=1, speeds={M: speed, q: speed},
    )  # fmt: skip
    fast = server("fast", tps=200, capacity=1, inflight=1)
    planner = Planner([mini, fast], DEFAULTS)
    planner.backlog_by_model = {M: 200, q: 50}
    assert planner.place(M, tokens=100).wait
    # With nothing waiting for qwen, the free slot is worth its load.
    planner = Planner([mini, fast], DEFAULTS)
    planner.backlog_by_model = {M: 200}
    decision = planner.place(M, tokens=100)
    assert decision.server is not None and decision.server.id == "mini"
