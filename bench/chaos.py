"""Chaos: messages through a demo-like fleet while its parts are killed and restarted.

    python bench/chaos.py [--messages 2000] [--seed 7] [--rate 0] [--stall-timeout 120]
                          [--max-wait 3600] [--keep-dir DIR]

Four fast simulated servers, two models (the-eternal on llama3.2:3b, the-critic on qwen2.5:7b),
one bridge, the control worker and beat. While the messages go through, a chaos thread follows
a schedule drawn from `--seed`: after a random pause it SIGKILLs a random server's worker, stops
a random simulator (its connections refused), SIGKILLs the bridge or the control worker, or,
once, restarts Redis (AOF, graceful); what it took away comes back after a random while. One
thing is away at a time. A process of the stack that exits by itself is a crash: counted,
logged and started again.

Then it waits until every message has finished in the ledger, saying how far it has come every
10 s on stderr (posted, replies, finished, unclaimed, events, crashes). It waits as long as work
moves: it gives up only after `--stall-timeout` seconds in which no message was posted, replied
to or finished, or `--max-wait` seconds after the last post. Then it counts on the queue itself.
Prints one JSON object as the last line of stdout:
  messages, replies             human messages posted; AI replies to them on the queue
  lost                          work that ended without its answer: a message completed on the
                                queue, or its job finished in the ledger, that was not completed
                                on the queue or has neither a reply nor a finished ledger job
                                with a reason (or skipped)
  unfinished                    work still open when it gave up, not counted as lost:
                                unclaimed (pending on the queue) + in_flight (claimed, not
                                finished); unfinished_jobs: by ledger state, with examples
  gave_up                       null when everything finished, else "stalled" or "max_wait"
  duplicate_replies             AI replies beyond the first to the same message
  double_eq                     messages whose EQ score was PATCHed more than once (queue log);
                                eq_excess: globalScore gained beyond the sum of eqScores
  over_capacity                 requests the simulators refused beyond their slots
  dead_letters, unexplained_dead_letters (dead jobs without a reason), crashes
  job_s_p50, job_s_max          claim to finish; slow_jobs: those over 60 s, with their history
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
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
    kept_dir,
    percentile,
    sim_stats,
)
from orchestrator.domain.job import Job, Outcome, score_job_id
from orchestrator.domain.messages import NewMessage
from orchestrator.errors import QueueError
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.ledger import Ledger
from standins.processes import ManagedProcess
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm
from standins.waiting import wait_for

KINDS = ("kill_worker", "stop_sim", "kill_bridge", "kill_control", "restart_redis")
PATCH_LINE = re.compile(r"message=(\S+) eqScore ")
SLOW_JOB_S = 60.0  # a job this long from claim to finish is reported by id


def chaos_fleet(tokens_per_second: float = 1000.0) -> list[SimServerSpec]:
    """The demo's shape, faster: each model on three servers, so one away leaves two."""
    both = [LLAMA, QWEN]
    return [
        SimServerSpec(name="studio", models=both, loaded=both,
                      tokens_per_second=tokens_per_second, parallel=4),
        SimServerSpec(name="mini", models=both, loaded=[QWEN],
                      tokens_per_second=tokens_per_second, load_seconds=0.5, parallel=2),
        SimServerSpec(name="air", models=[LLAMA], loaded=[LLAMA],
                      tokens_per_second=tokens_per_second, parallel=2),
        SimServerSpec(name="gpu", models=[QWEN], loaded=[QWEN],
                      tokens_per_second=tokens_per_second, parallel=2),
    ]  # fmt: skip


def chaos_messages(count: int, seed: int) -> list[NewMessage]:
    rng = random.Random(seed)
    return [
        chat_message(
            f"chaos-{seed}-{index}",
            f"chaos question {index}: what would you change {rng.randint(1, 10**6)}?",
            ETERNAL if rng.random() < 0.5 else CRITIC,
            username="ada",
            color="080150227",
            context=["bo: hello", "ada: hi bo"],
            human_username="ada",
        )
        for index in range(count)
    ]


# The schedule ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosEvent:
    kind: str  # one of KINDS
    target: str  # a server id (kill_worker, stop_sim), else the process or "redis"
    pause_s: float  # wait before taking it away
    down_s: float  # how long it stays away (Redis: restarted at once)

    def describe(self) -> str:
        return f"{self.kind} {self.target} (away {self.down_s:.1f}s)"


def draw_event(
    rng: random.Random, kind: str, servers: list[str], pause: tuple[float, float]
) -> ChaosEvent:
    target = {"kill_bridge": "bridge", "kill_control": "control", "restart_redis": "redis"}.get(
        kind
    ) or rng.choice(servers)
    return ChaosEvent(kind, target, rng.uniform(*pause), rng.uniform(0.5, 3.0))


def random_schedule(
    seed: int, servers: list[str], count: int = 1000, pause: tuple[float, float] = (1.0, 4.0)
) -> list[ChaosEvent]:
    """Random events, Redis restarted once among the first few."""
    rng = random.Random(seed)
    redis_at = rng.randint(2, 5)
    others = [kind for kind in KINDS if kind != "restart_redis"]
    return [
        draw_event(
            rng, "restart_redis" if index == redis_at else rng.choice(others), servers, pause
        )
        for index in range(count)
    ]


def one_of_each(
    seed: int, servers: list[str], pause: tuple[float, float] = (0.5, 1.5)
) -> list[ChaosEvent]:
    """Every kind of event once, in a seeded order."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    return [draw_event(rng, kind, servers, pause) for kind in kinds]


# The chaos thread ------------------------------------------------------------------------------


@dataclass
class ChaosRecord:
    events: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    # refused_full of each simulator, read before each stop (a restart resets its stats).
    refused_before_stops: Counter[str] = field(default_factory=Counter)


class Chaos:
    """Follows a schedule against a running stack, one event at a time; restarts any process
    that exits by itself (a crash) and records it."""

    def __init__(
        self, stack: LocalStack, schedule: list[ChaosEvent], say: Callable[[str], None]
    ) -> None:
        self.stack = stack
        self.schedule = schedule
        self.say = say
        self.record = ChaosRecord()
        self.stopping = threading.Event()
        self.done = threading.Event()  # the schedule ended or chaos was stopped
        self._lock = threading.Lock()  # one hand on the processes at a time
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._run, name="chaos", daemon=True),
            threading.Thread(target=self._watch, name="chaos-watch", daemon=True),
        ]

    def start(self) -> None:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop after the event under way (what it took away comes back first)."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.check_crashes()

    def _run(self) -> None:
        try:
            for event in self.schedule:
                if self.stopping.wait(event.pause_s):
                    break
                self.act(event)
        finally:
            self.done.set()

    def _watch(self) -> None:
        while not self.stopping.wait(0.25):
            self.check_crashes()

    def act(self, event: ChaosEvent) -> None:
        at = time.monotonic() - self._started
        self.say(f"chaos +{at:.1f}s: {event.describe()}")
        self.record.events[event.kind] += 1
        if event.kind == "restart_redis":
            with self._lock:
                self.stack.redis_server.restart()
            return
        name = {"kill_worker": f"worker-{event.target}", "stop_sim": f"sim-{event.target}"}.get(
            event.kind, event.target
        )
        with self._lock:
            process = self.stack.processes[name]
            if event.kind == "stop_sim":
                self.record.refused_before_stops[event.target] += refused_full(
                    self.stack, event.target
                )
                process.stop()
            else:
                process.kill()
        time.sleep(event.down_s)
        with self._lock:
            process.start()

    def check_crashes(self) -> None:
        with self._lock:
            for process in self.stack.processes.crashed():
                code = process.process.returncode if process.process else None
                self.record.crashes.append(f"{process.name} exited {code}: {why(process)}")
                self.say(f"CRASH {process.name} exited {code}: started again")
                process.start()


def why(process: ManagedProcess) -> str:
    """The line of its log that says why a process exited: Celery's `Unrecoverable error`, a
    Python traceback's last line, or else the last line."""
    lines = [line for line in process.log_tail(80).splitlines() if line.strip()]
    for marker in ("Unrecoverable error", "Error:", "Exception"):
        found = [line for line in lines if marker in line]
        if found:
            return found[-1].strip()[-300:]
    return lines[-1].strip()[-300:] if lines else ""


def refused_full(stack: LocalStack, server_id: str) -> int:
    stats = sim_stats(stack.sim_url(server_id))
    try:
        return int(stats["refused_full"]) if stats else 0
    except (KeyError, TypeError, ValueError):
        return 0


# Posting and waiting ---------------------------------------------------------------------------


class Poster(threading.Thread):
    """Posts the messages, at `rate` a second (0: as fast as the queue takes them)."""

    def __init__(self, stack: LocalStack, messages: list[NewMessage], rate: float) -> None:
        super().__init__(name="poster", daemon=True)
        self.stack = stack
        self.messages = messages
        self.rate = rate
        self.posted = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        with self.stack.queue_client() as queue:
            for index, message in enumerate(self.messages):
                if self.rate > 0:
                    due = began + index / self.rate
                    if self.stopping.wait(max(0.0, due - time.monotonic())):
                        return
                elif self.stopping.is_set():
                    return
                queue.post_comment(message)
                self.posted += 1


def unfinished(stack: LocalStack, job_ids: list[str]) -> list[str] | None:
    """The jobs not finished yet; None when Redis cannot tell right now."""
    try:
        states = stack.ledger.states(job_ids)
    except redis.RedisError:
        return None
    return [
        job_id
        for job_id, state in zip(job_ids, states, strict=True)
        if state is None or not state.finished
    ]


@dataclass(frozen=True)
class Snapshot:
    """How far the run has come; None where the queue or Redis could not tell just then."""

    posted: int
    replies: int | None  # AI messages on the queue (the stack's queue holds only this run's)
    unclaimed: int | None  # messages still pending on the queue
    finished: int | None  # jobs finished in the ledger
    active: int | None  # jobs in the ledger not finished


def take_snapshot(stack: LocalStack, queue: SiteQueueClient, posted: int) -> Snapshot:
    replies = unclaimed = finished = active = None
    try:
        stats = queue.stats()
        replies = max(0, int(stats["recentMessages"]) - posted)
        unclaimed = int(stats["pendingQueue"])
    except (QueueError, KeyError, TypeError, ValueError):
        pass
    try:
        finished = stack.ledger.finished_count()
        active = stack.ledger.totals()[0]
    except redis.RedisError:
        pass
    return Snapshot(posted, replies, unclaimed, finished, active)


class Progress:
    """Notes when the run last moved: a message posted, a reply on the queue, a job finished."""

    def __init__(self) -> None:
        self.best: dict[str, int] = {}
        self.moved_at = time.monotonic()

    def note(self, snapshot: Snapshot) -> None:
        for name in ("posted", "replies", "finished"):
            value = getattr(snapshot, name)
            if value is not None and value > self.best.get(name, -1):
                self.best[name] = value
                self.moved_at = time.monotonic()

    def still_for(self) -> float:
        return time.monotonic() - self.moved_at


def wait_finished(
    stack: LocalStack,
    job_ids: list[str],
    poster: Poster,
    chaos: Chaos,
    *,
    whole_schedule: bool,
    stall_timeout_s: float,
    max_wait_s: float,
    say: Callable[[str], None],
    report_every_s: float = 10.0,
    poll_s: float = 0.5,
) -> str | None:
    """Wait until every message is posted and finished (and, with `whole_schedule`, the chaos
    schedule has run to its end), saying how far it has come every `report_every_s`. Chaos stops
    once the messages are done.

    Returns None when everything finished, else why it gave up: "stalled" when nothing moved
    (no message posted, no reply, no job finished) for `stall_timeout_s`, "max_wait" when work
    still moved `max_wait_s` after the last post."""
    began = time.monotonic()
    progress = Progress()
    said_at = began
    last_post_at: float | None = None

    def outcome() -> str | None:
        """ "finished", "stalled" or "max_wait" once the wait is over; None while it goes on."""
        nonlocal said_at, last_post_at
        snapshot = take_snapshot(stack, queue, poster.posted)
        progress.note(snapshot)
        bar.update(
            progress.best.get("finished", 0),
            note=f"posted {snapshot.posted}/{len(poster.messages)}, "
            f"events {sum(chaos.record.events.values())}, crashes {len(chaos.record.crashes)}",
        )
        now = time.monotonic()
        if now - said_at >= report_every_s:
            said_at = now
            say(progress_line(now - began, len(job_ids), snapshot, chaos.record))
        if poster.is_alive():
            return None
        last_post_at = last_post_at or now
        all_finished = (
            snapshot.finished is not None
            and snapshot.finished >= len(job_ids)
            and unfinished(stack, job_ids) == []
        )
        if all_finished:
            if chaos.done.is_set() or not whole_schedule:
                return "finished"
            progress.moved_at = now  # waiting for the schedule alone: no stall
        if progress.still_for() > stall_timeout_s:
            return "stalled"
        if now - last_post_at > max_wait_s:
            return "max_wait"
        return None

    # A bar on a terminal; elsewhere the lines `say` writes are the progress.
    bar = ProgressReport("jobs finished", total=len(job_ids), plain=False)
    with stack.queue_client() as queue, bar:
        # No deadline of its own: `outcome` ends the wait (a stall, or max_wait after posting).
        ended = wait_for(outcome, math.inf, interval=poll_s, what="the messages to finish")
    return None if ended == "finished" else ended


def progress_line(elapsed_s: float, messages: int, snapshot: Snapshot, record: ChaosRecord) -> str:
    def shown(value: int | None) -> str:
        return "?" if value is None else str(value)

    return (
        f"+{elapsed_s:.0f}s posted {snapshot.posted}/{messages}, replies {shown(snapshot.replies)}"
        f", finished {shown(snapshot.finished)}, unclaimed {shown(snapshot.unclaimed)}"
        f", active {shown(snapshot.active)}"
        f", events {sum(record.events.values())}, crashes {len(record.crashes)}"
    )


# Counting --------------------------------------------------------------------------------------


def eq_patches(stack: LocalStack) -> Counter[str]:
    """PATCHes of each message's EQ score, from the local queue's log (one line each)."""
    log_path = stack.work_dir / "logs" / "queue.log"
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return Counter()
    return Counter(PATCH_LINE.findall(text))


def fate(human: dict[str, Any] | None, replies: int, job: Job | None) -> str:
    """What became of one posted message: "answered" (a reply, or a recorded reason for none),
    "lost", or, while work on it may still go on, "unclaimed" or "in_flight"; "unposted" if it
    never reached the queue.

    Work that ended (completed on the queue, or finished in the ledger) is lost unless it was
    completed on the queue and has a reply or a finished ledger job with a reason (or skipped)."""
    if human is None:
        return "unposted"
    status = (human.get("botParams") or {}).get("status")
    completed = status == "complete"
    finished = job is not None and job.state.finished
    if not completed and not finished:
        return "unclaimed" if status == "pending" and job is None else "in_flight"
    if completed and not finished and job is not None and not replies:
        return "in_flight"  # completed on the queue, its job not yet finished
    explained = job is not None and finished and bool(job.reason or job.outcome == "skipped")
    if not completed or not (replies or explained):
        return "lost"
    return "answered"


def count_outcomes(
    stack: LocalStack, sent: list[NewMessage], global_before: float, record: ChaosRecord
) -> dict[str, Any]:
    ids = [str(message.id) for message in sent]
    posted = set(ids)
    # The ledger first, then the queue: a job finishes after its reply and completion, so work
    # still under way between the two reads is never taken for lost.
    ledger = stack.ledger
    jobs = {job.id: job for job in ledger.get_many(ids)}
    with stack.queue_client() as queue:
        global_after = float(queue.stats().get("globalScore", 0))
        comments = queue.comments_after(0)
    humans = {str(c["id"]): c for c in comments if str(c.get("id")) in posted}
    replies = Counter(
        str(c.get("replyTo"))
        for c in comments
        if c.get("message-type") == "AI" and str(c.get("replyTo")) in posted
    )
    fates = {job_id: fate(humans.get(job_id), replies[job_id], jobs.get(job_id)) for job_id in ids}
    by_fate = Counter(fates.values())
    lost = [job_id for job_id in ids if fates[job_id] == "lost"]
    patches = eq_patches(stack)
    eq_sum = sum(float(human.get("eqScore") or 0) for human in humans.values())
    dead_ids = [job_id for job_id in ledger.dead_job_ids(limit=100_000) if job_id in posted]
    dead = ledger.get_many(dead_ids)
    took = [
        (job.finished_at or 0.0) - job.claimed_at for job in jobs.values() if job.state.finished
    ]
    over_capacity = record.refused_before_stops.copy()
    for spec in stack.specs:
        over_capacity[spec.name] += refused_full(stack, spec.name)
    report: dict[str, Any] = {
        "messages": len(sent),
        "replies": sum(replies.values()),
        "lost": len(lost),
        "unclaimed": by_fate["unclaimed"],
        "in_flight": by_fate["in_flight"],
        "unposted": by_fate["unposted"],
        "duplicate_replies": sum(count - 1 for count in replies.values() if count > 1),
        "double_eq": sum(1 for job_id in ids if patches[job_id] > 1),
        "eq_excess": round(global_after - global_before - eq_sum, 3),
        "over_capacity": sum(over_capacity.values()),
        "dead_letters": len(dead_ids),
        "unexplained_dead_letters": sum(1 for job in dead if not (job.reason or "").strip()),
        "crashes": len(record.crashes),
        "outcomes": dict(Counter(job.outcome or job.state.value for job in jobs.values())),
        # Claim to finish: a job that waited for a deadline or a timer shows here.
        "job_s_p50": round(percentile(took, 0.5), 2) if took else None,
        "job_s_max": round(max(took), 2) if took else None,
        "slow_jobs": [
            f"{job.id}: {(job.finished_at or 0.0) - job.claimed_at:.0f}s {job.history()[:200]}"
            for job in jobs.values()
            if job.state.finished and (job.finished_at or 0.0) - job.claimed_at > SLOW_JOB_S
        ][:10],
        "lost_examples": lost[:10],
        "dead_reasons": dict(
            Counter(short_reason(job.reason or "") for job in dead).most_common(10)
        ),
        "over_capacity_by_server": {name: n for name, n in over_capacity.items() if n},
    }
    left = [job_id for job_id in ids if fates[job_id] in ("unclaimed", "in_flight")]
    report["unfinished"] = len(left)
    if left:
        report["unfinished_jobs"] = unfinished_report(stack, left)
    report.update(count_scores(ledger, ids, humans))
    return report


def count_scores(
    ledger: Ledger, ids: list[str], humans: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Each message's score, a job of its own: found and on the site, or lost with a reason.
    `unscored_silently` counts what must never happen: no score on the site and no reason."""
    scores = {job.message_id: job for job in ledger.get_many(score_job_id(i) for i in ids)}
    on_site = {job_id for job_id, human in humans.items() if float(human.get("eqScore") or 0) > 0}
    lost = [job for job in scores.values() if job.outcome is Outcome.SCORE_LOST]
    silent = [
        job_id
        for job_id in ids
        if job_id not in on_site
        and not (
            (job := scores.get(job_id)) is not None
            and job.state.finished
            and (job.reason or (job.outcome is Outcome.SCORED and not job.score))
        )
    ]
    return {
        "scored": len(on_site),
        "scores_lost": len(lost),
        "scores_lost_reasons": dict(
            Counter(short_reason(job.reason or "") for job in lost).most_common(5)
        ),
        "unscored_silently": len(silent),
        "unscored_examples": silent[:10],
    }


def short_reason(reason: str) -> str:
    """A dead letter's reason without its ids and numbers, to group alike ones."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:160]


def unfinished_report(stack: LocalStack, job_ids: list[str]) -> dict[str, Any]:
    """The unfinished messages by their ledger state now ("absent": never written, e.g.
    unclaimed; work goes on meanwhile), with a few examples of those still unfinished."""
    ledger = stack.ledger
    jobs = {job.id: job for job in ledger.get_many(job_ids)}
    now = time.time()
    by_state = Counter(
        jobs[job_id].state.value if job_id in jobs else "absent" for job_id in job_ids
    )
    examples = [
        {
            "id": job.id,
            "state": job.state.value,
            "server": job.server_id,
            "attempt": job.attempt,
            "bridge": job.bridge_id,
            "age_s": round(now - job.claimed_at, 1),
            "history": job.history()[:300],
        }
        for job in [job for job in jobs.values() if not job.state.finished][:5]
    ]
    return {"by_state": dict(by_state), "examples": examples}


# One run ---------------------------------------------------------------------------------------


def run_chaos(
    messages: int,
    seed: int,
    *,
    schedule: list[ChaosEvent] | None = None,
    whole_schedule: bool = False,
    rate: float = 0.0,
    servers: list[SimServerSpec] | None = None,
    extra_env: dict[str, str] | None = None,
    stall_timeout_s: float = 120.0,
    max_wait_s: float = 3600.0,
    work_dir: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run `messages` through a stack under chaos (a random schedule from `seed` unless one is
    given) and count what became of them. Waits while the work moves: gives up after
    `stall_timeout_s` without progress, or `max_wait_s` after the last post."""
    specs = servers or chaos_fleet()
    sent = chaos_messages(messages, seed)
    ids = [str(message.id) for message in sent]
    plan = schedule if schedule is not None else random_schedule(seed, [s.name for s in specs])
    with LocalStack(specs, extra_env=extra_env, work_dir=work_dir) as stack:
        with stack.queue_client() as queue:
            global_before = float(queue.stats().get("globalScore", 0))
        poster = Poster(stack, sent, rate)
        chaos = Chaos(stack, plan, say)
        began = time.monotonic()
        poster.start()
        chaos.start()
        try:
            gave_up = wait_finished(
                stack,
                [*ids, *(score_job_id(job_id) for job_id in ids)],
                poster,
                chaos,
                whole_schedule=whole_schedule,
                stall_timeout_s=stall_timeout_s,
                max_wait_s=max_wait_s,
                say=say,
            )
        finally:
            poster.stopping.set()
            chaos.stop()
            poster.join(timeout=30)
        elapsed = time.monotonic() - began
        say(f"all finished after {elapsed:.1f}s" if not gave_up else f"gave up ({gave_up})")
        report = count_outcomes(stack, sent, global_before, chaos.record)
        report.update(
            {
                "seed": seed,
                "elapsed_s": round(elapsed, 1),
                "gave_up": gave_up,
                "events": dict(chaos.record.events),
                "crash_details": chaos.record.crashes,
            }
        )
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7, help="draws the messages and the chaos")
    parser.add_argument("--rate", type=float, default=0.0, help="messages posted a second (0: all)")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        help="give up after this many seconds with no message posted, replied to or finished",
    )
    parser.add_argument(
        "--max-wait", type=float, default=3600.0, help="give up this long after the last post"
    )
    parser.add_argument("--keep-dir", type=kept_dir, help="keep the stack's logs and data here")
    args = parser.parse_args()
    stop_on_sigterm()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_chaos(
        args.messages,
        args.seed,
        rate=args.rate,
        stall_timeout_s=args.stall_timeout,
        max_wait_s=args.max_wait,
        work_dir=args.keep_dir,
        say=say,
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
