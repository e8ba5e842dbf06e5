"""What travels through Celery between the bridge, a server's worker and control (JSON only)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

GENERATE_TASK = "ollama_cloud.generate"
DELIVER_TASK = "ollama_cloud.deliver"
CONTROL_QUEUE = "control"


class ChatTurn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """One request to Ollama's `/api/chat`, `stream: false`."""

    model: str
    messages: list[ChatTurn]
    options: dict[str, Any] = Field(default_factory=dict)
    keep_alive: str | None = None

    def ollama_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [turn.model_dump() for turn in self.messages],
            "stream": False,
            "options": self.options,
        }
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body


class ChatTimings(BaseModel):
    """Ollama's own durations, converted to milliseconds, and the wall time we saw."""

    wall_ms: float = 0.0
    total_ms: float = 0.0
    load_ms: float = 0.0
    prompt_eval_count: int = 0
    eval_count: int = 0
    eval_ms: float = 0.0


class ChatOutcome(BaseModel):
    """The answer to one chat request, or the reason there is none."""

    ok: bool
    text: str = ""
    error_kind: str | None = None
    error: str | None = None
    timings: ChatTimings = Field(default_factory=ChatTimings)


class GenerateJob(BaseModel):
    """The generate task's argument: everything a worker needs, nothing of the site."""

    job_id: str
    attempt: int
    server_id: str
    reply: ChatRequest
    eq: ChatRequest | None = None
    dispatched_at: float


class GenerateResult(BaseModel):
    """The generate task's return value; the deliver task's argument."""

    job_id: str
    attempt: int
    server_id: str
    reply: ChatOutcome
    eq: ChatOutcome | None = None
    started_at: float
    finished_at: float
    stale: bool = False
