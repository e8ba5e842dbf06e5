"""What every backend offers the worker: one chat call within its allowances, an inventory for
the heartbeat's record, and close. A backend is a subclass; the worker never asks which."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self

import httpx

from workers.contract.protocol import ChatOutcome, ChatRequest, ChatTimings
from workers.errors import BackendError, GenerationTimeout, ServerUnavailable
from workers.transport import Links

MAX_REPLY_BYTES = 1024 * 1024
ERROR_BODY_BYTES = 4096  # of an error answer, what is read and kept
MIN_TIMED_TOKENS = 8  # fewer generated tokens say too little of a model's speed
SPEED_WEIGHT = 0.3  # the newest measure's weight in the moving average


@dataclass(frozen=True)
class Inventory:
    """What a backend tells of itself, as the server record stores it. Per-model maps are
    keyed by the models' names as the backend lists them."""

    models: list[str] = field(default_factory=list)  # installed: what a job may ask for
    loaded: list[str] = field(default_factory=list)  # answering now without a load or start
    loading: list[str] = field(default_factory=list)  # being loaded or started now
    # Slots of a model's own (one llama-server per model); absent where the slots are shared.
    model_slots: dict[str, int] = field(default_factory=dict)
    max_loaded: int = 0  # most models loaded (or servers running) at once; 0: unknown
    context: dict[str, int] = field(default_factory=dict)  # tokens of context per slot
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # generation, as timed here
    load_s: dict[str, float] = field(default_factory=dict)  # the last cold load or start
    healthy: bool = True


class Backend(ABC):
    """A model server, or a set of them, that a worker sends chat requests to. `chat` raises
    a `workers.errors.BackendError` subclass when there is no answer; `inventory` raises one
    when the backend does not answer at all (the heartbeat then keeps what it last listed)."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def address(self) -> str:
        """Where the backend is, for people (the record's `ollama_url`)."""

    @abstractmethod
    def chat(
        self,
        request: ChatRequest,
        *,
        first_token_s: float | None = None,
        stall_s: float | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        job_id: str = "",
    ) -> ChatOutcome:
        """Run one chat request. The first token may take `first_token_s` (None: the whole
        read allowance), then `stall_s` without a token is a hang; a reply longer than
        `max_reply_bytes` is cut off and the attempt failed. `job_id` is for the logs."""

    @abstractmethod
    def inventory(self) -> Inventory:
        """What the backend has now: models installed, loaded and loading, and what it tells
        of their slots, context, speed and load times."""

    @abstractmethod
    def close(self) -> None:
        """Let go of connections; the backend is not used again."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LinkedBackend(Backend):
    """A backend whose requests go through one httpx client over its links (direct, or SSH
    tunnels to its node): both are closed with it."""

    _http: httpx.Client
    _links: Links

    def close(self) -> None:
        self._http.close()
        self._links.close()


class Measures:
    """What this worker saw of each model on its backend: the generation speed the server
    timed, and the last cold load or start. Threads of the worker share one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens_per_s: dict[str, float] = {}
        self._load_s: dict[str, float] = {}

    def note_reply(self, model: str, timings: ChatTimings) -> None:
        if timings.eval_count < MIN_TIMED_TOKENS or timings.eval_ms <= 0:
            return
        measured = timings.eval_count / (timings.eval_ms / 1000)
        with self._lock:
            known = self._tokens_per_s.get(model, measured)
            self._tokens_per_s[model] = (1 - SPEED_WEIGHT) * known + SPEED_WEIGHT * measured

    def note_load(self, model: str, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self._load_s[model] = seconds

    def tokens_per_s(self) -> dict[str, float]:
        with self._lock:
            return dict(self._tokens_per_s)

    def load_s(self) -> dict[str, float]:
        with self._lock:
            return dict(self._load_s)


def transport_error(where: str, exc: httpx.HTTPError) -> BackendError:
    """What an httpx error says of a server: never reached, gone mid-answer, or no answer in
    time."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ServerUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return GenerationTimeout(f"{where}: no answer in time")
    return ServerUnavailable(f"{where}: {type(exc).__name__}: {exc}")


def read_capped(response: httpx.Response, limit: int = ERROR_BODY_BYTES) -> bytes:
    """The start of an answer's body, never more of it than `limit`."""
    kept = b""
    for chunk in response.iter_bytes():
        kept += chunk[: limit - len(kept)]
        if len(kept) >= limit:
            break
    return kept
