"""Request bodies of the chat, generate and OpenAI APIs, and how each becomes an `Ask`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from standins.simulator.errors import ApiError
from standins.simulator.models import canonical_model
from standins.simulator.times import DEFAULT_KEEP_ALIVE_S, keep_alive_seconds

M = TypeVar("M", bound=BaseModel)

DEFAULT_NUM_PREDICT = 128


async def json_object(request: Request) -> dict[str, Any]:
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


def validated(model: type[M], body: dict[str, Any]) -> M:
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
    chat = validated(_ChatBody, body)
    turns = [(turn.role, turn.content or "") for turn in chat.messages or []]
    return _ollama_ask(chat, turns, load_only=not turns)


def generate_ask(body: dict[str, Any]) -> Ask:
    generate = validated(_GenerateBody, body)
    turns = [("system", generate.system)] if generate.system else []
    if generate.prompt:
        turns.append(("user", generate.prompt))
    return _ollama_ask(generate, turns, load_only=not generate.prompt)


def openai_ask(body: dict[str, Any]) -> Ask:
    openai = validated(_OpenAIBody, body)
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


def llamacpp_ask(body: dict[str, Any], loaded_model: str) -> Ask:
    """A llama-server chat request. Its `model` is not checked against anything: llama-server
    answers with the one model it has, and names the request's `model` (as given, else its
    own) in the answer."""
    chat = validated(_OpenAIBody, body)
    if not chat.messages:
        raise ApiError(400, "'messages' is required and must not be empty")
    max_tokens = chat.max_tokens if chat.max_tokens is not None else chat.max_completion_tokens
    return Ask(
        model=chat.model or loaded_model,
        turns=[(turn.role, turn.text()) for turn in chat.messages],
        load_only=False,
        stream=chat.stream,
        num_predict=_num_predict(max_tokens),
        num_ctx=None,
        stop=_stop_option(chat.stop),
        keep_alive=DEFAULT_KEEP_ALIVE_S,
        variant=f"{_float_option(chat.temperature, 'temperature')}/{chat.seed}",
        include_usage=bool((chat.stream_options or {}).get("include_usage")),
    )
