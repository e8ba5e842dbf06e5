"""`ollama-cloud demo`: the whole system on one machine, with replies flowing live."""

from __future__ import annotations

import itertools
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from orchestrator.domain.job import JobKind, Outcome, score_job_id
from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.domain.servers import ServerView
from orchestrator.site_queue import SiteQueueClient
from standins.llamacpp import llamacpp_fleet, write_entities
from standins.progress import ProgressReport
from standins.stack import LocalStack, stop_on_sigterm

console = Console()

SAMPLE_LINES = [
    ("ada", "What is the point of learning things I will forget?"),
    ("bo", "Is it better to be kind or to be right?"),
    ("cy", "Why does time feel faster as we get older?"),
    ("di", "Give me one honest piece of advice."),
    ("eli", "Can a machine ever be wise?"),
    ("fay", "What should I read next?"),
    ("gus", "How do I stop putting things off?"),
    ("hal", "Tell me something you find beautiful."),
]
REPLY_ENTITIES = ["the-eternal", "the-critic"]


def sample_message(index: int, rng: random.Random) -> NewMessage:
    username, text = SAMPLE_LINES[index % len(SAMPLE_LINES)]
    others = rng.sample(SAMPLE_LINES, 2)
    context = [f"{name}: {line}" for name, line in others] + [f"{username}: hello there"]
    ais = "Oracle:080150227" if index % 7 == 3 else None
    return NewMessage(
        id=f"demo-{int(time.time() * 1000)}-{index}",
        text=f"{text} (#{index})",
        username=username,
        color="080150227",
        context=context,
        botParams=BotParams(
            entity=REPLY_ENTITIES[index % len(REPLY_ENTITIES)],
            priority=5 + (index % 3 == 0),
            ais=ais,
            humanUsername=username,
            humanColor="080150227",
        ),
    )


@dataclass
class Progress:
    """What the fleet has done so far, read from the ledger."""

    posted: list[str] = field(default_factory=list)
    finished: dict[str, dict[str, str]] = field(default_factory=dict)  # replies, by message
    scored: int = 0  # messages whose score was found
    scores_lost: int = 0  # messages whose score could not be had
    open_jobs: set[str] = field(default_factory=set)  # posted messages' jobs not yet finished
    scoring: bool = True  # whether each message has a score's job too

    def post(self, message_id: str) -> None:
        self.posted.append(message_id)
        self.open_jobs.add(message_id)
        if self.scoring:
            self.open_jobs.add(score_job_id(message_id))

    def refresh(self, stack: LocalStack) -> None:
        for job in stack.ledger.get_many(sorted(self.open_jobs)):
            if not job.state.finished:
                continue
            self.open_jobs.discard(job.id)
            if job.kind is not JobKind.REPLY:
                self.scored += job.outcome is Outcome.SCORED
                self.scores_lost += job.outcome is Outcome.SCORE_LOST
                continue
            finished_at = job.finished_at or 0.0
            self.finished[job.id] = {
                "server_id": job.server_id or "-",
                "outcome": job.outcome or "?",
                "latency_ms": f"{(finished_at - job.claimed_at) * 1000:.0f}",
            }

    def done(self, messages: int) -> bool:
        """Every message replied to (or given up) and scored (or its score lost), when scored."""
        scores = self.scored + self.scores_lost
        return len(self.finished) >= messages and (not self.scoring or scores >= messages)

    def outcomes(self) -> Counter[str]:
        return Counter(entry["outcome"] for entry in self.finished.values())

    def per_server(self) -> Counter[str]:
        return Counter(
            entry["server_id"]
            for entry in self.finished.values()
            if entry["outcome"] == Outcome.ANSWERED
        )

    def latencies_ms(self) -> list[float]:
        return [float(entry["latency_ms"]) for entry in self.finished.values()]


def fleet_table(fleet: list[ServerView], progress: Progress) -> Table:
    table = Table(title="fleet", title_justify="left")
    for column in ("", "server", "load", "loaded models", "answered"):
        table.add_column(column)
    answered = progress.per_server()
    for server in fleet:
        mark = "[green]●[/green]" if server.online and server.healthy else "[red]○[/red]"
        table.add_row(
            mark,
            server.id,
            f"{server.inflight}/{server.capacity}",
            ", ".join(sorted(server.loaded)) or "-",
            str(answered.get(server.id, 0)),
        )
    return table


def summary_table(progress: Progress, elapsed_s: float) -> Table:
    outcomes = progress.outcomes()
    latencies = sorted(progress.latencies_ms()) or [0.0]
    table = Table(title="messages", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("posted", str(len(progress.posted)))
    for outcome in (Outcome.ANSWERED, Outcome.SKIPPED, Outcome.REJECTED, Outcome.DEAD):
        table.add_row(outcome, str(outcomes.get(outcome, 0)))
    table.add_row("in progress", str(len(progress.posted) - len(progress.finished)))
    table.add_row("scored (EQ)", str(progress.scored))
    if progress.scores_lost:
        table.add_row("scores lost", str(progress.scores_lost))
    table.add_row("latency p50 (claim → reply)", f"{statistics.median(latencies):.0f} ms")
    table.add_row("latency max", f"{latencies[-1]:.0f} ms")
    table.add_row("elapsed", f"{elapsed_s:.1f} s")
    return table


def replies_per_message(queue: SiteQueueClient, human_ids: list[str]) -> Counter[str]:
    wanted = set(human_ids)
    counts: Counter[str] = Counter()
    for comment in queue.comments_after(0):
        reply_to = comment.get("replyTo")
        if comment.get("message-type") == "AI" and reply_to in wanted:
            counts[str(reply_to)] += 1
    return counts


def run_demo(messages: int | None, rate: float, timeout: float, backend: str = "ollama") -> int:
    """Live until Ctrl-C; or post `messages`, wait, report, and return 0 if each got one reply.
    `backend`: simulated Ollama servers, or llama.cpp's (a pool manager and a llama-server)."""
    with tempfile.TemporaryDirectory(prefix="ollama-cloud-entities-") as entities:
        if backend == "llamacpp":
            what = "a simulated llama.cpp pool manager and llama-server"
            stack = LocalStack(
                llamacpp_fleet(), entities_dir=write_entities(Path(entities)), web=True
            )
        else:
            what = "three simulated Macs"
            stack = LocalStack(web=True)
        console.print(f"[bold]ollama-cloud demo[/bold]: starting Redis, the local queue, {what},")
        console.print("their workers, control, beat and the bridge…")
        return run_stack(stack, messages, rate, timeout)


def run_stack(stack: LocalStack, messages: int | None, rate: float, timeout: float) -> int:
    interrupted = False
    stop_on_sigterm()
    rng = random.Random(7)
    progress = Progress(scoring=stack.jobs_per_message > 1)
    started = time.monotonic()
    try:
        with console.status("starting"):
            stack.start()
        console.print(f"up in {time.monotonic() - started:.1f}s; logs in {stack.work_dir / 'logs'}")
        if stack.web:
            console.print(f"fleet page: [bold]{stack.web_url}[/bold]")
        started = time.monotonic()
        with (
            stack.queue_client() as queue,
            ProgressReport("replies", total=messages, console=console, live=False) as replies,
            Live(console=console, refresh_per_second=4) as live,
        ):
            counter = itertools.count()
            if messages is not None:
                for _ in range(messages):
                    message = sample_message(next(counter), rng)
                    queue.post_comment(message)
                    progress.post(str(message.id))
            next_post = time.monotonic()
            while True:
                stack.check_alive()
                now = time.monotonic()
                if messages is None and now >= next_post:
                    message = sample_message(next(counter), rng)
                    queue.post_comment(message)
                    progress.post(str(message.id))
                    next_post = now + 1.0 / rate
                progress.refresh(stack)
                posted = f"{len(progress.posted)} posted, " if messages is None else ""
                replies.update(len(progress.finished), note=f"{posted}{progress.scored} scored")
                shown: list[RenderableType] = [
                    summary_table(progress, now - started),
                    fleet_table(stack.fleet(), progress),
                ]
                if messages is not None and replies.renderable is not None:
                    shown.append(replies.renderable)
                live.update(Group(*shown))
                if messages is not None and progress.done(messages):
                    break
                if messages is not None and now - started > timeout:
                    console.print(f"[red]timed out after {timeout:.0f}s[/red]")
                    break
                time.sleep(0.1)  # the display's refresh period, not a synchronisation
            if messages is None:
                return 0
            counts = replies_per_message(queue, progress.posted)
    except KeyboardInterrupt:
        interrupted = True
        return 130
    finally:
        if interrupted:
            console.print("stopping…")
        stack.stop()
        if interrupted:
            console.print("stopped: every process ended, nothing left behind")
    return report(progress, counts)


def report(progress: Progress, counts: Counter[str]) -> int:
    per_server = progress.per_server()
    once = sum(1 for job_id in progress.posted if counts.get(job_id) == 1)
    twice = sum(1 for job_id in progress.posted if counts.get(job_id, 0) > 1)
    missing = len(progress.posted) - once - twice
    console.print()
    console.print(
        f"answered exactly once: {once}/{len(progress.posted)}; more than once: {twice}; "
        f"no reply: {missing}"
    )
    console.print(
        "per server: " + ", ".join(f"{name} {count}" for name, count in sorted(per_server.items()))
    )
    console.print(f"scored: {progress.scored}; scores lost: {progress.scores_lost}")
    return 0 if once == len(progress.posted) else 1
