"""Recovery of lost claims: what its passes cost the site queue in steady state, with the queue
full, and whether claims lost by a bridge killed mid-claim are found and answered once.

    python bench/recovery.py [--messages 50000] [--kills 5] [--steady-s 70] [--rate 4]
                             [--interval 1] [--after 2] [--history-hours 24] [--deadline 120]
                             [--keep-dir DIR]

The stack: two zero-latency simulated servers (both models, 4 slots each), their workers, the
control worker, beat and one bridge, against the local queue. Before the queue starts, its
SQLite file is filled in this process through the local queue's own store (`QueueStore`, its
`post_comment`, `claim` and `complete`), so it holds exactly what the queue would have stored:
`--messages` messages (50,000 by default, the queue's cap), pairs of a human message for an
entity with a 200-line context, claimed by an earlier bridge and completed, and its AI reply,
their timestamps spread evenly over the last `--history-hours` hours.

How the passes are run and counted: the stack's beat is given a recovery interval of a day
(`OLLAMA_CLOUD_RECOVER_INTERVAL_S=86400`), so its control worker runs no pass during the bench.
The bench runs every pass itself, in its own process: `orchestrator.control.recovery.recover`
with `Services` built from the stack's settings (`OLLAMA_CLOUD_RECOVER_AFTER_S` = `--after`),
under the same Redis lock the control worker's recovery task takes, every `--interval`
seconds (the pause between passes is that interval, nothing else). Each pass's `site_bytes`
(the answers' bodies the site queue client received for it) is its cost; a pass that finds no
claim note old enough asks the site nothing and costs 0 bytes, and counts as a pass. The
client's own byte counter over the whole steady phase is reported beside the passes' sum.

Phases:
  steady    messages posted at `--rate` a second, each with a 200-line context, and answered,
            the queue held at its cap (each post drops its oldest), while passes run; measured
            over `--steady-s` seconds from the first answer. Then the posting stops and every
            message posted is waited for.
  loss      `--kills` times, one after the other: the local queue is told to hold back its
            answer to the next claim (`POST /local/faults`), one message is posted, and as soon
            as the site shows it `processing` the bridge is SIGKILLed and the fault cleared; the
            claim is lost when the ledger does not hold the message then. The bridge is started
            again and answers a probe message (so it has seen the site with nothing pending, as
            a bridge that has been running has). Then, up to `--deadline` seconds from the kill,
            until the lost claim's message has exactly one reply on the queue and its jobs
            (reply and score) have finished in the ledger, and every claim note the killed
            bridge left has been looked into: only then the next kill, so that each pass that
            looks into a note after a loss is that loss's.

Prints one JSON object as its last line of stdout (progress goes to stderr):
  site_bytes_per_pass_max, site_bytes_per_pass_p50 (target: max <= 65536), passes
                        over the steady phase; steady_s, notes_looked_into_steady,
                        recovered_steady, site_bytes_steady_total (the client's counter),
                        pass_ms_max, passes_skipped_locked, pass_errors
  site_messages_at_start, site_messages_at_end   the queue's `recentMessages` around the
                        steady phase; history_message_bytes_avg: a stored message's size
  steady_messages_posted, steady_messages_answered, steady_duplicate_replies
  lost_claims_made, lost_claims_recovered (target: both equal to kills), lost_notes_left
                        (kills whose claim note stayed in Redis), lost_notes_not_looked_into,
                        duplicate_replies (of the lost messages and the probes),
                        recovered_by_passes (what the passes said they took back)
  recovered_s_max, recovered_s_p50   kill to the reply's timestamp on the queue
  recovery_pass_site_bytes_after_loss   the site bytes of each pass that took lost claims back,
                        and recovery_passes_after_loss: each pass of the loss phase that looked
                        into a note (notes, recovered, site_bytes)
  targets_met           at most 65536 site bytes a pass over at least 60 steady passes with
                        the queue at its cap, every kill a lost claim recovered, no reply twice;
                        elapsed_s
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import (
    CRITIC,
    ETERNAL,
    LLAMA,
    QWEN,
    bench_parser,
    chat_message,
    kept_dir,
    percentile,
)
from orchestrator.control.recovery import RecoveryPass, recover
from orchestrator.control.tasks import pass_lock, release_quietly
from orchestrator.domain.job import score_job_id
from orchestrator.domain.messages import NewMessage, reply_id_for
from orchestrator.errors import QueueError
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.site_queue import SiteQueueClient
from standins.local_queue import SITE_CACHE_SIZE, Posted, QueueStore
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm
from standins.waiting import wait_for
from workers.contract.settings import ENV_PREFIX

TARGET_BYTES_PER_PASS = 65_536
QUEUE_DB = "queue.sqlite3"  # the local queue's file in the stack's folder
BRIDGE = "bridge"  # the stack's first bridge: its process name and its id
EARLIER_BRIDGE = "bridge-earlier-run"  # who claimed the messages already on the site
CONTEXT_LINES = 200
CLAIM_HELD_S = 30.0  # the held-back claim answer: the bridge is killed long before it comes
LOCK_TIMEOUT_S = 30.0  # as the control worker's recovery task takes its lock
PROGRESS_EVERY_S = 10.0
NAMES = ["ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kit", "lu"]
WORDS = [
    "yes", "no", "maybe", "sure", "why", "not", "ok", "lol", "right", "same", "here", "that",
    "one", "so", "true", "wait", "what", "hm", "nice", "again", "later", "thanks", "hey", "hi",
    "agreed", "really", "never", "always", "fair", "point", "go", "on",
]  # fmt: skip


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# What the site already holds ------------------------------------------------------------------


def chat_lines(count: int, seed: int) -> list[str]:
    """Lines of a chat as the site shows them, `name: text`, short as most chat lines are."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(NAMES)}: {' '.join(rng.choices(WORDS, k=rng.randint(1, 3)))}"
        for _ in range(count)
    ]


def context_at(lines: list[str], index: int) -> list[str]:
    """The `CONTEXT_LINES` lines before a message: a window sliding along the chat."""
    start = (index * 7) % (len(lines) - CONTEXT_LINES)
    return lines[start : start + CONTEXT_LINES]


def history_bodies(count: int, end_ms: int, span_ms: int, seed: int) -> list[dict[str, Any]]:
    """`count` messages as posted, oldest first, evenly over `span_ms` before `end_ms`: a human
    message for an entity, then the AI reply to it, and so on."""
    lines = chat_lines(4 * CONTEXT_LINES, seed)
    step = span_ms / max(1, count)
    bodies: list[dict[str, Any]] = []
    for index in range(count):
        timestamp = int(end_ms - span_ms + index * step)
        pair = index // 2
        human_id = f"site-{seed}-{pair}"
        entity = ETERNAL if pair % 2 else CRITIC
        if index % 2 == 0:
            human = chat_message(
                human_id,
                f"message {pair}: {' '.join(random.Random(pair).choices(WORDS, k=8))}",
                entity,
                username=NAMES[pair % len(NAMES)],
                color="080150227",
                context=context_at(lines, pair),
                human_username=NAMES[pair % len(NAMES)],
            )
            bodies.append({**human.wire(), "timestamp": timestamp})
        else:
            bodies.append(
                {
                    "id": reply_id_for(human_id),
                    "timestamp": timestamp,
                    "text": " ".join(random.Random(-pair).choices(WORDS, k=30)),
                    "username": "TheEternal" if entity == ETERNAL else "TheCritic",
                    "color": "210080195",
                    "message-type": "AI",
                    "replyTo": human_id,
                    "botParams": {"entity": entity, "humanUsername": NAMES[pair % len(NAMES)]},
                }
            )
    return bodies


def fill_queue(path: Path, count: int, span_ms: int, seed: int) -> dict[str, Any]:
    """Store `count` answered messages in the local queue's file through its own store, as the
    queue itself stores what is posted, claimed and completed (the queue is not running)."""
    if path.exists():
        raise RuntimeError(f"{path} exists: the queue must start from the messages stored here")
    began = time.monotonic()
    store = QueueStore(path)
    try:
        bodies = history_bodies(count, int(time.time() * 1000), span_ms, seed)
        with ProgressReport("history stored", total=len(bodies)) as progress:
            for body in bodies:
                answer = store.post_comment(Posted(body))
                if answer["status"] != "success":
                    raise RuntimeError(f"history message not stored: {answer}")
                if body.get("message-type") != "AI":
                    store.claim(body["id"], EARLIER_BRIDGE)
                    store.complete(body["id"])
                progress.advance()
    finally:
        store.close()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        stored, average = db.execute("SELECT COUNT(*), AVG(LENGTH(body)) FROM messages").fetchone()
        (left,) = db.execute(
            "SELECT COUNT(*) FROM messages WHERE status IN ('pending', 'processing')"
        ).fetchone()
    finally:
        db.close()
    if left:
        raise RuntimeError(f"{left} history messages left pending or processing")
    return {
        "stored": stored,
        "bytes_avg": round(average or 0),
        "seconds": round(time.monotonic() - began, 1),
    }


# Recovery passes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassRecord:
    phase: str
    at: float  # time.time() when it began
    ms: float
    notes: int = 0
    recovered: int = 0
    site_bytes: int = 0
    skipped: bool = False  # another pass held the recovery lock
    error: str | None = None


class Passes:
    """Recovery passes every `interval` seconds, as beat would send them, in this process."""

    def __init__(self, services: Services, interval: float) -> None:
        self.services = services
        self.interval = interval
        self.phase = "warm-up"
        self.records: list[PassRecord] = []
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery-passes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(timeout=LOCK_TIMEOUT_S + 10)

    def of(self, phase: str) -> list[PassRecord]:
        return [record for record in list(self.records) if record.phase == phase]

    def _run(self) -> None:
        due = time.monotonic()
        while not self.stopping.is_set():
            self.records.append(self.one_pass(self.phase))
            # The interval between passes, as beat's schedule keeps it; a pass that ran past
            # its interval is followed by the next at once, not by the ones it overran.
            due = max(due + self.interval, time.monotonic())
            self.stopping.wait(max(0.0, due - time.monotonic()))

    def one_pass(self, phase: str) -> PassRecord:
        began, at = time.monotonic(), time.time()
        bytes_before = self.services.queue.bytes_received

        def took_ms() -> float:
            return (time.monotonic() - began) * 1000

        lock = pass_lock(self.services, self.services.keys.recover_lock, LOCK_TIMEOUT_S)
        if not lock.acquire():
            return PassRecord(phase, at, took_ms(), skipped=True)
        try:
            done: RecoveryPass = recover(self.services)
        except QueueError as exc:
            site_bytes = self.services.queue.bytes_received - bytes_before
            return PassRecord(phase, at, took_ms(), site_bytes=site_bytes, error=str(exc)[:200])
        finally:
            release_quietly(lock)
        return PassRecord(phase, at, took_ms(), done.notes, done.recovered, done.site_bytes)


def stack_settings(stack: LocalStack) -> Settings:
    """The settings the stack's control worker runs with."""
    return Settings.model_validate(
        {
            name.removeprefix(ENV_PREFIX).lower(): value
            for name, value in stack.env().items()
            if name.startswith(ENV_PREFIX)
        }
    )


# Messages flowing -----------------------------------------------------------------------------


def flow_message(index: int, run: str, lines: list[str]) -> NewMessage:
    name = NAMES[index % len(NAMES)]
    return chat_message(
        f"flow-{run}-{index}",
        f"flowing message {index}: {' '.join(random.Random(index).choices(WORDS, k=8))}",
        ETERNAL if index % 2 else CRITIC,
        username=name,
        color="080150227",
        context=context_at(lines, index),
        human_username=name,
    )


class Poster:
    """Posts messages at `rate` a second until stopped (the pause between posts is the rate)."""

    def __init__(self, queue_url: str, rate: float, run: str) -> None:
        self.queue_url = queue_url
        self.rate = rate
        self.run = run
        self.lines = chat_lines(4 * CONTEXT_LINES, 11)
        self.ids: list[str] = []
        self.errors = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._post, name="poster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(timeout=30)

    def _post(self) -> None:
        due = time.monotonic()
        with SiteQueueClient(self.queue_url) as queue:
            while not self.stopping.is_set():
                message = flow_message(len(self.ids), self.run, self.lines)
                try:
                    queue.post_comment(message)
                    self.ids.append(str(message.id))
                except QueueError as exc:
                    self.errors += 1
                    say(f"post failed: {exc}")
                due += 1.0 / self.rate
                self.stopping.wait(max(0.0, due - time.monotonic()))


# Waiting on the ledger and the queue ----------------------------------------------------------


def finished(stack: LocalStack, message_ids: list[str]) -> list[str]:
    """Of these messages, those whose reply's and score's jobs have both finished."""
    job_ids = [job_id for mid in message_ids for job_id in (mid, score_job_id(mid))]
    done = {job.id for job in stack.ledger.get_many(job_ids) if job.state.finished}
    return [mid for mid in message_ids if mid in done and score_job_id(mid) in done]


def wait_finished(stack: LocalStack, message_ids: list[str], timeout: float, what: str) -> None:
    def all_done() -> bool:
        stack.check_alive()
        return len(finished(stack, message_ids)) == len(message_ids)

    wait_for(all_done, timeout, interval=0.1, what=what)


def replies_since(queue: SiteQueueClient, since_ms: int) -> dict[str, list[dict[str, Any]]]:
    """The AI replies on the queue posted after `since_ms`, by the message they answer."""
    replies: dict[str, list[dict[str, Any]]] = {}
    for message in queue.comments_after(since_ms):
        if message.get("message-type") == "AI" and isinstance(message.get("replyTo"), str):
            replies.setdefault(message["replyTo"], []).append(message)
    return replies


def site_status(queue: SiteQueueClient, message_id: str, since_ms: int) -> str | None:
    for message in queue.comments_after(since_ms):
        if message.get("id") == message_id:
            params = message.get("botParams")
            return str(params.get("status")) if isinstance(params, dict) else None
    return None


def set_faults(stack: LocalStack, **faults: float) -> None:
    answer = httpx.post(f"{stack.queue_url}/local/faults", json=faults, timeout=5.0)
    answer.raise_for_status()


def bridge_alive_since(stack: LocalStack, since: float) -> bool:
    """The bridge has said it is alive after `since` (its liveness key holds the time)."""
    value = stack.redis.get(stack.keys.bridge(BRIDGE))
    return value is not None and float(str(value)) >= since


# The phases -----------------------------------------------------------------------------------


def steady_phase(
    stack: LocalStack, passes: Passes, args: Any, run: str, queue: SiteQueueClient
) -> dict[str, Any]:
    poster = Poster(stack.queue_url, args.rate, run)
    flow_from_ms = int(time.time() * 1000)
    poster.start()
    try:
        wait_for(
            lambda: bool(poster.ids) and bool(finished(stack, poster.ids[:1])),
            60,
            interval=0.1,
            what="the first flowing message answered",
        )
        at_start = queue.stats()["recentMessages"]
        bytes_before = passes.services.queue.bytes_received
        passes.phase = "steady"
        began = time.monotonic()
        ends = began + args.steady_s
        # A bar on a terminal; elsewhere the lines said every PROGRESS_EVERY_S.
        with ProgressReport("steady phase, s", total=args.steady_s, plain=False) as progress:
            while (left := ends - time.monotonic()) > 0:
                # The measurement's length: the passes run meanwhile.
                passes.stopping.wait(min(PROGRESS_EVERY_S, left))
                stack.check_alive()
                records = passes.of("steady")
                answered = len(finished(stack, poster.ids))
                progress.update(
                    round(min(time.monotonic() - began, args.steady_s)),
                    note=f"{len(records)} passes, {answered} answered",
                )
                say(
                    f"steady {time.monotonic() - began:4.0f}s: {len(records)} passes, max "
                    f"{max((r.site_bytes for r in records), default=0)} site bytes a pass, "
                    f"{len(poster.ids)} posted, {answered} answered"
                )
        passes.phase = "drain"
        steady_s = time.monotonic() - began
        site_bytes_total = passes.services.queue.bytes_received - bytes_before
        at_end = queue.stats()["recentMessages"]
    finally:
        poster.stop()
    posted = list(poster.ids)
    say(f"posting stopped: waiting for the {len(posted)} messages posted to be answered")
    wait_finished(stack, posted, 120, f"{len(posted)} flowing messages answered")
    replies = replies_since(queue, flow_from_ms - 1)
    records = [record for record in passes.of("steady") if not record.skipped]
    sizes = [float(record.site_bytes) for record in records]
    return {
        "passes": len(records),
        "site_bytes_per_pass_max": int(max(sizes, default=0)),
        "site_bytes_per_pass_p50": int(percentile(sizes, 0.5)) if sizes else 0,
        "steady_s": round(steady_s, 1),
        "notes_looked_into_steady": sum(record.notes for record in records),
        "recovered_steady": sum(record.recovered for record in records),
        "site_bytes_steady_total": site_bytes_total,
        "pass_ms_max": round(max((record.ms for record in records), default=0.0), 1),
        "passes_skipped_locked": sum(1 for r in passes.of("steady") if r.skipped),
        "pass_errors": sum(1 for record in records if record.error),
        "site_messages_at_start": at_start,
        "site_messages_at_end": at_end,
        "steady_messages_posted": len(posted),
        "steady_messages_answered": sum(1 for mid in posted if len(replies.get(mid, [])) >= 1),
        "steady_duplicate_replies": sum(max(0, len(replies.get(mid, [])) - 1) for mid in posted),
        "post_errors": poster.errors,
    }


@dataclass
class LostClaim:
    message_id: str
    killed_at: float  # time.time()
    made: bool  # the ledger did not hold the message once its bridge was killed
    notes: list[str]  # the claim notes the killed bridge left
    answered: bool = False  # within the deadline: one reply, its jobs finished
    notes_looked_into: bool = False  # within the deadline: every note it left gone


def answered_once(
    stack: LocalStack, queue: SiteQueueClient, message_id: str, since_ms: int
) -> bool:
    stack.check_alive()
    replies = replies_since(queue, since_ms).get(message_id, [])
    return len(replies) == 1 and bool(finished(stack, [message_id]))


def notes_gone(stack: LocalStack, note_ids: list[str]) -> bool:
    return not {note.id for note in stack.ledger.claim_notes()}.intersection(note_ids)


def lose_one_claim(
    stack: LocalStack, queue: SiteQueueClient, run: str, index: int, deadline_s: float
) -> tuple[LostClaim, str]:
    """Lose one claim: the bridge killed after the site claimed the message for it, before it
    heard so; then the bridge started again (answering a probe), and the message waited for
    until it is answered and every note the bridge left has been looked into."""
    set_faults(stack, claim_delay_s=CLAIM_HELD_S, claims=1)
    message_id = f"lost-{run}-{index}"
    posted = queue.post_comment(
        chat_message(message_id, f"will this claim be lost? {index}", ETERNAL, username="ada")
    )
    wait_for(
        lambda: site_status(queue, message_id, posted.timestamp - 1) == "processing",
        30,
        interval=0.02,
        what=f"{message_id} claimed",
    )
    stack.processes[BRIDGE].kill()
    killed_at = time.time()
    set_faults(stack)
    made = stack.ledger.get(message_id) is None
    # The bridge is dead: whatever note it left is its claim's.
    notes = [note.id for note in stack.ledger.claim_notes() if note.bridge_id == BRIDGE]
    claim = LostClaim(message_id, killed_at, made, notes)
    say(
        f"kill {index + 1}: {message_id} claimed, bridge killed; "
        f"{'not in the ledger' if made else 'IN THE LEDGER already'}, "
        f"{len(notes)} claim note{'s' if len(notes) != 1 else ''} left"
    )
    restarted = time.time()
    stack.start_bridge(0)
    wait_for(
        lambda: bridge_alive_since(stack, restarted),
        60,
        interval=0.05,
        what="the bridge started again",
    )
    probe = f"probe-{run}-{index}"
    queue.post_comment(chat_message(probe, f"are you back? {index}", CRITIC, username="bo"))
    wait_finished(stack, [probe], 60, f"probe {probe} answered")
    since_ms = posted.timestamp - 1
    try:
        wait_for(
            lambda: answered_once(stack, queue, message_id, since_ms),
            max(0.0, killed_at + deadline_s - time.time()),
            interval=0.1,
            what=f"{message_id} answered",
        )
        claim.answered = True
        wait_for(
            lambda: notes_gone(stack, notes),
            max(0.0, killed_at + deadline_s - time.time()),
            interval=0.1,
            what=f"the claim notes of {message_id} looked into",
        )
        claim.notes_looked_into = True
    except TimeoutError as exc:
        say(str(exc))
    return claim, probe


def loss_phase(
    stack: LocalStack, passes: Passes, args: Any, run: str, queue: SiteQueueClient
) -> dict[str, Any]:
    passes.phase = "loss"
    since_ms = int(time.time() * 1000) - 1
    claims: list[LostClaim] = []
    probes: list[str] = []
    with ProgressReport("bridges killed mid-claim", total=args.kills) as progress:
        for index in range(args.kills):
            claim, probe = lose_one_claim(stack, queue, run, index, args.deadline)
            claims.append(claim)
            probes.append(probe)
            progress.advance()
    # Counted again at the end: a reply posted twice would show by now.
    replies = replies_since(queue, since_ms)
    ids = [claim.message_id for claim in claims if claim.made]
    done = set(finished(stack, ids))
    recovered = [
        claim
        for claim in claims
        if claim.made
        and claim.answered
        and claim.message_id in done
        and len(replies.get(claim.message_id, [])) == 1
    ]
    took = [
        replies[claim.message_id][0]["timestamp"] / 1000 - claim.killed_at for claim in recovered
    ]
    looked = [record for record in passes.of("loss") if record.notes]
    return {
        "kills": args.kills,
        "lost_claims_made": len(ids),
        "lost_claims_recovered": len(recovered),
        "lost_notes_left": sum(1 for claim in claims if claim.notes),
        "lost_notes_not_looked_into": sum(1 for claim in claims if not claim.notes_looked_into),
        "duplicate_replies": sum(
            max(0, len(replies.get(mid, [])) - 1)
            for mid in [*(claim.message_id for claim in claims), *probes]
        ),
        "recovered_s_max": round(max(took), 2) if took else None,
        "recovered_s_p50": round(percentile(took, 0.5), 2) if took else None,
        "recovery_pass_site_bytes_after_loss": [r.site_bytes for r in looked if r.recovered],
        "recovery_passes_after_loss": [
            {"notes": r.notes, "recovered": r.recovered, "site_bytes": r.site_bytes}
            | ({"error": r.error} if r.error else {})
            for r in looked
        ],
        "recovered_by_passes": sum(r.recovered for r in passes.of("loss")),
    }


def zero_latency_fleet() -> list[SimServerSpec]:
    return [
        SimServerSpec(
            name=f"zero-{index}", models=[LLAMA, QWEN], loaded=[LLAMA, QWEN], tokens_per_second=0
        )
        for index in range(2)
    ]


def run_recovery(args: Any, report_progress: Callable[[str], None] = say) -> dict[str, Any]:
    began = time.monotonic()
    run = f"{int(time.time()) % 100_000}"
    extra_env = {
        f"{ENV_PREFIX}RECOVER_INTERVAL_S": "86400",  # the bench runs every pass itself
        f"{ENV_PREFIX}RECOVER_AFTER_S": str(args.after),
    }
    stack = LocalStack(zero_latency_fleet(), extra_env=extra_env, work_dir=args.keep_dir)
    try:
        report_progress(f"storing {args.messages} answered messages in the local queue's file")
        history = fill_queue(
            stack.work_dir / QUEUE_DB, args.messages, int(args.history_hours * 3_600_000), 7
        )
        report_progress(
            f"stored {history['stored']} messages of {history['bytes_avg']} bytes on average "
            f"in {history['seconds']}s; starting the stack"
        )
        stack.start()
        services = Services.build(stack_settings(stack))
        passes = Passes(services, args.interval)
        try:
            with stack.queue_client() as queue:
                passes.start()
                report = {
                    "messages": args.messages,
                    "history_message_bytes_avg": history["bytes_avg"],
                    "history_hours": args.history_hours,
                    "recover_interval_s": args.interval,
                    "recover_after_s": args.after,
                }
                report.update(steady_phase(stack, passes, args, run, queue))
                report_progress(
                    f"steady: {report['passes']} passes, at most "
                    f"{report['site_bytes_per_pass_max']} site bytes a pass; now {args.kills} "
                    "bridges killed mid-claim"
                )
                report.update(loss_phase(stack, passes, args, run, queue))
        finally:
            passes.stop()
            services.close()
    finally:
        stack.stop()
    report["targets_met"] = (
        report["site_bytes_per_pass_max"] <= TARGET_BYTES_PER_PASS
        and report["passes"] >= 60
        and report["site_messages_at_start"] >= min(args.messages, SITE_CACHE_SIZE)
        and report["lost_claims_made"] == args.kills
        and report["lost_claims_recovered"] == args.kills
        and report["duplicate_replies"] == 0
    )
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--messages", type=int, default=SITE_CACHE_SIZE)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--steady-s", type=float, default=70.0, help="measured steady phase")
    parser.add_argument("--rate", type=float, default=4.0, help="messages posted a second")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    parser.add_argument(
        "--after", type=float, default=2.0, help="a claim note is looked into this old"
    )
    parser.add_argument(
        "--history-hours", type=float, default=24.0, help="the stored messages' time span"
    )
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="for every lost claim to be answered"
    )
    parser.add_argument("--keep-dir", type=kept_dir, help="keep the stack's logs and data here")
    args = parser.parse_args()
    stop_on_sigterm()
    report = run_recovery(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
