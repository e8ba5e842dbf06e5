"""Routing over a heterogeneous fleet: our router beside the old bot's ways, same burst, one run.

    python bench/fleet.py [--messages 500]    # --messages 30: a short burst
    python bench/fleet.py --servers 200     # the router and the bridge with 200 servers known

Runs one burst of messages through the whole system (real processes, simulated servers) once
per policy, with the same messages: our router (`soonest`, which learns the fleet as it goes);
the `yardstick`, a planner told every server's true speeds and load times that places each job
where it finishes soonest, never over a server's slots; `random` choice among online servers
that have the model (a full server queues the request, as Ollama does); and `least_inflight`,
blind to capacity and speed. Prints one JSON object as its last line:
  lower_bound_s   the largest, over every set of models, of that set's total work divided by
                  the total throughput of the servers that can run any model in it
  policies        per policy (ours, yardstick, random, least_inflight): makespan_s,
                  over_lower_bound, utilization (busy slot-seconds over capacity x time while
                  a backlog existed), wait_ms_p50 / wait_ms_p95 (claim to generation start),
                  cold_loads, refused_full (requests a full server turned away)
  ours_over_yardstick, cold_loads_over_yardstick, speedup_vs_random

    python bench/fleet.py --backend llamacpp [--messages 300]

The same on llama.cpp as the site's operator runs it: one Mac whose pool manager runs at most
24 model servers (one slot each) over 60 models, started cold on demand and evicted least
recently used, and their Ollama fallback (every model, eight slots, four models loaded at most,
slow loads); the messages' personas chosen with Zipf popularity, and each message scored, the
scorer's server on the pool having ten slots. Each policy also reports
evictions, busy_evictions (a server stopped in the middle of a reply) and wrong_model_replies.
Its lower bound is the larger of: every job at the speed of all the slots of both servers at
once; and the busiest model's jobs on its pool slot and the fallback's eight at once (loads
left out of both).
With --servers N, also: route_ms_p99 (reading the fleet and deciding, with N servers) and
bridge_rss_mb (the bridge's resident memory while it routes over N known servers).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.common import (
    CRITIC,
    ETERNAL,
    LLAMA,
    QWEN,
    bench_parser,
    chat_message,
    percentile,
    sim_stats,
)
from orchestrator.domain.job import Job
from orchestrator.domain.messages import NewMessage
from orchestrator.domain.prompts import EQ_MAX_TOKENS
from orchestrator.domain.routing import choose_server
from orchestrator.entity_folder import load_entities
from orchestrator.state.fleet import Fleet
from standins import SAMPLE_ENTITIES_DIR
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm, wait_quiet, worker_capacity
from workers.contract.keys import Keys
from workers.contract.server_record import ServerRecord
from workers.heartbeat import write_record

POLICIES = ("soonest", "yardstick", "random", "least_inflight")
# The operator's pool (operator.md, section 7): 24 model servers at most over 60 models, one
# slot each; cold starts of a few seconds; popularity skewed as on a chat site (Zipf).
POOL_MODELS = 60
POOL_MAX_SERVERS = 24
POOL_TOKENS_PER_S = 80.0
POOL_LOAD_S = 2.0
POOL_REPLY_TOKENS = 40
ZIPF_S = 1.0
FALLBACK_SLOTS = 8  # OLLAMA_NUM_PARALLEL=8, OLLAMA_MAX_LOADED_MODELS=4 (operator.md)
FALLBACK_MAX_LOADED = 4
FALLBACK_TOKENS_PER_S = 40.0
FALLBACK_LOAD_S = 8.0
SCORER_KEY = "eq-score-f16"  # ten slots in the pool (its default, as the operator's)
PHANTOM_TTL_S = 3600  # servers registered by hand live through the run


def heterogeneous_fleet() -> list[SimServerSpec]:
    """Six servers: capacities 1 to 4, speeds 8x apart, different models, one region apart."""
    both = [LLAMA, QWEN]
    return [
        SimServerSpec(name="studio-1", models=both, loaded=both, tokens_per_second=200,
                      parallel=4, load_seconds=3, max_queue=1000),
        SimServerSpec(name="studio-2", models=both, loaded=[LLAMA], tokens_per_second=120,
                      parallel=3, load_seconds=3, max_queue=1000),
        SimServerSpec(name="mini-1", models=both, loaded=[QWEN], tokens_per_second=60,
                      parallel=2, load_seconds=4, max_queue=1000, max_loaded_models=1),
        SimServerSpec(name="mini-2", models=[LLAMA], loaded=[LLAMA], tokens_per_second=50,
                      parallel=2, load_seconds=4, max_queue=1000),
        SimServerSpec(name="air", models=[LLAMA], tokens_per_second=25, parallel=1,
                      load_seconds=6, max_queue=1000, max_loaded_models=1),
        SimServerSpec(name="gpu-us", models=[QWEN], loaded=[QWEN], tokens_per_second=100,
                      parallel=4, load_seconds=3, max_queue=1000),
    ]  # fmt: skip


REGIONS = {"gpu-us": "us"}


def burst(count: int, seed: int = 11) -> list[NewMessage]:
    rng = random.Random(seed)
    return [
        chat_message(
            f"fleet-{index}", f"burst question {index}", ETERNAL if rng.random() < 0.6 else CRITIC
        )
        for index in range(count)
    ]


def lower_bound_s(messages: list[NewMessage], specs: list[SimServerSpec]) -> float:
    entities = load_entities(SAMPLE_ENTITIES_DIR)
    work: dict[str, float] = {}
    for message in messages:
        assert message.bot_params is not None
        entity = entities.get(str(message.bot_params.entity))
        assert entity is not None
        work[entity.model] = work.get(entity.model, 0.0) + entity.max_tokens
    bound = 0.0
    models = sorted(work)
    for size in range(1, len(models) + 1):
        for subset in itertools.combinations(models, size):
            throughput = sum(
                spec.parallel * spec.tokens_per_second
                for spec in specs
                if set(subset) & set(spec.models)
            )
            bound = max(bound, sum(work[model] for model in subset) / throughput)
    return bound


def utilization(jobs: list[Job], capacity: int) -> float:
    """Busy slot-seconds over capacity x time, from the first start until the backlog emptied
    (the last job started)."""
    window_start = min(job.started_at or 0.0 for job in jobs)
    window_end = max(job.started_at or 0.0 for job in jobs)
    busy = sum(
        max(
            0.0, min(job.generated_at or 0.0, window_end) - max(job.started_at or 0.0, window_start)
        )
        for job in jobs
    )
    return busy / (capacity * (window_end - window_start))


def true_facts(specs: list[SimServerSpec]) -> dict[str, Any]:
    """What the yardstick is told: every server's true speed and load time for each model."""
    return {
        spec.name: {
            "max_loaded": spec.max_servers if spec.kind == "pool" else spec.max_loaded_models,
            "models": {
                model: {"tokens_per_s": spec.tokens_per_second, "load_s": spec.load_seconds}
                for model in spec.models
            },
        }
        for spec in specs
    }


@dataclass
class Setup:
    """One fleet to route over: its servers, the entities whose messages it answers, and what
    the yardstick is told of it."""

    specs: list[SimServerSpec]
    entities_dir: Path = SAMPLE_ENTITIES_DIR
    facts: dict[str, Any] = field(default_factory=dict)
    worker_env: dict[str, dict[str, str]] = field(default_factory=dict)
    scored: bool = False  # each message's EQ score is a job too

    @property
    def slots(self) -> int:
        return sum(worker_capacity(spec) for spec in self.specs)


def ollama_setup() -> Setup:
    specs = heterogeneous_fleet()
    return Setup(
        specs,
        facts=true_facts(specs),
        worker_env={
            spec.name: {"OLLAMA_CLOUD_REGION": REGIONS.get(spec.name, "eu")} for spec in specs
        },
    )


def run_policy(
    policy: str, messages: list[NewMessage], setup: Setup, phantoms: int = 0
) -> dict[str, Any]:
    env = {
        "OLLAMA_CLOUD_ROUTING_POLICY": policy,
        "OLLAMA_CLOUD_EQ_ENABLED": str(setup.scored).lower(),
    }
    with tempfile.TemporaryDirectory(prefix="fleet-facts-") as facts_dir:
        if policy == "yardstick":
            facts_file = Path(facts_dir) / "facts.json"
            facts_file.write_text(json.dumps(setup.facts))
            env["OLLAMA_CLOUD_ROUTING_FACTS_FILE"] = str(facts_file)
        if policy not in ("soonest", "yardstick"):
            # These overfill servers on purpose, so tasks wait in a server's queue for minutes:
            # not a lost task to be sent again, as it would be under our router. And a pool
            # they overfill evicts servers in the middle of replies: to measure how long they
            # take, not how many messages they lose, they may try more often.
            env["OLLAMA_CLOUD_START_LOST_AFTER_S"] = "3600"
            env["OLLAMA_CLOUD_MAX_ATTEMPTS"] = "20"
        with LocalStack(
            setup.specs,
            entities_dir=setup.entities_dir,
            extra_env=env,
            worker_env=setup.worker_env,
        ) as stack:
            register_phantoms(stack, phantoms)
            with stack.queue_client() as queue:
                for message in messages:
                    queue.post_comment(message)
            with ProgressReport(f"{policy}: jobs finished") as progress:
                wait_quiet(stack, expected=len(messages), timeout=1800, progress=progress)
            jobs = stack.ledger.get_many([str(m.id) for m in messages])
            stats = [sim_stats(stack.sim_url(spec.name)) for spec in stack.specs]
            rss_mb = bridge_rss_mb(stack)
    if None in stats:
        raise RuntimeError(f"{policy}: a simulated server did not give its stats")
    answered = [job for job in jobs if job.outcome == "answered"]
    if len(answered) != len(messages):
        raise RuntimeError(f"{policy}: {len(answered)} of {len(messages)} answered")
    waits = [((job.started_at or 0.0) - job.claimed_at) * 1000 for job in answered]
    result = {
        "makespan_s": round(
            max(job.finished_at or 0.0 for job in answered) - min(j.claimed_at for j in answered),
            2,
        ),
        "utilization": round(utilization(answered, setup.slots), 3),
        "wait_ms_p50": round(statistics.median(waits)),
        "wait_ms_p95": round(percentile(waits, 0.95)),
        # A pool's cold start is its model's load.
        "cold_loads": sum(
            int(entry.get("cold_loads", entry.get("cold_starts", 0))) for entry in stats
        ),
        "refused_full": sum(int(entry.get("refused_full", 0)) for entry in stats),
        "attempts_failed": sum(len(job.failures) for job in answered),
        "per_server": dict(sorted(Counter(job.server_id or "-" for job in answered).items())),
        "bridge_rss_mb": rss_mb,
    }
    if any(spec.kind == "pool" for spec in setup.specs):
        result["evictions"] = sum(int(entry.get("evictions", 0)) for entry in stats)
        result["busy_evictions"] = sum(int(entry.get("busy_evictions", 0)) for entry in stats)
        result["wrong_model_replies"] = sum(int(entry.get("mismatched", 0)) for entry in stats)
    return result


def pool_entity(index: int) -> str:
    return f"persona-{index:02d}"


def pool_setup(entities_dir: Path) -> Setup:
    """The operator's llama.cpp host: a pool manager over 60 models, entities named as their
    llama.cpp files name them (`baseModel` and `defaultQuantization`); and their Ollama
    fallback, with every model installed, eight slots, four models loaded at most and slow
    loads of f16 models."""
    keys = []
    for index in range(POOL_MODELS):
        name = pool_entity(index)
        fields = {
            "id": name,
            "username": name,
            "baseModel": name,
            "defaultQuantization": "f16",
            "systemPrompt": "Be brief.",
            "max_tokens": POOL_REPLY_TOKENS,
        }
        (entities_dir / f"{name}.json").write_text(json.dumps(fields))
        keys.append(f"{name}-f16")
    # The scorer, on the pool with its ten slots, as the operator runs it.
    scorer = json.loads((SAMPLE_ENTITIES_DIR / "eq-score.json").read_text())
    del scorer["model"]
    scorer.update(baseModel="eq-score", defaultQuantization="f16")
    (entities_dir / "eq-score.json").write_text(json.dumps(scorer))
    keys.append(SCORER_KEY)
    pool = SimServerSpec(
        name="studio-pool",
        kind="pool",
        models=keys,
        max_servers=POOL_MAX_SERVERS,
        tokens_per_second=POOL_TOKENS_PER_S,
        load_seconds=POOL_LOAD_S,
    )
    fallback = SimServerSpec(
        name="ollama-fallback", models=keys, parallel=FALLBACK_SLOTS,
        tokens_per_second=FALLBACK_TOKENS_PER_S, load_seconds=FALLBACK_LOAD_S,
        max_loaded_models=FALLBACK_MAX_LOADED, max_queue=1000,
    )  # fmt: skip
    facts = true_facts([pool, fallback])
    return Setup([pool, fallback], entities_dir=entities_dir, facts=facts, scored=True)


def pool_burst(count: int, seed: int = 11) -> list[NewMessage]:
    """Messages for the 60 personas, the n-th most popular chosen in proportion to 1/n."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(POOL_MODELS)]
    chosen = rng.choices(range(POOL_MODELS), weights=weights, k=count)
    return [
        chat_message(f"pool-{index}", f"burst question {index}", pool_entity(persona))
        for index, persona in enumerate(chosen)
    ]


def pool_lower_bound_s(messages: list[NewMessage]) -> float:
    """No schedule beats either of: every job at the speed of every slot of both servers at
    once, loads left out; or the busiest model's jobs on its one pool slot and all eight of
    the fallback's slots at once."""
    jobs = Counter(str(message.bot_params.entity) for message in messages if message.bot_params)
    tokens = POOL_REPLY_TOKENS
    pool_tps = POOL_MAX_SERVERS * POOL_TOKENS_PER_S
    fallback_tps = FALLBACK_SLOTS * FALLBACK_TOKENS_PER_S
    work = sum(jobs.values()) * tokens + len(messages) * EQ_MAX_TOKENS  # a score each
    everything = work / (pool_tps + fallback_tps)
    busiest = max(jobs.values()) * tokens / (POOL_TOKENS_PER_S + fallback_tps)
    return max(everything, busiest)


def cold_loads(stats: dict[str, Any]) -> int:
    """A simulated server's cold loads; a pool's cold starts are its models' loads."""
    return int(stats.get("cold_loads", stats.get("cold_starts", 0)))


def register_phantoms(stack: LocalStack, count: int) -> None:
    """Known servers with a model no entity uses: the router reads and weighs every one of
    them, and no job goes there. Their records are kept alive like a heartbeat's."""
    for index in range(count):
        record = ServerRecord(
            id=f"phantom-{index:03d}",
            capacity=2,
            models=["phantom:1b"],
            region="eu",
            last_beat=time.time(),
        )
        write_record(stack.redis, stack.keys, record, ttl_s=PHANTOM_TTL_S)


def bridge_rss_mb(stack: LocalStack) -> float:
    pid = stack.processes["bridge"].pid
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def route_ms_p99(servers: int, decisions: int = 2000) -> dict[str, float]:
    """With `servers` servers registered: the bridge's routing work per message (in-flight
    counts read again, then the decision), and the full read of every record that it does a
    few times a second."""
    from standins.embedded_redis import EmbeddedRedis  # noqa: PLC0415

    with EmbeddedRedis() as redis_server:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        keys = Keys()
        rng = random.Random(3)
        for index in range(servers):
            record = ServerRecord(
                id=f"server-{index:03d}",
                capacity=rng.randint(1, 4),
                models=[LLAMA, QWEN] if index % 3 else [QWEN],
                loaded=[LLAMA] if index % 2 else [],
                region="eu" if index % 5 else "us",
                last_beat=time.time(),
            )
            write_record(client, keys, record, ttl_s=PHANTOM_TTL_S)
            # A measured speed, as control keeps it.
            client.hset(keys.latency(record.id), f"{LLAMA}:tps", rng.uniform(20, 160))
        fleet = Fleet(client, keys)
        route_ms, read_ms = [], []
        records = fleet.read()
        for _ in range(decisions):
            started = time.perf_counter()
            choose_server(fleet.refresh_inflight(records), LLAMA, tokens=100, region="eu", rng=rng)
            route_ms.append((time.perf_counter() - started) * 1000)
        for _ in range(decisions // 10):
            started = time.perf_counter()
            records = fleet.read()
            read_ms.append((time.perf_counter() - started) * 1000)
        client.close()
    return {
        "route_ms_p99": round(percentile(route_ms, 0.99), 3),
        "fleet_read_ms_p99": round(percentile(read_ms, 0.99), 3),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--servers", type=int, default=0, help="also measure with N servers")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--backend",
        choices=("ollama", "llamacpp"),
        default="ollama",
        help="llamacpp: the operator's pool manager, 24 servers at most over 60 models",
    )
    args = parser.parse_args()
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="fleet-entities-") as entities_dir:
        if args.backend == "llamacpp":
            setup = pool_setup(Path(entities_dir))
            messages = pool_burst(args.messages)
            bound = pool_lower_bound_s(messages)
        else:
            setup = ollama_setup()
            messages = burst(args.messages)
            bound = lower_bound_s(messages, setup.specs)
        run_all(args, setup, messages, bound)


def run_all(args: Any, setup: Setup, messages: list[NewMessage], bound: float) -> None:
    report: dict[str, Any] = {
        "backend": args.backend,
        "messages": len(messages),
        "lower_bound_s": round(bound, 2),
        "policies": {},
    }
    phantoms = max(0, args.servers - len(setup.specs))
    for policy in args.policies.split(","):
        result = run_policy(policy, messages, setup, phantoms)
        name = "ours" if policy == "soonest" else policy
        report["policies"][name] = result
        print(name, json.dumps(result), file=sys.stderr, flush=True)
    if args.servers:
        report.update(route_ms_p99(args.servers))
        report["bridge_rss_mb"] = report["policies"].get("ours", {}).get("bridge_rss_mb")
    add_ratios(report)
    print(json.dumps(report))


def add_ratios(report: dict[str, Any]) -> None:
    """Each policy's makespan over the lower bound, and ours over the yardstick's and over
    random's."""
    policies = report["policies"]
    for result in policies.values():
        result["over_lower_bound"] = round(result["makespan_s"] / report["lower_bound_s"], 3)
    ours = policies.get("ours")
    if not ours:
        return
    report["makespan_over_lower_bound"] = ours["over_lower_bound"]
    if "yardstick" in policies:
        report["ours_over_yardstick"] = round(
            ours["makespan_s"] / policies["yardstick"]["makespan_s"], 3
        )
        report["cold_loads_over_yardstick"] = (
            ours["cold_loads"] - policies["yardstick"]["cold_loads"]
        )
    if "random" in policies:
        random_s = policies["random"]["makespan_s"]
        report["speedup_vs_random"] = round(random_s / ours["makespan_s"], 2)


if __name__ == "__main__":
    main()
