"""What travels through Celery between the bridge, a server's worker and control (JSON only)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

GENERATE_TASK = "ollama_cloud.generate"
DELIVER_TASK = "ollama_cloud.deliver"
SWEEP_TASK = "ollama_cloud.sweep"
RECOVER_TASK = "ollama_cloud.recover"
CONTROL_QUEUE = "control"
# Queues a worker may consume beside its server's own; never a server id.
SYSTEM_QUEUES = frozenset({"celery", CONTROL_QUEUE})
# The tasks each side takes from the broker: anything else in its queues is a poison item.
SERVER_TASKS = (GENERATE_TASK,)
CONTROL_TASKS = (DELIVER_TASK, SWEEP_TASK, RECOVER_TASK)


class ErrorKind(StrEnum):
    """Why an attempt at a job failed: raised by a worker's backend, or found by control."""

    # A model server did not answer a chat request.
    UNAVAILABLE = "unavailable"  # refused, or did not accept the connection in time
    BUSY = "busy"  # every slot taken (HTTP 503)
    TIMEOUT = "timeout"  # accepted, but no answer within the read allowance
    HUNG = "hung"  # the model loaded, yet no first token in time, or its tokens stopped
    CONTEXT_OVERFLOW = "context_overflow"  # the prompt does not fit the model's context
    MODEL_MISSING = "model_missing"  # the server does not have the model
    BAD_REQUEST = "bad_request"  # refused for what it asks (HTTP 400), not the server's fault
    SERVER_ERROR = "server_error"  # any other HTTP error, or an answer that is not the API's
    OLLAMA_ERROR = "ollama_error"  # a server error of no finer kind
    WORKER_ERROR = "worker_error"  # the worker itself failed while running the request
    # The worker did not run it.
    STALE = "stale"  # the ledger had moved on to another attempt or ended the job
    # Found by the sweep: the attempt will never bring a result.
    NOT_STARTED = "not_started"  # no worker began it in time (its task was lost)
    WORKER_RESTARTED = "worker_restarted"  # its worker restarted while running it
    SERVER_LOST = "server_lost"  # its server stopped beating, or its worker's process went

    @property
    def server_fault(self) -> bool:
        """Says something about the server: it cools down before it is tried again."""
        return self in SERVER_FAULTS

    @property
    def counts_against_attempts(self) -> bool:
        """A context overflow is retried with less history, on any server, without counting
        against `max_attempts`; every other failure counts."""
        return self is not ErrorKind.CONTEXT_OVERFLOW


SERVER_FAULTS = frozenset(
    {
        ErrorKind.UNAVAILABLE,
        ErrorKind.BUSY,
        ErrorKind.TIMEOUT,
        ErrorKind.HUNG,
        ErrorKind.SERVER_ERROR,
        ErrorKind.WORKER_ERROR,
        ErrorKind.OLLAMA_ERROR,
    }
)


class ChatTurn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """One chat request, as the site's bot builds it: the fields of its OpenAI-compatible
    payload, unset when it sends none. Each backend sends them under its own API's names."""

    model: str
    messages: list[ChatTurn]
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    min_p: float | None = None
    stop: list[str] | None = None
    num_ctx: int | None = None  # Ollama's context size: only when the entity sets one
    # The turns [start, end) that are history, oldest first: a server whose context is too
    # small for the whole may go without the oldest of them (never the others). None: no
    # turn may be left out.
    history: tuple[int, int] | None = None

    def without_oldest(self, count: int) -> ChatRequest:
        """The request with its `count` oldest history turns left out."""
        if self.history is None or count <= 0:
            return self
        start, end = self.history
        count = min(count, end - start)
        messages = [*self.messages[:start], *self.messages[start + count :]]
        return self.model_copy(update={"messages": messages, "history": (start, end - count)})

    def sampling(self) -> dict[str, Any]:
        """The sampling fields that are set, under the OpenAI-compatible names."""
        names = ("temperature", "max_tokens", "top_p", "top_k", "repeat_penalty", "min_p", "stop")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def ollama_body(self) -> dict[str, Any]:
        """The body of Ollama's `/api/chat`, not streamed: sampling under `options`, with
        Ollama's own name for the reply's length."""
        options = self.sampling()
        if "max_tokens" in options:
            options["num_predict"] = options.pop("max_tokens")
        if self.num_ctx is not None:
            options["num_ctx"] = self.num_ctx
        return {
            "model": self.model,
            "messages": [turn.model_dump() for turn in self.messages],
            "stream": False,
            "options": options,
        }

    def openai_body(self) -> dict[str, Any]:
        """The body of `/v1/chat/completions`, not streamed, every option at the top level."""
        return {
            "model": self.model,
            "messages": [turn.model_dump() for turn in self.messages],
            **self.sampling(),
            "stream": False,
        }


class ChatTimings(BaseModel):
    """Ollama's own durations, converted to milliseconds, and the wall time we saw."""

    wall_ms: float = 0.0
    total_ms: float = 0.0
    load_ms: float = 0.0
    prompt_eval_count: int = 0
    prompt_eval_ms: float = 0.0
    eval_count: int = 0
    eval_ms: float = 0.0


class ChatOutcome(BaseModel):
    """The answer to one chat request, or the reason there is none."""

    ok: bool
    text: str = ""
    error_kind: ErrorKind | None = None
    error: str | None = None
    timings: ChatTimings = Field(default_factory=ChatTimings)


def generate_task_id(job_id: str, attempt: int) -> str:
    """The id of a job's generate task for one attempt: Flower's page of that task is then
    found from the ledger (`/task/<job>@<attempt>`)."""
    return f"{job_id}@{attempt}"


class GenerateJob(BaseModel):
    """The generate task's argument: one chat request (a reply's, or a score's), and nothing
    of the site."""

    job_id: str
    attempt: int
    server_id: str
    request: ChatRequest
    dispatched_at: float

    def argsrepr(self) -> str:
        """How the task's argument shows in Flower and the logs: which job, not its text."""
        return f"(job={self.job_id} attempt={self.attempt} server={self.server_id})"


class GenerateResult(BaseModel):
    """What a worker sends to `deliver` on `control` when it is done with a generate task."""

    job_id: str
    attempt: int
    server_id: str
    outcome: ChatOutcome
    started_at: float
    finished_at: float
    stale: bool = False

    def argsrepr(self) -> str:
        """How the deliver task's argument shows in Flower and the logs."""
        verdict = "stale" if self.stale else ("ok" if self.outcome.ok else self.outcome.error_kind)
        return f"(job={self.job_id} attempt={self.attempt} server={self.server_id} {verdict})"


# Each task's one argument, by name (None: the task takes none). The broker's gate checks a
# task's arguments against it before Celery sees the task (workers.contract.broker).
TASK_ARGUMENT: dict[str, type[BaseModel] | None] = {
    GENERATE_TASK: GenerateJob,
    DELIVER_TASK: GenerateResult,
    SWEEP_TASK: None,
    RECOVER_TASK: None,
}
