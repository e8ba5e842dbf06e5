"""Throughput and added latency of the whole pipeline, beside the bare Celery floor, in one run.

    python bench/e2e.py [--messages 1000] [--single 100]

Prints one JSON object as its last line:
  messages_per_s      sustained rate claim → reply posted → completed, zero-latency servers
  celery_floor_per_s  bare two-hop Celery pipeline (server queue → control) on the same settings
  ratio_to_floor      messages_per_s / celery_floor_per_s
  added_ms_p50/p99    one message at a time: claim → reply posted, less the simulated generation
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.state.ledger import Ledger
from orchestrator.state.redis_codec import connect
from standins.embedded_redis import EmbeddedRedis
from standins.processes import ManagedProcess, ProcessGroup, python_command
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm, wait_quiet
from standins.waiting import wait_for

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
BENCH_DIR = Path(__file__).resolve().parent


def message(index: int, prefix: str) -> NewMessage:
    return NewMessage(
        id=f"{prefix}-{index}",
        text=f"bench message {index}",
        username="bench",
        color="080150227",
        context=["other: hello", "bench: hi"],
        botParams=BotParams(
            entity="the-eternal" if index % 2 else "the-critic", humanUsername="bench"
        ),
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def pipeline_rate(stack: LocalStack, count: int, already_finished: int) -> float:
    with stack.queue_client() as queue:
        for index in range(count):
            queue.post_comment(message(index, "rate"))
    wait_quiet(stack, expected=already_finished + count, timeout=600)
    jobs = Ledger(stack.redis, stack.keys).get_many([f"rate-{index}" for index in range(count)])
    first_claim = min(job.claimed_at for job in jobs)
    last_finish = max(job.finished_at or 0.0 for job in jobs)
    answered = sum(1 for job in jobs if job.outcome == "answered")
    if answered != count:
        reasons = Counter(f"{j.outcome}: {j.reason}" for j in jobs if j.outcome != "answered")
        raise RuntimeError(f"only {answered} of {count} answered: {reasons.most_common(5)}")
    return count / (last_finish - first_claim)


def added_latency_ms(stack: LocalStack, count: int, already_finished: int) -> list[float]:
    """One message at a time: from its claim to its reply's arrival on the queue."""
    added: list[float] = []
    ledger = Ledger(stack.redis, stack.keys)
    with stack.queue_client() as queue:
        for index in range(count):
            queue.post_comment(message(index, "single"))
            wait_quiet(stack, expected=already_finished + index + 1, timeout=60)
            job = ledger.get(f"single-{index}")
            assert job is not None
            replies = [
                c
                for c in queue.comments_after(int(job.claimed_at * 1000) - 1)
                if c.get("replyTo") == job.id
            ]
            reply_posted_s = int(replies[0]["timestamp"]) / 1000
            # Zero-latency servers: the simulated generation time is nil, nothing to subtract.
            added.append((reply_posted_s - job.claimed_at) * 1000)
    return added


def celery_floor(count: int) -> float:
    with EmbeddedRedis() as redis_server:
        env_base = {
            **{
                k: v
                for k, v in __import__("os").environ.items()
                if not k.startswith("OLLAMA_CLOUD_")
            },
            "OLLAMA_CLOUD_REDIS_URL": redis_server.url,
            "PYTHONPATH": str(BENCH_DIR),
        }
        group = ProcessGroup()
        logs = Path(redis_server.data_dir)
        try:
            for name, queue, concurrency in (
                ("floor-server", "floor-server", 4),
                ("floor-control", "floor-control", 8),
            ):
                argv = python_command(
                    "-m", "celery", "-A", "floor_app", "worker", "-Q", queue, "-n", f"{name}@%h",
                    "-c", str(concurrency), "--without-mingle", "--without-gossip", "-l", "info",
                )  # fmt: skip
                group.add(ManagedProcess(name, argv, env_base, logs / f"{name}.log"))
            import floor_app  # noqa: PLC0415 - beside this script, on sys.path when it runs

            floor_app.app.conf.broker_url = redis_server.url
            client = connect(redis_server.url)
            # Warm up: both workers consuming.
            floor_app.app.send_task("bench.hop_server", args=[-1], queue=floor_app.SERVER_QUEUE)
            wait_for(lambda: client.get(floor_app.DONE_KEY) == "1", 60, what="floor warm-up")
            client.set(floor_app.DONE_KEY, 0)
            started = time.monotonic()
            with floor_app.app.producer_or_acquire() as producer:
                for index in range(count):
                    floor_app.app.send_task(
                        "bench.hop_server",
                        args=[index],
                        queue=floor_app.SERVER_QUEUE,
                        producer=producer,
                    )
            wait_for(
                lambda: int(client.get(floor_app.DONE_KEY) or 0) >= count,
                300,
                interval=0.005,
                what="floor done",
            )
            elapsed = time.monotonic() - started
            client.close()
            return count / elapsed
        finally:
            group.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, default=1000, help="messages for the sustained rate"
    )
    parser.add_argument("--single", type=int, default=100, help="messages sent one at a time")
    args = parser.parse_args()
    stop_on_sigterm()

    servers = [
        SimServerSpec(
            name=f"zero-{index}", models=MODELS, loaded=MODELS, tokens_per_second=0, parallel=4
        )
        for index in range(3)
    ]
    with LocalStack(servers) as stack:
        added = added_latency_ms(stack, args.single, already_finished=0)
        rate = pipeline_rate(stack, args.messages, already_finished=args.single)
    floor = celery_floor(args.messages)
    print(
        json.dumps(
            {
                "messages": args.messages,
                "messages_per_s": round(rate, 1),
                "celery_floor_per_s": round(floor, 1),
                "ratio_to_floor": round(rate / floor, 3),
                "added_ms_p50": round(statistics.median(added), 1),
                "added_ms_p99": round(percentile(added, 0.99), 1),
                "single_messages": args.single,
            }
        )
    )


if __name__ == "__main__":
    main()
