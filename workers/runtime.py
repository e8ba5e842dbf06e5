"""What a running worker holds: its settings, its server id, its backend (Ollama, or
OpenAI-compatible servers), Redis and its steps on the ledger."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from workers.backends.base import Backend
from workers.backends.build import build_backend
from workers.contract.attempts import AttemptLedger
from workers.contract.keys import Keys
from workers.contract.model_names import model_key
from workers.contract.protocol import ChatOutcome, ChatRequest
from workers.settings import WorkerSettings

CHARS_PER_TOKEN = 4  # a prompt's tokens, guessed from its length before the server counts them
UNMEASURED_PROMPT_TOKENS_PER_S = 100.0  # a slow Mac's prompt speed, until this one is measured
PROMPT_ALLOWANCE_FACTOR = 2.0  # the prompt may take twice as long as it was measured to


@dataclass
class WorkerRuntime:
    settings: WorkerSettings
    server_id: str
    keys: Keys
    redis: redis.Redis
    backend: Backend
    attempts: AttemptLedger
    # What the heartbeat last saw loaded (not loading), and each model's prompt speed here.
    loaded: frozenset[str] = frozenset()
    prompt_tokens_per_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: WorkerSettings, server_id: str) -> WorkerRuntime:
        keys = Keys(settings.key_prefix)
        client = redis.Redis.from_url(
            settings.redis_url,
            client_name=keys.worker_client(server_id),
            decode_responses=True,
            health_check_interval=30,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry_on_timeout=True,
        )
        return cls(
            settings=settings,
            server_id=server_id,
            keys=keys,
            redis=client,
            attempts=AttemptLedger(client, keys),
            backend=build_backend(settings, server_id),
        )

    def close(self) -> None:
        self.backend.close()
        self.redis.close()

    def note_loaded(self, models: list[str]) -> None:
        self.loaded = frozenset(model_key(name) for name in models)

    def first_token_allowance(self, request: ChatRequest) -> float:
        """How long the first token may take. A model that must be loaded first (a model
        server still loading, a pool's model not started) may take the whole read allowance (a
        cold load of minutes is not a hang); a loaded one, a little more than its prompt takes
        here."""
        model = model_key(request.model)
        if model not in self.loaded:
            return self.settings.read_timeout_s
        prompt_tokens = sum(len(turn.content) for turn in request.messages) / CHARS_PER_TOKEN
        speed = self.prompt_tokens_per_s.get(model, UNMEASURED_PROMPT_TOKENS_PER_S)
        prompt_s = PROMPT_ALLOWANCE_FACTOR * prompt_tokens / speed
        return min(self.settings.read_timeout_s, self.settings.first_token_timeout_s + prompt_s)

    def chat(self, request: ChatRequest, job_id: str = "") -> ChatOutcome:
        """One chat request on this server's backend, within its allowances."""
        settings = self.settings
        outcome = self.backend.chat(
            request,
            first_token_s=self.first_token_allowance(request),
            stall_s=settings.stall_timeout_s,
            max_reply_bytes=settings.max_reply_bytes,
            job_id=job_id,
        )
        timings = outcome.timings
        if timings.prompt_eval_count >= 32 and timings.prompt_eval_ms > 0:
            measured = timings.prompt_eval_count / (timings.prompt_eval_ms / 1000)
            model = model_key(request.model)
            # The slowest seen lately counts most: a busy server evaluates prompts slower.
            known = self.prompt_tokens_per_s.get(model, measured)
            self.prompt_tokens_per_s[model] = min(measured, 0.8 * known + 0.2 * measured)
        return outcome


_current: WorkerRuntime | None = None
_lock = threading.Lock()


def install(runtime: WorkerRuntime) -> None:
    global _current  # noqa: PLW0603 - one runtime per worker process, set by its bootstep
    with _lock:
        _current = runtime


def current() -> WorkerRuntime:
    """The runtime the worker's bootstep installed."""
    if _current is None:
        raise RuntimeError("worker runtime not started (the Heartbeat bootstep installs it)")
    return _current


def uninstall() -> WorkerRuntime | None:
    global _current
    with _lock:
        runtime, _current = _current, None
    return runtime
