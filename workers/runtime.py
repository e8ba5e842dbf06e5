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
from workers.transport import Tunnels

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
    def build(
        cls, settings: WorkerSettings, server_id: str, tunnels: Tunnels | None = None
    ) -> WorkerRuntime:
        """`tunnels`: shared with the other servers of the process (a mesh), else its own."""
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
            backend=build_backend(settings, server_id, tunnels=tunnels),
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


# The runtimes of the servers this process serves, by server id: one for a Mac's worker, one
# per node for a mesh. Their bootstep installs and removes them.
_runtimes: dict[str, WorkerRuntime] = {}
_lock = threading.Lock()


def install(runtime: WorkerRuntime) -> None:
    with _lock:
        _runtimes[runtime.server_id] = runtime


def current(server_id: str | None = None) -> WorkerRuntime:
    """The runtime of `server_id`, or of the one server this process serves when not named.
    Raises LookupError for a server this process does not serve (a task to drop)."""
    with _lock:
        runtimes = dict(_runtimes)
    if not runtimes:
        raise RuntimeError("worker runtime not started (the Heartbeat bootstep installs it)")
    if server_id is None:
        if len(runtimes) != 1:
            raise LookupError(f"this process serves {sorted(runtimes)}: name one")
        return next(iter(runtimes.values()))
    try:
        return runtimes[server_id]
    except KeyError:
        raise LookupError(f"server {server_id} is not served here") from None


def served() -> list[str]:
    """The server ids this process serves."""
    with _lock:
        return sorted(_runtimes)


def uninstall(server_id: str | None = None) -> WorkerRuntime | None:
    """Remove the runtime of `server_id` (the only one when not named) and give it back."""
    with _lock:
        if server_id is None:
            if len(_runtimes) != 1:
                return None
            server_id = next(iter(_runtimes))
        return _runtimes.pop(server_id, None)
