"""Failover time: a server lost while it generates, until another server's reply is posted.

    python bench/failover.py [--trials 20] [--tps 60] [--keep-dir DIR]

Three simulated servers with the same model and a generation of about 1.7 s. Each trial posts one
message, waits until its generation runs on some server X, then takes X away:
  refused   X's simulator process is stopped (its connections refused, the running request cut);
            timed from the moment the process has exited, then X's simulator is started again
  vanished  X's worker is killed (SIGKILL), as a crashed or unplugged Mac; timed from the kill,
            then X's worker is started again
and measures until the reply is posted on the queue by another server, less that server's own
generation time (ledger: generated_at - started_at of the final attempt). Trials alternate
between the two kinds; before each, every server is online, healthy and out of its cooldown.

Prints one JSON object on stdout (each trial's line, and the progress, go to stderr):
refused_s_p50/max, vanished_s_p50/max, trials, the heartbeat and loss settings measured with (the
product defaults), and per kind the p50 of each stage (`stages_p50`): detect (loss → failure
recorded in the ledger), replace (→ dispatched again), start (→ the other worker began), post
(generation end → reply posted).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import statistics
import time
from typing import Any

from pydantic_settings import BaseSettings

from bench.common import ETERNAL, LLAMA, bench_parser, chat_message, kept_dir, percentile, sim_stats
from orchestrator.domain.job import Job
from orchestrator.settings import Settings
from orchestrator.state.ledger import Ledger
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm
from standins.waiting import wait_for
from workers.contract.job import JobState
from workers.settings import WorkerSettings

SERVERS = ("mac-a", "mac-b", "mac-c")
KINDS = ("refused", "vanished")


def fleet(tokens_per_second: float) -> list[SimServerSpec]:
    return [
        SimServerSpec(
            name=name,
            models=[LLAMA],
            loaded=[LLAMA],
            tokens_per_second=tokens_per_second,
            parallel=2,
        )
        for name in SERVERS
    ]


def sim_active(stack: LocalStack, server_id: str) -> int:
    """Requests the server is running now; -1 when it cannot tell."""
    stats = sim_stats(stack.sim_url(server_id), timeout=1.0)
    try:
        return int(stats["active"]) if stats else -1
    except (KeyError, TypeError, ValueError):
        return -1


def ready(stack: LocalStack) -> bool:
    """Every server usable at full capacity, nothing running anywhere."""
    servers = {server.id: server for server in stack.fleet()}
    if set(servers) != set(SERVERS):
        return False
    if any(
        not (server.online and server.healthy) or server.cooling or server.inflight
        for server in servers.values()
    ):
        return False
    return all(sim_active(stack, server_id) == 0 for server_id in SERVERS)


def running_on(stack: LocalStack, ledger: Ledger, job_id: str) -> str | None:
    """The server whose simulator is generating the job's reply now, once it is."""
    job = ledger.get(job_id)
    if job is None or job.state is not JobState.DISPATCHED or not job.server_id:
        return None
    return job.server_id if sim_active(stack, job.server_id) > 0 else None


def reply_posted_at(stack: LocalStack, job_id: str, after_ms: int) -> float | None:
    with stack.queue_client() as queue:
        for comment in queue.comments_after(after_ms):
            if comment.get("replyTo") == job_id and comment.get("message-type") == "AI":
                return int(comment["timestamp"]) / 1000
    return None


def finished_job(ledger: Ledger, job_id: str) -> Job | None:
    job = ledger.get(job_id)
    return job if job is not None and job.state.finished else None


def take_away(stack: LocalStack, kind: str, server_id: str) -> tuple[float, float]:
    """Take the server away; (when it began, when the server was gone)."""
    began = time.time()
    if kind == "refused":
        # SIGTERM: the simulator refuses new connections at once and cuts the running request
        # when uvicorn's graceful shutdown (1 s) ends, as it exits.
        stack.processes[f"sim-{server_id}"].stop()
    else:
        stack.processes[f"worker-{server_id}"].kill()
    return began, time.time()


def bring_back(stack: LocalStack, kind: str, server_id: str) -> None:
    if kind == "refused":
        stack.start_sim(server_id)
    else:
        stack.start_worker(server_id)


def trial(stack: LocalStack, ledger: Ledger, kind: str, index: int) -> dict[str, Any]:
    wait_for(lambda: ready(stack), 120, interval=0.1, what="every server ready")
    job_id = f"{kind}-{index}"
    posted_ms = int(time.time() * 1000)
    with stack.queue_client() as queue:
        queue.post_comment(
            chat_message(job_id, f"failover trial {index}: what would you keep?", ETERNAL)
        )
    server_id = wait_for(
        lambda: running_on(stack, ledger, job_id), 30, interval=0.01, what=f"{job_id} running"
    )
    last_beat = float(stack.redis.hget(stack.keys.server(server_id), "last_beat") or 0)
    began, gone = take_away(stack, kind, server_id)
    reply_at = wait_for(
        lambda: reply_posted_at(stack, job_id, posted_ms - 1000), 60, 0.05, f"{job_id} reply"
    )
    job = wait_for(lambda: finished_job(ledger, job_id), 30, what=f"{job_id} finished")
    bring_back(stack, kind, server_id)
    if job.server_id == server_id or job.outcome != "answered":
        raise RuntimeError(f"{job_id}: not answered elsewhere: {job.model_dump_json()}")
    generation = (job.generated_at or 0.0) - (job.started_at or 0.0)
    failure = job.attempts[-1]
    return {
        "kind": kind,
        "server": server_id,
        "to": job.server_id,
        "failover_s": reply_at - gone - generation,
        "since_signal_s": reply_at - began - generation,
        "beat_age_at_loss_s": gone - last_beat,
        "failure": f"{failure.error_kind}: {failure.error}",
        "stages": {
            "detect": failure.at - gone,
            "replace": (job.dispatched_at or 0.0) - failure.at,
            "start": (job.started_at or 0.0) - (job.dispatched_at or 0.0),
            "generate": generation,
            "post": reply_at - (job.generated_at or 0.0),
        },
    }


def summary(results: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    mine = [result for result in results if result["kind"] == kind]
    times = [result["failover_s"] for result in mine]
    stages = {
        stage: round(statistics.median(result["stages"][stage] for result in mine), 3)
        for stage in mine[0]["stages"]
    }
    return {
        f"{kind}_s_p50": round(statistics.median(times), 3),
        f"{kind}_s_p90": round(percentile(times, 0.9), 3),
        f"{kind}_s_max": round(max(times), 3),
        f"{kind}_trials": len(mine),
        f"{kind}_stages_p50": stages,
        f"{kind}_since_signal_s_p50": round(
            statistics.median(result["since_signal_s"] for result in mine), 3
        ),
        f"{kind}_failures": sorted({result["failure"].split(":")[0] for result in mine}),
    }


def rounded(result: dict[str, Any]) -> dict[str, Any]:
    return {
        key: round(value, 3) if isinstance(value, float) else value
        for key, value in result.items()
        if key != "stages"
    } | {"stages": {stage: round(value, 3) for stage, value in result["stages"].items()}}


def default(settings: type[BaseSettings], name: str) -> Any:
    return settings.model_fields[name].default


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--trials", type=int, default=20, help="trials of each kind")
    parser.add_argument(
        "--tps", type=float, default=60.0, help="simulated tokens/s (100 tokens a reply)"
    )
    parser.add_argument("--keep-dir", type=kept_dir, help="keep the stack's logs and data here")
    args = parser.parse_args()
    stop_on_sigterm()
    results: list[dict[str, Any]] = []
    trials = ProgressReport("trials", total=args.trials * len(KINDS), plain=False)
    with LocalStack(fleet(args.tps), work_dir=args.keep_dir) as stack, trials:
        ledger = stack.ledger
        for index in range(args.trials):
            for kind in KINDS:
                result = trial(stack, ledger, kind, index)
                results.append(result)
                trials.advance()
                # Each trial's line is its progress; stdout holds the figures alone.
                print(json.dumps(rounded(result)), file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "trials": args.trials,
        **{key: value for kind in KINDS for key, value in summary(results, kind).items()},
        # The stack's processes run with the product defaults (no OLLAMA_CLOUD_ override).
        "heartbeat_interval_s": default(WorkerSettings, "heartbeat_interval_s"),
        "heartbeat_ttl_s": default(WorkerSettings, "heartbeat_ttl_s"),
        "server_lost_after_s": default(Settings, "server_lost_after_s"),
        "sweep_interval_s": default(Settings, "sweep_interval_s"),
        "retry_backoff_s": default(Settings, "retry_backoff_s"),
        "generation_s": round(100 / args.tps, 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
