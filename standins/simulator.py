"""A simulated Ollama server: Ollama's HTTP API with scripted models, load times, speed and slots.

One process serves many simulated servers, each on its own port. Replies are deterministic
words, so tests can compare them; two directives in the last user message script a reply
(`sim-say: text`) or an HTTP error (`sim-error:503`), and a system prompt that mentions
"score" gets `Score: N` (the EQ scorer's stand-in). `/sim/...` routes read stats and inject
faults; they do not exist in Ollama.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from standins.embedded_redis import free_port
from standins.http_server import serve_all, uvicorn_server
from standins.waiting import wait_for

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

OLLAMA_VERSION = "0.12.3"
DEFAULT_NUM_PREDICT = 128
DEFAULT_KEEP_ALIVE_S = 300.0
# Ollama clamps num_ctx to what the model was trained for; this also bounds num_predict.
MAX_NUM_CTX = 131_072
NS = 1_000_000_000
MAX_DURATION_S = 2**63 / NS
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
CONTEXT_MESSAGE = "the input length exceeds the context length"
RUNNER_DIED_MESSAGE = "llama runner process has terminated: exit status 2"
VOCABULARY = (
    "the", "river", "light", "quiet", "stone", "morning", "we", "carry", "small", "bright",
    "and", "over", "garden", "slowly", "open", "sky", "of", "kind", "wind", "remember",
    "a", "window", "warm", "listen", "between", "paths", "gentle", "home", "is", "soft",
    "mountain", "together",
)  # fmt: skip
SIM_SAY = re.compile(r"sim-say:(.*)", re.DOTALL)
SIM_ERROR = re.compile(r"sim-error:(\d{3})")
TOKEN = re.compile(r"\s*\S+")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class SimServerSpec(BaseModel):
    """One simulated Ollama server: its models, its speed and its limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    models: list[str] = Field(min_length=1)
    loaded: list[str] = []
    tokens_per_second: float = Field(default=0.0, ge=0)
    load_seconds: float = Field(default=0.0, ge=0)
    parallel: int = Field(default=4, ge=1)
    max_queue: int = Field(default=0, ge=0)
    max_loaded_models: int = Field(default=3, ge=1)
    context_length: int = Field(default=8192, ge=1, le=MAX_NUM_CTX)

    @model_validator(mode="after")
    def _loaded_are_installed(self) -> SimServerSpec:
        self.models = [canonical_model(name) for name in self.models]
        self.loaded = [canonical_model(name) for name in self.loaded]
        missing = [name for name in self.loaded if name not in self.models]
        if missing:
            raise ValueError(f"loaded models not among models: {', '.join(missing)}")
        if len(self.loaded) > self.max_loaded_models:
            raise ValueError(f"{len(self.loaded)} loaded models exceed max_loaded_models")
        return self


SPEC_KEYS = {
    "name": "name",
    "host": "host",
    "port": "port",
    "models": "models",
    "loaded": "loaded",
    "tps": "tokens_per_second",
    "load": "load_seconds",
    "parallel": "parallel",
    "queue": "max_queue",
    "max_loaded": "max_loaded_models",
    "ctx": "context_length",
}


def parse_server_spec(text: str) -> SimServerSpec:
    """`name=mac-1,port=11501,models=a:1b+b:7b,loaded=a:1b,tps=40,load=2.5,...` → a spec."""
    values: dict[str, Any] = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        key, sep, value = (item.strip() for item in part.partition("="))
        if not sep or not key:
            raise ValueError(f"server spec {text!r}: {part!r} is not key=value")
        if key not in SPEC_KEYS:
            raise ValueError(
                f"server spec {text!r}: unknown key {key!r} (keys: {', '.join(SPEC_KEYS)})"
            )
        if SPEC_KEYS[key] in values:
            raise ValueError(f"server spec {text!r}: {key!r} given twice")
        is_list = key in ("models", "loaded")
        values[SPEC_KEYS[key]] = [name for name in value.split("+") if name] if is_list else value
    for required in ("name", "models"):
        if not values.get(required):
            raise ValueError(f"server spec {text!r}: {required}= is required")
    try:
        return SimServerSpec.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(loc) for loc in error['loc']) or 'spec'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"server spec {text!r}: {problems}") from None


def canonical_model(name: str) -> str:
    """Ollama's name rule: a model without a tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


# Fake but well-formed model metadata --------------------------------------------------------


def _digest(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()


def _parameter_billions(model: str) -> float:
    found = re.search(r":(\d+(?:\.\d+)?)b\b", model.lower())
    return float(found.group(1)) if found else 7.0


def _model_size(model: str) -> int:
    # About 0.6 bytes per parameter at Q4_K_M, plus a name-derived spread so sizes differ.
    return int(_parameter_billions(model) * 0.6e9) + int(_digest(model)[:6], 16)


def _details(model: str) -> dict[str, Any]:
    found = re.match(r"[a-z]+", model.rsplit("/", 1)[-1].lower())
    family = found.group(0) if found else "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": f"{_parameter_billions(model):g}B",
        "quantization_level": "Q4_K_M",
    }


def _rfc3339(epoch: float) -> str:
    if math.isinf(epoch):  # keep_alive < 0: Ollama reports its far-future maximum.
        return "2318-01-01T00:00:00Z"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Errors and request parsing --------------------------------------------------------------------


class ApiError(Exception):
    """An answer with an HTTP error status; each API shapes the body its own way."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _default_error(status: int, model: str) -> str:
    """What Ollama says for each status, so clients that read the text classify it right."""
    return {
        400: CONTEXT_MESSAGE,
        404: f'model "{model}" not found, try pulling it first',
        503: BUSY_MESSAGE,
    }.get(status, RUNNER_DIED_MESSAGE)


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _validated(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(loc) for loc in error["loc"])
        raise ApiError(400, f"invalid request: {where}: {error['msg']}") from None


def _int_option(options: dict[str, Any], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    raise ApiError(400, f'option "{name}" must be of type integer')


def _float_option(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ApiError(400, f'option "{name}" must be of type number')


def _stop_option(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item for item in value if item]
    raise ApiError(400, 'option "stop" must be a string or a list of strings')


def keep_alive_seconds(value: float | str | None) -> float:
    """Ollama's keep_alive: seconds or a Go duration ("5m", "1h30m"); negative = forever."""
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        digits = text.lstrip("+-")
        parts = DURATION_PART.findall(digits)
        if re.fullmatch(r"\d+(\.\d+)?", digits):
            seconds = float(digits)
        elif parts and "".join(number + unit for number, unit in parts) == digits:
            seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
        else:
            raise ApiError(400, f'time: invalid duration "{value}"')
        seconds *= sign
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise ApiError(400, "keep_alive must be a number or a duration")
    # Negative means forever; so does anything past Go's longest duration (about 292 years).
    return math.inf if seconds < 0 or seconds > MAX_DURATION_S else seconds


class _Turn(BaseModel):
    role: str
    content: str | None = None


class _OllamaBody(BaseModel):
    model: str = ""
    stream: bool = True
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class _ChatBody(_OllamaBody):
    messages: list[_Turn] | None = None


class _GenerateBody(_OllamaBody):
    prompt: str | None = None
    system: str | None = None


class _OpenAITurn(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class _OpenAIBody(BaseModel):
    model: str = ""
    messages: list[_OpenAITurn] | None = None
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream_options: dict[str, Any] | None = None


@dataclass
class Ask:
    """One generation request, whichever API it came through."""

    model: str
    turns: list[tuple[str, str]]  # (role, content), the system prompt included
    load_only: bool  # no messages, or an empty prompt: Ollama just loads the model
    stream: bool
    num_predict: int
    num_ctx: int | None
    stop: list[str]
    keep_alive: float
    variant: str  # temperature and seed: they change the words, deterministically
    include_usage: bool = False

    @property
    def last_user(self) -> str:
        users = [content for role, content in self.turns if role == "user"]
        return users[-1] if users else (self.turns[-1][1] if self.turns else "")

    @property
    def system(self) -> str:
        return "\n".join(content for role, content in self.turns if role == "system")

    @property
    def prompt_tokens(self) -> int:
        return max(1, math.ceil(sum(len(content) for _, content in self.turns) / 4))


def _require_model(name: str) -> str:
    if not name.strip():
        raise ApiError(400, "model is required")
    return canonical_model(name.strip())


def _ollama_ask(body: _OllamaBody, turns: list[tuple[str, str]], load_only: bool) -> Ask:
    options = body.options or {}
    return Ask(
        model=_require_model(body.model),
        turns=turns,
        load_only=load_only,
        stream=body.stream,
        num_predict=_num_predict(_int_option(options, "num_predict")),
        num_ctx=_int_option(options, "num_ctx"),
        stop=_stop_option(options.get("stop")),
        keep_alive=keep_alive_seconds(body.keep_alive),
        variant=f"{_float_option(options.get('temperature'), 'temperature')}/"
        f"{_int_option(options, 'seed')}",
    )


def _num_predict(value: int | None) -> int:
    # Ollama's -1 (until done) and -2 (fill the context) become the default here.
    return DEFAULT_NUM_PREDICT if value is None or value < 0 else value


def chat_ask(body: dict[str, Any]) -> Ask:
    chat = _validated(_ChatBody, body)
    turns = [(turn.role, turn.content or "") for turn in chat.messages or []]
    return _ollama_ask(chat, turns, load_only=not turns)


def generate_ask(body: dict[str, Any]) -> Ask:
    generate = _validated(_GenerateBody, body)
    turns = [("system", generate.system)] if generate.system else []
    if generate.prompt:
        turns.append(("user", generate.prompt))
    return _ollama_ask(generate, turns, load_only=not generate.prompt)


def openai_ask(body: dict[str, Any]) -> Ask:
    openai = _validated(_OpenAIBody, body)
    max_tokens = (
        openai.max_tokens if openai.max_tokens is not None else openai.max_completion_tokens
    )
    turns = [(turn.role, turn.text()) for turn in openai.messages or []]
    return Ask(
        model=_require_model(openai.model),
        turns=turns,
        load_only=not turns,
        stream=openai.stream,
        num_predict=_num_predict(max_tokens),
        num_ctx=None,
        stop=_stop_option(openai.stop),
        keep_alive=DEFAULT_KEEP_ALIVE_S,
        variant=f"{_float_option(openai.temperature, 'temperature')}/{openai.seed}",
        include_usage=bool((openai.stream_options or {}).get("include_usage")),
    )


# What the model says ---------------------------------------------------------------------------


@dataclass
class Reply:
    tokens: list[str]
    done_reason: str

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _cut_at_stop(text: str, stop: list[str]) -> str | None:
    cuts = [text.index(sequence) for sequence in stop if sequence in text]
    return text[: min(cuts)] if cuts else None


def compose_reply(ask: Ask) -> Reply:
    """The deterministic reply: a directive's text, a score, or hashed vocabulary words."""
    said = SIM_SAY.search(ask.last_user)
    if said:
        text, done_reason = said.group(1).strip(), "stop"
    elif "score" in ask.system.lower():
        seed = hashlib.sha256(ask.last_user.encode()).digest()
        text, done_reason = f"Score: {int.from_bytes(seed[:4], 'big') % 100 + 1}", "stop"
    else:
        seed = hashlib.sha256(f"{ask.model}\0{ask.variant}\0{ask.last_user}".encode()).digest()
        rng = random.Random(int.from_bytes(seed[:8], "big"))
        text = " ".join(rng.choice(VOCABULARY) for _ in range(ask.num_predict))
        done_reason = "length"
    cut = _cut_at_stop(text, ask.stop)
    if cut is not None:
        text, done_reason = cut.rstrip(), "stop"
    return Reply(TOKEN.findall(text), done_reason)


# How each API shapes an answer -------------------------------------------------------------


@dataclass
class Timings:
    load_s: float
    eval_s: float
    total_s: float
    prompt_tokens: int
    eval_tokens: int

    def ollama_fields(self) -> dict[str, int]:
        return {
            "total_duration": int(self.total_s * NS),
            "load_duration": int(self.load_s * NS),
            "prompt_eval_count": self.prompt_tokens,
            # Prompt evaluation is not simulated: 1 µs a token keeps computed rates finite.
            "prompt_eval_duration": self.prompt_tokens * 1_000,
            "eval_count": self.eval_tokens,
            "eval_duration": int(self.eval_s * NS),
        }


class Wire:
    """Ollama's native chat shape; subclasses reshape it for /api/generate and /v1."""

    media_type = "application/x-ndjson"

    def __init__(self, ask: Ask) -> None:
        self.ask = ask

    def piece(self, content: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": content}}

    def head(self) -> dict[str, Any]:
        return {"model": self.ask.model, "created_at": _rfc3339(time.time())}

    def chunk(self, token: str) -> dict[str, Any]:
        return {**self.head(), **self.piece(token), "done": False}

    def whole(self, reply: Reply, timings: Timings, content: str | None = None) -> dict[str, Any]:
        text = reply.text if content is None else content
        return {
            **self.head(),
            **self.piece(text),
            "done_reason": reply.done_reason,
            "done": True,
            **timings.ollama_fields(),
        }

    def final(self, reply: Reply, timings: Timings) -> list[dict[str, Any]]:
        return [self.whole(reply, timings, content="")]

    def encode(self, body: dict[str, Any]) -> bytes:
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    def tail(self) -> bytes:
        return b""

    def load_answer(self, done_reason: str) -> dict[str, Any]:
        return {**self.head(), **self.piece(""), "done_reason": done_reason, "done": True}

    @classmethod
    def error(cls, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)


class GenerateWire(Wire):
    def piece(self, content: str) -> dict[str, Any]:
        return {"response": content}


class OpenAIWire(Wire):
    media_type = "text/event-stream"

    def __init__(self, ask: Ask) -> None:
        super().__init__(ask)
        self.created = int(time.time())
        self.id = f"chatcmpl-{uuid.uuid4().hex[:12]}"

    def head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "model": self.ask.model,
            "system_fingerprint": "fp_ollama",
        }

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {**self.head(), "object": "chat.completion.chunk", "choices": [choice]}

    def chunk(self, token: str) -> dict[str, Any]:
        return self._choice({"role": "assistant", "content": token}, None)

    def _usage(self, timings: Timings) -> dict[str, int]:
        prompt, completion = timings.prompt_tokens, timings.eval_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def whole(self, reply: Reply, timings: Timings, content: str | None = None) -> dict[str, Any]:
        message = {"role": "assistant", "content": reply.text}
        choice = {"index": 0, "message": message, "finish_reason": reply.done_reason}
        return {
            **self.head(),
            "object": "chat.completion",
            "choices": [choice],
            "usage": self._usage(timings),
        }

    def final(self, reply: Reply, timings: Timings) -> list[dict[str, Any]]:
        chunks = [self._choice({"role": "assistant", "content": ""}, reply.done_reason)]
        if self.ask.include_usage:
            usage = {**self.head(), "object": "chat.completion.chunk", "choices": []}
            chunks.append({**usage, "usage": self._usage(timings)})
        return chunks

    def encode(self, body: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def tail(self) -> bytes:
        return b"data: [DONE]\n\n"

    def load_answer(self, done_reason: str) -> dict[str, Any]:
        return self.whole(Reply([], "stop"), Timings(0.0, 0.0, 0.0, 0, 0))

    @classmethod
    def error(cls, exc: ApiError) -> JSONResponse:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(exc.status, "api_error")
        error = {"message": exc.message, "type": kind, "param": None, "code": None}
        return JSONResponse({"error": error}, status_code=exc.status)


class ReleasingStream(StreamingResponse):
    """A streamed answer that gives its slot back however the stream ends (even unstarted)."""

    def __init__(
        self, content: AsyncIterator[bytes], media_type: str, release: Callable[[], None]
    ) -> None:
        super().__init__(content, media_type=media_type)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# The server's state ------------------------------------------------------------------------


@dataclass
class ModelStats:
    requests: int = 0
    completed: int = 0
    eval_tokens: int = 0
    cold_loads: int = 0


@dataclass
class SimStats:
    requests: int = 0
    completed: int = 0
    max_active: int = 0
    refused_full: int = 0
    cold_loads: int = 0
    failures_injected: int = 0
    busy_seconds: float = 0.0
    per_model: dict[str, ModelStats] = field(default_factory=dict)

    def model(self, name: str) -> ModelStats:
        return self.per_model.setdefault(name, ModelStats())


class FaultsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_next: int | None = Field(default=None, ge=0)
    status: int | None = Field(default=None, ge=400, le=599)
    error: str | None = None
    hang_next: int | None = Field(default=None, ge=0)
    clear: bool = False


@dataclass
class Faults:
    fail_next: int = 0
    status: int = 500
    error: str | None = None
    hang_next: int = 0


class LoadedBody(BaseModel):
    models: list[str]


class SimulatedOllama:
    """One simulated server: installed and loaded models (LRU, expiry), slots, stats, faults."""

    def __init__(self, spec: SimServerSpec) -> None:
        self.spec = spec
        self.started_at = time.time()
        self.installed: dict[str, float] = dict.fromkeys(spec.models, self.started_at)
        # Loaded models, least recently used first, with their expiry (epoch seconds).
        self.loaded: OrderedDict[str, float] = OrderedDict(
            (name, self.started_at + DEFAULT_KEEP_ALIVE_S) for name in spec.loaded
        )
        self.in_use: Counter[str] = Counter()
        self.active = 0
        self.stats = SimStats()
        self.faults = Faults()
        self._loads: dict[str, tuple[asyncio.Task[None], float]] = {}  # model → (load, ready at)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.app = build_app(self)

    # Slots: at most `parallel` generations; `max_queue` more wait in FIFO order.

    async def acquire_slot(self) -> None:
        if self.active < self.spec.parallel and not self._waiters:
            self._take_slot()
            return
        if len(self._waiters) >= self.spec.max_queue:
            self.stats.refused_full += 1
            raise ApiError(503, BUSY_MESSAGE)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_slot()  # it was handed to us as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def _take_slot(self) -> None:
        self.active += 1
        self.stats.max_active = max(self.stats.max_active, self.active)

    def release_slot(self) -> None:
        self.active -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take_slot()
                waiter.set_result(None)
                return

    # Models: loading shares one load per model and evicts the least recently used.

    def prune_expired(self) -> None:
        now = time.time()
        for name, expires_at in list(self.loaded.items()):
            if expires_at <= now and not self.in_use[name]:
                del self.loaded[name]
                log.info("server=%s model=%s expired", self.spec.name, name)

    def set_loaded(self, models: list[str], keep_alive: float = DEFAULT_KEEP_ALIVE_S) -> None:
        self.loaded.clear()
        for name in models:
            self.touch(name, keep_alive)

    def touch(self, model: str, keep_alive: float) -> None:
        self.loaded[model] = time.time() + keep_alive
        self.loaded.move_to_end(model)
        while len(self.loaded) > self.spec.max_loaded_models:
            evicted = next(name for name in self.loaded if name != model)
            del self.loaded[evicted]
            log.info("server=%s model=%s evicted for %s", self.spec.name, evicted, model)

    async def _load(self, model: str) -> None:
        try:
            await asyncio.sleep(self.spec.load_seconds)
            self.touch(model, DEFAULT_KEEP_ALIVE_S)  # loaded even if every waiting client left
        finally:
            del self._loads[model]

    async def ensure_loaded(self, model: str, keep_alive: float) -> float:
        """Load `model` unless loaded; returns the simulated seconds this request waited for it."""
        self.prune_expired()
        if model in self.loaded:
            self.touch(model, keep_alive)
            return 0.0
        if model not in self._loads:
            self.stats.cold_loads += 1
            self.stats.model(model).cold_loads += 1
            log.info(
                "server=%s model=%s cold load %.1fs", self.spec.name, model, self.spec.load_seconds
            )
            load = asyncio.create_task(self._load(model))
            self._loads[model] = (load, time.monotonic() + self.spec.load_seconds)
        load, ready_at = self._loads[model]
        waited = max(0.0, ready_at - time.monotonic())
        await asyncio.shield(load)  # one client giving up does not cancel the others' load
        self.touch(model, keep_alive)
        return waited

    # Faults and directives.

    def injected_error(self, ask: Ask) -> ApiError | None:
        directive = SIM_ERROR.search(ask.last_user)
        if directive and 400 <= int(directive.group(1)) <= 599:
            status = int(directive.group(1))
            self.stats.failures_injected += 1
            return ApiError(status, _default_error(status, ask.model))
        if self.faults.fail_next > 0:
            self.faults.fail_next -= 1
            self.stats.failures_injected += 1
            status = self.faults.status
            return ApiError(status, self.faults.error or _default_error(status, ask.model))
        return None

    async def hang_if_told(self, request: Request) -> None:
        if self.faults.hang_next <= 0:
            return
        self.faults.hang_next -= 1
        self.stats.failures_injected += 1
        log.warning("server=%s hanging a request until its client gives up", self.spec.name)
        # The body is read, so the next message uvicorn delivers is the client's disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        raise ApiError(500, "client disconnected")

    # One generation request, end to end.

    async def generate(self, ask: Ask, wire: Wire, request: Request) -> Response:
        started = time.monotonic()
        self.stats.requests += 1
        if ask.model not in self.installed:
            raise ApiError(404, _default_error(404, ask.model))
        self.stats.model(ask.model).requests += 1
        if ask.load_only:
            return await self._load_only(ask, wire)
        injected = self.injected_error(ask)
        if injected is not None:
            log.warning(
                "server=%s injected HTTP %d: %s", self.spec.name, injected.status, injected.message
            )
            raise injected
        await self.hang_if_told(request)
        # A larger num_ctx than the model was trained for is clamped to it, as Ollama does.
        num_ctx = min(ask.num_ctx or self.spec.context_length, self.spec.context_length)
        if ask.num_ctx is not None and ask.num_ctx <= 0:
            num_ctx = self.spec.context_length
        if ask.prompt_tokens + ask.num_predict > num_ctx:
            raise ApiError(400, CONTEXT_MESSAGE)
        reply = compose_reply(ask)
        await self.acquire_slot()
        holding = _SlotHold(self, ask.model)
        self.in_use[ask.model] += 1
        try:
            load_s = await self.ensure_loaded(ask.model, ask.keep_alive)
        except BaseException:
            holding.release(completed=False)
            raise
        tps = self.spec.tokens_per_second
        # tps 0 means instant; report 1 µs a token so rates computed from it stay finite.
        eval_s = len(reply.tokens) / tps if tps > 0 else len(reply.tokens) * 1e-6

        def timings() -> Timings:
            total_s = max(time.monotonic() - started, load_s + eval_s)
            return Timings(load_s, eval_s, total_s, ask.prompt_tokens, len(reply.tokens))

        if ask.stream:
            body = self._stream(reply, wire, timings, holding)
            return ReleasingStream(body, wire.media_type, lambda: holding.release(completed=False))
        try:
            if tps > 0:
                await asyncio.sleep(eval_s)
        except BaseException:
            holding.release(completed=False)
            raise
        holding.release(completed=True, eval_tokens=len(reply.tokens))
        return JSONResponse(wire.whole(reply, timings()))

    async def _stream(
        self, reply: Reply, wire: Wire, timings: Callable[[], Timings], holding: _SlotHold
    ) -> AsyncIterator[bytes]:
        tps = self.spec.tokens_per_second
        began = time.monotonic()
        for index, token in enumerate(reply.tokens):
            if tps > 0:  # spread generation over the chunks, without drifting
                delay = began + (index + 1) / tps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield wire.encode(wire.chunk(token))
        holding.release(completed=True, eval_tokens=len(reply.tokens))
        for body in wire.final(reply, timings()):
            yield wire.encode(body)
        yield wire.tail()

    async def _load_only(self, ask: Ask, wire: Wire) -> Response:
        """An empty prompt loads the model (or unloads it with keep_alive 0), as Ollama does."""
        if ask.keep_alive == 0:
            self.loaded.pop(ask.model, None)
            return JSONResponse(wire.load_answer("unload"))
        await self.ensure_loaded(ask.model, ask.keep_alive)
        return JSONResponse(wire.load_answer("load"))

    # Reports.

    def tags(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "model": name,
                "modified_at": _rfc3339(installed_at),
                "size": _model_size(name),
                "digest": _digest(name),
                "details": _details(name),
            }
            for name, installed_at in self.installed.items()
        ]

    def processes(self) -> list[dict[str, Any]]:
        self.prune_expired()
        return [
            {
                "name": name,
                "model": name,
                "size": _model_size(name),
                "digest": _digest(name),
                "details": _details(name),
                "expires_at": _rfc3339(expires_at),
                "size_vram": _model_size(name),
                "context_length": self.spec.context_length,
            }
            for name, expires_at in reversed(self.loaded.items())
        ]

    def stats_report(self) -> dict[str, Any]:
        report = asdict(self.stats)
        report["active"] = self.active
        report["queued"] = len(self._waiters)
        report["loaded"] = list(self.loaded)
        return report

    def pull(self, model: str) -> list[dict[str, Any]]:
        size, digest = _model_size(model), _digest(model)
        self.installed.setdefault(model, time.time())
        return [
            {"status": "pulling manifest"},
            {
                "status": f"pulling {digest[:12]}",
                "digest": f"sha256:{digest}",
                "total": size,
                "completed": size,
            },
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]


class _SlotHold:
    """A held slot: released once, recording busy time and completion in the stats."""

    def __init__(self, sim: SimulatedOllama, model: str) -> None:
        self.sim = sim
        self.model = model
        self.since = time.monotonic()
        self.released = False

    def release(self, *, completed: bool, eval_tokens: int = 0) -> None:
        if self.released:
            return
        self.released = True
        sim = self.sim
        sim.release_slot()
        sim.in_use[self.model] -= 1
        sim.stats.busy_seconds += time.monotonic() - self.since
        if completed:
            sim.stats.completed += 1
            model_stats = sim.stats.model(self.model)
            model_stats.completed += 1
            model_stats.eval_tokens += eval_tokens


# Routes ----------------------------------------------------------------------------------------


def build_app(sim: SimulatedOllama) -> Starlette:
    """The simulated server's ASGI app; every bad input answers 4xx, never 500."""

    def generation(
        parse: Callable[[dict[str, Any]], Ask], wire_type: type[Wire]
    ) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                ask = parse(await _json_object(request))
                return await sim.generate(ask, wire_type(ask), request)
            except ApiError as exc:
                return wire_type.error(exc)

        return endpoint

    def plain(
        handler: Callable[[Request], Coroutine[Any, Any, Response]],
    ) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)

        return endpoint

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": sim.tags()})

    async def ps(request: Request) -> Response:
        return JSONResponse({"models": sim.processes()})

    async def pull(request: Request) -> Response:
        body = await _json_object(request)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "model is required")
        statuses = sim.pull(canonical_model(name.strip()))
        if body.get("stream", True) is False:
            return JSONResponse(statuses[-1])
        lines = b"".join(json.dumps(status).encode() + b"\n" for status in statuses)
        return Response(lines, media_type="application/x-ndjson")

    async def show(request: Request) -> Response:
        body = await _json_object(request)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "model is required")
        model = canonical_model(name.strip())
        if model not in sim.installed:
            raise ApiError(404, f"model '{model}' not found")
        details = _details(model)
        return JSONResponse(
            {
                "license": "",
                "modelfile": f"FROM {model}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {
                    "general.architecture": details["family"],
                    "general.parameter_count": int(_parameter_billions(model) * 1e9),
                    f"{details['family']}.context_length": MAX_NUM_CTX,
                },
                "capabilities": ["completion"],
                "modified_at": _rfc3339(sim.installed[model]),
            }
        )

    async def openai_models(request: Request) -> Response:
        models = [
            {"id": name, "object": "model", "created": int(installed_at), "owned_by": "library"}
            for name, installed_at in sim.installed.items()
        ]
        return JSONResponse({"object": "list", "data": models})

    async def sim_stats(request: Request) -> Response:
        return JSONResponse(sim.stats_report())

    async def sim_faults(request: Request) -> Response:
        change = _validated(FaultsBody, await _json_object(request))
        if change.clear:
            sim.faults = Faults()
        if change.fail_next is not None:
            sim.faults.fail_next = change.fail_next
            sim.faults.status = change.status or 500
            sim.faults.error = change.error
        if change.hang_next is not None:
            sim.faults.hang_next = change.hang_next
        return JSONResponse(asdict(sim.faults))

    async def sim_reset(request: Request) -> Response:
        sim.stats = SimStats(max_active=sim.active)
        sim.faults = Faults()
        return JSONResponse(sim.stats_report())

    async def sim_loaded(request: Request) -> Response:
        wanted = [
            canonical_model(name)
            for name in _validated(LoadedBody, await _json_object(request)).models
        ]
        missing = [name for name in wanted if name not in sim.installed]
        if missing:
            raise ApiError(400, f"not installed: {', '.join(missing)}")
        if len(wanted) > sim.spec.max_loaded_models:
            raise ApiError(400, f"more than max_loaded_models={sim.spec.max_loaded_models}")
        sim.set_loaded(wanted)
        return JSONResponse({"models": sim.processes()})

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/chat", generation(chat_ask, Wire), methods=["POST"]),
        Route("/api/generate", generation(generate_ask, GenerateWire), methods=["POST"]),
        Route("/api/pull", plain(pull), methods=["POST"]),
        Route("/api/show", plain(show), methods=["POST"]),
        Route("/v1/models", openai_models, methods=["GET"]),
        Route("/v1/chat/completions", generation(openai_ask, OpenAIWire), methods=["POST"]),
        Route("/sim/stats", sim_stats, methods=["GET"]),
        Route("/sim/faults", plain(sim_faults), methods=["POST"]),
        Route("/sim/reset", sim_reset, methods=["POST"]),
        Route("/sim/loaded", plain(sim_loaded), methods=["POST"]),
    ]
    return Starlette(routes=routes)


# Serving ---------------------------------------------------------------------------------------


def _with_port(spec: SimServerSpec) -> SimServerSpec:
    return spec if spec.port else spec.model_copy(update={"port": free_port(spec.host)})


def _servers(specs: list[SimServerSpec]) -> tuple[dict[str, SimulatedOllama], list[uvicorn.Server]]:
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"simulated server names must be unique: {names}")
    sims = {spec.name: SimulatedOllama(spec) for spec in specs}
    servers = [uvicorn_server(sims[spec.name].app, spec.host, spec.port) for spec in specs]
    return sims, servers


async def serve(specs: list[SimServerSpec]) -> None:
    """Serve every simulated server on this event loop until cancelled (then shut down cleanly)."""
    specs = [_with_port(spec) for spec in specs]
    _, servers = _servers(specs)
    for spec in specs:
        log.info("server=%s serving on http://%s:%d", spec.name, spec.host, spec.port)
    running = asyncio.ensure_future(serve_all(servers))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        for server in servers:
            server.should_exit = True
        await running
        raise


class SimulatorFleet:
    """Simulated servers served from one background thread and event loop, for tests."""

    def __init__(self, specs: list[SimServerSpec]) -> None:
        self.specs = [_with_port(spec) for spec in specs]
        self.sims, self._servers = _servers(self.specs)
        self.urls = {spec.name: f"http://{spec.host}:{spec.port}" for spec in self.specs}
        self._thread = threading.Thread(target=self._run, name="simulators", daemon=True)

    def _run(self) -> None:
        asyncio.run(serve_all(self._servers))

    def start(self, timeout: float = 10.0) -> SimulatorFleet:
        self._thread.start()
        with contextlib.suppress(TimeoutError):
            wait_for(
                lambda: (
                    all(server.started for server in self._servers) or not self._thread.is_alive()
                ),
                timeout,
                what="simulated servers to start",
            )
        if not all(server.started for server in self._servers):
            self.stop()
            raise RuntimeError(f"simulated servers did not start: {self.urls}")
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> SimulatorFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
