"""`ollama-cloud jobs`: the ledger's in-flight jobs and dead letters, and an operator's two
levers on them: place a dead letter again (`retry`), or end a job without a reply (`drop`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from orchestrator.domain.job import Job, JobKind, Outcome
from orchestrator.errors import JobRefused, MessageGone, QueueError
from orchestrator.ops.durations import ago, span
from orchestrator.services import State, site_queue_client
from orchestrator.settings import Settings
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.ledger import Kept, Ledger, Letters
from workers.contract.job import JobState
from workers.contract.protocol import generate_task_id

DROP_REASON = "dropped by the operator"
DROP_OUTCOME = Outcome.DROPPED  # its own counter: status tells drops from rejections
TEXT_CHARS = 200
ERROR_CHARS = 80


# Reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveRow:
    id: str
    kind: str  # reply or score
    state: str
    attempt: int
    server_id: str | None
    entity: str | None
    age_s: float
    deadline_in_s: float
    last_error: str | None
    task_id: str | None  # its current attempt's generate task (Flower's /task/<id>)


@dataclass(frozen=True)
class DeadRow:
    id: str
    kind: str
    entity: str | None
    finished_at: float | None
    reason: str | None
    apology_posted: bool  # an apology took the reply's place: `retry` would be refused
    attempts: list[dict[str, Any]]
    task_id: str | None  # its last attempt's generate task


@dataclass(frozen=True)
class JobsReport:
    active: list[ActiveRow]
    dead: list[DeadRow]
    active_total: int
    dead_total: int
    letters: Letters

    def as_json(self) -> dict[str, Any]:
        return {
            "active": [asdict(row) for row in self.active],
            "dead": [asdict(row) for row in self.dead],
            "letters": asdict(self.letters),
        }


def task_of(job: Job) -> str | None:
    """The generate task of the job's latest attempt, once it has had one."""
    return generate_task_id(job.id, job.attempt) if job.attempt > 0 else None


def read_jobs(ledger: Ledger, limit: int) -> JobsReport:
    """The active jobs, soonest deadline first, and the dead letters, newest first: `limit` of
    each."""
    active_ids = ledger.active_job_ids(limit)
    dead_ids = ledger.dead_job_ids(limit)
    active_total, dead_total = ledger.totals()
    now = time.time()
    active = [
        ActiveRow(
            id=job.id,
            kind=job.kind.value,
            state=job.state.value,
            attempt=job.attempt,
            server_id=job.server_id,
            entity=job.entity,
            age_s=round(max(0.0, now - job.claimed_at), 3),
            deadline_in_s=round(job.deadline - now, 3),
            last_error=job.last_error,
            task_id=task_of(job),
        )
        for job in ledger.get_many(active_ids)
    ]
    dead = [
        DeadRow(
            id=job.id,
            kind=job.kind.value,
            entity=job.entity,
            finished_at=job.finished_at,
            reason=job.reason,
            apology_posted=job.apology_posted,
            attempts=[entry.model_dump(mode="json") for entry in job.attempts],
            task_id=task_of(job),
        )
        for job in ledger.get_many(dead_ids)
    ]
    return JobsReport(active, dead, active_total, dead_total, ledger.letters())


# Acting -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dropped:
    job: Job  # as it was before the drop
    site: str  # "completed", "gone" (the site no longer had it), "failed", "untouched" (a score)
    queue_error: str | None = None


def drop_job(ledger: Ledger, queue: SiteQueueClient, job_id: str) -> Dropped:
    """End an active or dead job without a reply (or score): its slot freed, out of the retry
    set and the dead letters, rejected in the ledger; a reply's message completed on the site.
    Refused for unknown or already answered or rejected jobs. A site queue error is reported,
    the drop stands."""
    job = ledger.drop(job_id, DROP_REASON, DROP_OUTCOME)
    if job.kind is JobKind.SCORE:
        return Dropped(job, "untouched")
    try:
        queue.complete(job_id)
    except MessageGone:
        return Dropped(job, "gone")
    except QueueError as exc:
        return Dropped(job, "failed", str(exc))
    return Dropped(job, "completed")


# Showing ----------------------------------------------------------------------------------------


def deadline_in(seconds: float) -> Text:
    if seconds < 0:
        return Text(f"overdue {span(seconds)}", style="red")
    return Text(span(seconds))


def shorten(value: str | None, chars: int) -> str:
    if not value:
        return "-"
    flat = " ".join(value.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"


def attempt_line(entry: dict[str, Any]) -> str:
    error = f"{entry['error_kind']}: {entry['error'] or ''}".strip()
    return f"#{entry['attempt']} {entry['server_id']}: {shorten(error, ERROR_CHARS)}"


def jobs_tables(report: JobsReport) -> Group:
    active = Table(title="in-flight jobs", title_justify="left")
    for column in ("job", "kind", "state", "attempt", "server", "entity", "age", "deadline in"):
        active.add_column(column, no_wrap=column != "job")
    active.add_column("last error")
    for row in report.active:
        active.add_row(
            Text(row.id),
            row.kind,
            row.state,
            str(row.attempt),
            Text(row.server_id or "-"),
            Text(row.entity or "-"),
            span(row.age_s),
            deadline_in(row.deadline_in_s),
            Text(shorten(row.last_error, ERROR_CHARS)),
        )
    active.caption = f"{len(report.active)} of {report.active_total} active jobs"
    dead = Table(title="dead letters", title_justify="left")
    for column in ("job", "kind", "entity", "when", "reason", "attempts"):
        dead.add_column(column, no_wrap=column in {"entity", "when"})
    now = time.time()
    for entry in report.dead:
        dead.add_row(
            Text(entry.id),
            entry.kind,
            Text(entry.entity or "-"),
            ago(now - entry.finished_at) if entry.finished_at else "-",
            Text(shorten(entry.reason, 120)),
            Text("\n".join(attempt_line(item) for item in entry.attempts) or "none"),
        )
    dead.caption = f"{len(report.dead)} of {report.dead_total} dead letters"
    return Group(active, Text(""), dead, Text(""), letters_table(report.letters))


LETTER_KINDS = (
    ("dead", "dead letters", "replies given up (kept for the dead-letter retention)"),
    ("lost_scores", "lost scores", "scores given up (kept for the finished-job retention)"),
    ("broker", "broker dead letters", "poison items taken from a queue (the newest kept)"),
    ("refused", "refused messages", "messages refused before any job (the newest kept)"),
)


def letters_table(letters: Letters) -> Table:
    """How many of each kind of letter are kept, and how old they are."""
    table = Table(title="kept for an operator", title_justify="left")
    for column in ("kind", "count", "oldest", "newest", "what"):
        table.add_column(column, no_wrap=column != "what")
    now = time.time()

    def when(stamp: float | None) -> str:
        return ago(now - stamp) if stamp else "-"

    for name, label, what in LETTER_KINDS:
        kept: Kept = getattr(letters, name)
        table.add_row(label, str(kept.count), when(kept.oldest_at), when(kept.newest_at), what)
    return table


def job_view(job: Job) -> Group:
    now = time.time()

    def since(stamp: float | None) -> str:
        return ago(now - stamp) if stamp else "-"

    text = job.message.get("text")
    fields = Table(title=f"job {job.id}", title_justify="left", show_header=False)
    fields.add_column("field", style="bold", no_wrap=True)
    fields.add_column("value")
    rows: list[tuple[str, str | Text]] = [
        ("kind", job.kind.value),
        ("state", job.state.value),
        ("attempt", str(job.attempt)),
        ("server", job.server_id or "-"),
        ("bridge", job.bridge_id or "-"),
        ("entity", f"{job.entity or '-'} ({job.model or 'model not chosen yet'})"),
        ("priority", str(job.priority)),
        ("from", str(job.message.get("username") or "-")),
        ("text", shorten(text if isinstance(text, str) else None, TEXT_CHARS)),
        ("claimed", since(job.claimed_at)),
        ("dispatched", since(job.dispatched_at)),
        ("deadline", "-" if job.state.finished else deadline_in(job.deadline - now)),
        ("finished", since(job.finished_at)),
        ("outcome", job.outcome or "-"),
        ("score", "-" if job.score is None else str(job.score)),
        ("reason", job.reason or "-"),
        ("history cut", f"{job.trim} times"),
        ("apology", "posted" if job.apology_posted else "no"),
        ("result kept", "yes" if job.result else "no"),
    ]
    for name, value in rows:
        fields.add_row(name, value if isinstance(value, Text) else Text(value))
    attempts = Table(title="attempts", title_justify="left")
    for column in ("#", "server", "error", "when", ""):
        attempts.add_column(column)
    for index, entry in enumerate(job.attempts):
        attempts.add_row(
            str(entry.attempt),
            Text(entry.server_id),
            Text(entry.describe()),
            since(entry.at),
            "forgiven" if index < job.attempts_from else "",
        )
    if not job.attempts:
        attempts.caption = "no attempt has failed"
    return Group(fields, Text(""), attempts)


# The commands (the CLI parses flags and calls these) --------------------------------------------


def open_state(settings: Settings) -> State:
    return State.from_settings(settings)


def refusal(message: str) -> int:
    Console(stderr=True).print(Text(message, style="red"))
    return 1


def list_command(settings: Settings, *, limit: int, as_json: bool) -> int:
    state = open_state(settings)
    try:
        report = read_jobs(state.ledger, limit)
    finally:
        state.close()
    if as_json:
        print(json.dumps(report.as_json()))
    else:
        Console().print(jobs_tables(report))
    return 0


def show_command(settings: Settings, job_id: str, *, as_json: bool) -> int:
    state = open_state(settings)
    try:
        job = state.ledger.get(job_id)
    finally:
        state.close()
    if job is None:
        return refusal(f"no job {job_id!r} in the ledger")
    if as_json:
        print(json.dumps(job.model_dump(mode="json"), ensure_ascii=False))
    else:
        Console().print(job_view(job))
    return 0


def retry_command(settings: Settings, job_id: str) -> int:
    state = open_state(settings)
    try:
        job = state.ledger.revive(job_id, settings.job_deadline_s)
    except JobRefused as exc:
        return refusal(str(exc))
    finally:
        state.close()
    Console().print(
        Text(
            f"job {job.id} queued again for any bridge: attempt {job.attempt + 1} next, "
            f"{job.attempts_from} earlier failures forgiven, deadline in "
            f"{span(settings.job_deadline_s)}"
        )
    )
    return 0


def drop_command(settings: Settings, job_id: str) -> int:
    state = open_state(settings)
    queue = site_queue_client(settings)
    try:
        dropped = drop_job(state.ledger, queue, job_id)
    except JobRefused as exc:
        return refusal(str(exc))
    finally:
        queue.close()
        state.close()
    was = dropped.job.state.value
    if dropped.site == "failed":
        Console(stderr=True).print(
            Text(
                f"job {job_id} dropped (was {was}), but the site queue did not complete it: "
                f"{dropped.queue_error}",
                style="yellow",
            )
        )
        return 0
    site = {
        "completed": "completed on the site",
        "gone": "already gone from the site",
        "untouched": "a score: nothing on the site",
    }[dropped.site]
    note = ""
    if dropped.job.state is JobState.DELIVERING:
        note = "; its result was being delivered, so a reply may still appear"
    Console().print(Text(f"job {job_id} dropped (was {was}): {site}{note}"))
    return 0
