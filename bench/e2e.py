"""Throughput, CPU and added latency of the whole pipeline, beside two floors, in one run.

    python bench/e2e.py [--messages 1000] [--single 100]

The system runs with three zero-latency simulated servers (4 slots each). The floors are two-hop
Celery pipelines on the same Celery settings (bench/floor_app.py): the driver sends each message's
task to a server queue, whose worker sends one task to a control queue (8 threads, as control).
The HTTP floor adds exactly the HTTP exchanges the contract and Ollama require, against the same
stand-ins, for each of a message's two jobs as the system runs them: the driver claims each
message on the local queue (claim-next), then sends its reply's task and its score's task to
server queues; one worker per simulated server (threads: its slots) makes that job's chat
(requests built by the system's own builders); the reply's control hop posts the reply and
completes the message, the score's PATCHes its eqScore. It is the ceiling our design cannot
beat here.

CPU is user + system time from /proc/<pid>/stat (with any child processes), read before and
after each sustained-rate phase: for the system, the bridge, the server workers and control (not
Redis, the local queue, the simulators or beat); for the HTTP floor, its workers and the driver's
own claim-next/send loop (`time.process_time()`).

Prints one JSON object as its last line:
  messages_per_s        sustained rate claim → reply posted → completed, zero-latency servers
  celery_floor_per_s    bare two-hop Celery pipeline of no-op tasks (one server worker, 4 threads)
  ratio_to_floor        messages_per_s / celery_floor_per_s
  http_floor_per_s      the hops of both jobs with their HTTP exchanges: claim-next, two
                        chats, reply, complete, PATCH eqScore
  ratio_to_http_floor   messages_per_s / http_floor_per_s
  cpu_ms_per_message    CPU of our processes per message in the sustained phase (and by process)
  http_floor_cpu_ms_per_message   the same for the HTTP floor's processes (and by process)
  standins_cpu_ms_per_message, http_floor_standins_cpu_ms_per_message   for comparison, not
                        counted above: Redis, the local queue, the simulators (and beat)
  added_ms_p50/p99      one message at a time: claim → reply posted, less the simulated generation
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import os
import statistics
import time
from collections import Counter
from typing import Any

import redis
from celery import Celery

from bench import floor_app
from bench.common import (
    LLAMA,
    PROJECT_ROOT,
    QWEN,
    bench_message,
    bench_parser,
    percentile,
)
from orchestrator.domain.entities import Entity, EntityCatalog
from orchestrator.domain.messages import Message
from orchestrator.domain.prompts import build_chat_request, build_eq_request
from orchestrator.domain.replies import build_reply
from orchestrator.entity_folder import load_entities
from orchestrator.settings import Settings
from standins import SAMPLE_ENTITIES_DIR
from standins.embedded_redis import EmbeddedRedis
from standins.processes import ManagedProcess, ProcessGroup, python_command
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm, wait_quiet
from standins.waiting import wait_for
from workers.contract.celery_config import celery_config
from workers.contract.settings import CelerySettings

MODELS = [LLAMA, QWEN]
CONTROL_THREADS: int = Settings.model_fields["control_concurrency"].default
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DRIVER_ID = "floor-driver"
JOBS_PER_MESSAGE = 2  # a reply and a score, each its own two hops


def zero_latency_fleet() -> list[SimServerSpec]:
    return [
        SimServerSpec(
            name=f"zero-{index}", models=MODELS, loaded=MODELS, tokens_per_second=0, parallel=4
        )
        for index in range(3)
    ]


# CPU time --------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from its 3rd field on (the command's name may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process, of the children it waited for, and of its live
    descendants (a Celery worker on threads has none; counted should one appear)."""
    if pid is None:
        return 0.0
    total = 0.0
    for one in [pid, *descendants(pid)]:
        fields = _stat_fields(one)
        if fields:  # utime, stime, cutime, cstime
            total += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return total


class CpuMeter:
    """CPU seconds each named group of processes spent between `start` and `stop`."""

    def __init__(self, groups: dict[str, list[int | None]]) -> None:
        self.groups = groups
        self.before: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        return {name: sum(cpu_s(pid) for pid in pids) for name, pids in self.groups.items()}

    def start(self) -> None:
        self.before = self.read()

    def stop(self) -> dict[str, float]:
        after = self.read()
        return {name: after[name] - self.before[name] for name in self.groups}


def per_message_ms(cpu: dict[str, float], count: int) -> dict[str, float]:
    return {name: round(seconds * 1000 / count, 2) for name, seconds in cpu.items()}


def standin_pids(stack: LocalStack) -> dict[str, list[int | None]]:
    """The stand-ins' processes: shown beside our own, never counted with them."""
    redis_process = stack.redis_server.process
    return {
        "redis": [redis_process.pid if redis_process else None],
        "queue": [stack.processes["queue"].pid],
        "simulators": [stack.processes[f"sim-{spec.name}"].pid for spec in stack.specs],
    }


# The system ------------------------------------------------------------------------------------


def pipeline_rate(
    stack: LocalStack, count: int, already_finished: int
) -> tuple[float, dict[str, float], dict[str, float]]:
    """The sustained rate, and the CPU seconds over it of our processes and of the others.

    As for the floors, the messages are all on the site queue before the first is claimed:
    the bridge is stopped while they are posted, and started again; its own CPU counts from
    its first claim (not its start-up)."""
    stack.processes["bridge"].stop()
    with stack.queue_client() as queue:
        for index in range(count):
            queue.post_comment(bench_message("rate", index))
    ours = CpuMeter(
        {
            "server_workers": [stack.processes[f"worker-{s.name}"].pid for s in stack.specs],
            "control": [stack.processes["control"].pid],
        }
    )
    others = CpuMeter({**standin_pids(stack), "beat": [stack.processes["beat"].pid]})
    ours.start()
    others.start()
    bridge = stack.start_bridge(0)
    claimed_before = sum(stack.ledger.totals()) + stack.ledger.finished_count()
    wait_for(
        lambda: sum(stack.ledger.totals()) + stack.ledger.finished_count() > claimed_before,
        60,
        interval=0.001,
        what="the bridge's first claim",
    )
    bridge_meter = CpuMeter({"bridge": [bridge.pid]})
    bridge_meter.start()
    with ProgressReport("sustained rate: jobs finished") as progress:
        wait_quiet(stack, expected=already_finished + count, timeout=600, progress=progress)
    cpu = {**bridge_meter.stop(), **ours.stop()}
    other_cpu = others.stop()
    jobs = stack.ledger.get_many([f"rate-{index}" for index in range(count)])
    first_claim = min(job.claimed_at for job in jobs)
    last_finish = max(job.finished_at or 0.0 for job in jobs)
    answered = sum(1 for job in jobs if job.outcome == "answered")
    if answered != count:
        reasons = Counter(f"{j.outcome}: {j.reason}" for j in jobs if j.outcome != "answered")
        raise RuntimeError(f"only {answered} of {count} answered: {reasons.most_common(5)}")
    return count / (last_finish - first_claim), cpu, other_cpu


def added_latency_ms(stack: LocalStack, count: int, already_finished: int) -> list[float]:
    """One message at a time: from its claim to its reply's arrival on the queue."""
    added: list[float] = []
    ledger = stack.ledger
    with stack.queue_client() as queue, ProgressReport("one at a time", total=count) as progress:
        for index in range(count):
            progress.update(index)
            queue.post_comment(bench_message("single", index))
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
        progress.update(count)
    return added


# The floors ------------------------------------------------------------------------------------


def floor_worker(name: str, queue: str, threads: int) -> list[str]:
    return python_command(
        "-m", "celery", "-A", "bench.floor_app", "worker", "-Q", queue, "-n", f"{name}@%h",
        "-c", str(threads), "--without-mingle", "--without-gossip", "-l", "info",
    )  # fmt: skip


def with_project_root(env: dict[str, str]) -> dict[str, str]:
    """A child's environment with the project root on its path, so `bench.floor_app` imports."""
    paths = [str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def driver_app(redis_url: str) -> Celery:
    """The driver's own Celery client, on the workers' settings and this floor's Redis."""
    app = Celery("floor-driver", set_as_current=False)
    app.config_from_object(celery_config(CelerySettings(redis_url=redis_url)))
    return app


def done_count(client: redis.Redis) -> int:
    return int(client.get(floor_app.DONE_KEY) or 0)


def celery_floor(count: int) -> float:
    with EmbeddedRedis() as redis_server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_CLOUD_")}
        env = with_project_root({**env, "OLLAMA_CLOUD_REDIS_URL": redis_server.url})
        group = ProcessGroup()
        logs = Path(redis_server.data_dir)
        client = redis.Redis.from_url(redis_server.url)
        try:
            for name, queue, threads in (
                ("floor-server", floor_app.SERVER_QUEUE, 4),
                ("floor-control", floor_app.CONTROL_QUEUE, CONTROL_THREADS),
            ):
                argv = floor_worker(name, queue, threads)
                group.add(ManagedProcess(name, argv, env, logs / f"{name}.log"))
            with driver_app(redis_server.url) as app:
                # Warm up: both workers consuming.
                app.send_task("bench.hop_server", args=[-1], queue=floor_app.SERVER_QUEUE)
                wait_for(lambda: done_count(client) == 1, 60, what="floor warm-up")
                client.set(floor_app.DONE_KEY, 0)
                started = time.monotonic()
                with app.producer_or_acquire() as producer:
                    for index in range(count):
                        app.send_task(
                            "bench.hop_server",
                            args=[index],
                            queue=floor_app.SERVER_QUEUE,
                            producer=producer,
                        )
                with ProgressReport("celery floor", total=count) as progress:

                    def floor_done() -> bool:
                        done = done_count(client)
                        progress.update(min(done, count))
                        return done >= count

                    wait_for(floor_done, 300, interval=0.005, what="floor done")
                return count / (time.monotonic() - started)
        finally:
            client.close()
            group.stop_all()


class FloorStack(LocalStack):
    """The system's stack with the HTTP floor's workers in place of the system's processes:
    Redis, the local queue and the simulated servers start as they do for the system; each
    simulated server gets a floor worker (queue `floor-<name>`, threads: its slots) and the
    control queue one of control's threads. No beat, no bridge: the bench drives."""

    def __init__(self, servers: list[SimServerSpec]) -> None:
        super().__init__(servers, bridges=0)

    @property
    def server_queues(self) -> list[str]:
        return [f"floor-{spec.name}" for spec in self.specs]

    def start_worker(self, server_id: str, *, wait: bool = True) -> ManagedProcess:
        spec = next(spec for spec in self.specs if spec.name == server_id)
        name = f"floor-{server_id}"
        env = with_project_root(self.env(OLLAMA_URL=self.sim_url(server_id)))
        return self._start(name, floor_worker(name, name, spec.parallel), env)

    def start_control(self, name: str = "floor-control") -> ManagedProcess:
        argv = floor_worker(name, floor_app.CONTROL_QUEUE, CONTROL_THREADS)
        return self._start(name, argv, with_project_root(self.env()))

    def start_beat(self, name: str = "beat") -> ManagedProcess | None:
        return None

    def wait_online(self, server_ids: list[str], timeout: float = 60.0) -> None:
        """The floor's workers keep no fleet record: the warm-up waits for them instead."""


class FloorJobs:
    """What the driver sends for a claimed message: the reply's fields and the two Ollama
    request bodies, built by the system's own request builders."""

    def __init__(self, entities: EntityCatalog, scorer_id: str) -> None:
        self.entities = entities
        scorer = entities.get(scorer_id)
        assert scorer is not None
        self.scorer = scorer

    def job(self, raw: dict[str, Any]) -> dict[str, Any]:
        message = Message.model_validate(raw)
        params = message.bot_params
        entity: Entity | None = self.entities.get(str(params.entity if params else None))
        assert entity is not None
        chat = build_chat_request(entity, message, self.entities.global_settings)
        return {
            "id": message.id,
            "chat": chat.ollama_body(),
            "eq": build_eq_request(self.scorer, message).ollama_body(),
            "reply": build_reply(entity, message, "").wire(),
        }


def http_floor(count: int) -> tuple[float, dict[str, float], dict[str, float]]:
    """The HTTP floor's sustained rate, and the CPU seconds over it of its own processes and
    of the stand-ins."""
    jobs = FloorJobs(load_entities(SAMPLE_ENTITIES_DIR), Settings.model_fields["eq_entity"].default)
    with FloorStack(zero_latency_fleet()) as stack, stack.queue_client() as queue:
        queues = stack.server_queues
        with driver_app(stack.redis_url) as app:

            def run(prefix: str, messages: int, timeout_s: float) -> tuple[float, float]:
                """Post, then claim and send each; (seconds until all were done, driver CPU)."""
                for index in range(messages):
                    queue.post_comment(bench_message(prefix, index))
                stack.redis.set(floor_app.DONE_KEY, 0)
                started, cpu_before = time.monotonic(), time.process_time()
                with app.producer_or_acquire() as producer:
                    for index in range(messages):
                        claimed = queue.claim_next(DRIVER_ID)
                        if claimed.message is None:
                            raise RuntimeError(f"claim-next found nothing: {claimed.reason}")
                        job = jobs.job(claimed.message)
                        for offset, task in enumerate(("bench.http_reply", "bench.http_score")):
                            app.send_task(
                                task,
                                args=[job],
                                queue=queues[(2 * index + offset) % len(queues)],
                                producer=producer,
                            )
                driver_cpu = time.process_time() - cpu_before
                jobs_sent = JOBS_PER_MESSAGE * messages
                # Shown from here on: a bar drawn during the sends would count in driver_cpu.
                with ProgressReport(f"HTTP floor ({prefix}): jobs", total=jobs_sent) as progress:

                    def floor_done() -> bool:
                        done = done_count(stack.redis)
                        progress.update(min(done, jobs_sent))
                        return done >= jobs_sent

                    wait_for(
                        floor_done,
                        timeout_s,
                        interval=0.005,
                        what=f"{prefix}: {messages} messages through the HTTP floor",
                    )
                return time.monotonic() - started, driver_cpu

            # Warm up: every worker consuming, each thread's connections open.
            run("floor-warm", 2 * sum(spec.parallel for spec in stack.specs), 60)
            ours = CpuMeter(
                {
                    "server_workers": [stack.processes[name].pid for name in queues],
                    "control": [stack.processes["floor-control"].pid],
                }
            )
            others = CpuMeter(standin_pids(stack))
            ours.start()
            others.start()
            elapsed, driver_cpu = run("floor", count, 600)
            cpu, other_cpu = {"driver": driver_cpu, **ours.stop()}, others.stop()
        left = queue.pending()
        if left:
            raise RuntimeError(f"HTTP floor left {len(left)} messages pending on the queue")
    return count / elapsed, cpu, other_cpu


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--messages", type=int, default=1000, help="messages for the sustained rate"
    )
    parser.add_argument("--single", type=int, default=100, help="messages sent one at a time")
    args = parser.parse_args()
    stop_on_sigterm()

    with LocalStack(zero_latency_fleet()) as stack:
        added = added_latency_ms(stack, args.single, already_finished=0)
        rate, cpu, other_cpu = pipeline_rate(stack, args.messages, already_finished=args.single)
    floor = celery_floor(args.messages)
    http_rate, http_cpu, http_other_cpu = http_floor(args.messages)
    print(
        json.dumps(
            {
                "messages": args.messages,
                "messages_per_s": round(rate, 1),
                "celery_floor_per_s": round(floor, 1),
                "ratio_to_floor": round(rate / floor, 3),
                "http_floor_per_s": round(http_rate, 1),
                "ratio_to_http_floor": round(rate / http_rate, 3),
                "added_ms_p50": round(statistics.median(added), 1),
                "added_ms_p99": round(percentile(added, 0.99), 1),
                "cpu_ms_per_message": round(sum(cpu.values()) * 1000 / args.messages, 2),
                "http_floor_cpu_ms_per_message": round(
                    sum(http_cpu.values()) * 1000 / args.messages, 2
                ),
                "cpu_ms_per_message_by_process": per_message_ms(cpu, args.messages),
                "http_floor_cpu_ms_by_process": per_message_ms(http_cpu, args.messages),
                "standins_cpu_ms_per_message": per_message_ms(other_cpu, args.messages),
                "http_floor_standins_cpu_ms_per_message": per_message_ms(
                    http_other_cpu, args.messages
                ),
                "single_messages": args.single,
            }
        )
    )


if __name__ == "__main__":
    main()
