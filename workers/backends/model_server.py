"""One OpenAI-compatible model server (llama-server, or Ollama's and LM Studio's `/v1`): a chat
call streamed as server-sent events, its health, the model it serves, its slots and context;
its errors mapped to ours once."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from workers.backends.base import ERROR_BODY_BYTES, MAX_REPLY_BYTES, read_capped, transport_error
from workers.contract.model_names import served_model_name
from workers.contract.protocol import ChatOutcome, ChatRequest, ChatTimings
from workers.errors import (
    BackendError,
    BadRequest,
    ContextOverflow,
    GenerationTimeout,
    ModelLoading,
    ModelMissing,
    ServerBusy,
    ServerError,
    ServerHung,
)

PROBE_TIMEOUT_S = 5.0  # health, models, props: quick answers, even from a busy server
LOAD_POLL_S = 0.25  # how often a server loading its model is asked whether it is done
BACKSTOP_S = 5.0  # the socket's own read timeout, past the deadlines the watchdog keeps
# Statuses of an endpoint the server does not have (an OpenAI-compatible server that is not
# llama-server, or one started without its slots endpoint).
NOT_OFFERED = frozenset({404, 405, 501})
CONTEXT_SIZE_ERROR = "exceed_context_size_error"  # llama-server's type for a prompt too long


@dataclass(frozen=True)
class ServerState:
    """What one model server says of itself at one moment."""

    ready: bool  # answers chat requests now; False while it loads its model
    models: tuple[str, ...] = ()  # what it serves, by the names the pool's convention gives
    slots: int | None = None  # parallel slots (`total_slots`), where it tells
    context: int | None = None  # tokens of context per slot (`n_ctx`), where it tells


class ModelServer:
    """Talks to one OpenAI-compatible server through an httpx client it may share with others
    (a pool's servers share one). `name` is the server for people, where its URL is not (an
    SSH tunnel's local port): the address as written."""

    def __init__(
        self,
        base_url: str,
        http: httpx.Client,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 300.0,
        name: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self._http = http
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    def chat(
        self,
        request: ChatRequest,
        *,
        first_token_s: float | None = None,
        stall_s: float | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> ChatOutcome:
        """Run one chat request, streamed; raises a BackendError subclass when there is no
        answer. llama-server sends its headers before the first token, so the first-token
        allowance runs until the first chunk with text, not the headers; from then on
        `stall_s` without text is a hang. A dropped connection is ServerUnavailable: a pool's
        eviction ends a server while it answers."""
        first_token_s = self._read_timeout if first_token_s is None else first_token_s
        stall_s = self._read_timeout if stall_s is None else stall_s
        started = time.monotonic()
        body = {
            **request.openai_body(),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        timeout = httpx.Timeout(first_token_s, connect=self._connect_timeout)
        reader = _SseReader(started, max_reply_bytes)
        watchdog: _Watchdog | None = None
        url = f"{self.base_url}/v1/chat/completions"
        try:
            with self._http.stream("POST", url, json=body, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise http_error(response.status_code, read_capped(response))
                # From the headers on, the socket's timeout is a backstop; the watchdog keeps
                # the first token's deadline and then each stall's.
                response.request.extensions["timeout"]["read"] = (
                    max(first_token_s, stall_s) + BACKSTOP_S
                )
                dog = watchdog = _Watchdog(_socket_of(response), started + first_token_s)
                with dog:
                    reader.read(response, lambda: dog.push(stall_s))
        except (httpx.HTTPError, BackendError) as exc:
            cut = watchdog is not None and watchdog.fired
            if cut or isinstance(exc, httpx.ReadTimeout):
                raise self._late(first_token_s, stall_s, reader) from exc
            if isinstance(exc, BackendError):
                raise
            raise transport_error(self.name, exc) from exc
        if watchdog is not None and watchdog.fired:  # cut as the stream was ending anyway
            raise self._late(first_token_s, stall_s, reader)
        return ChatOutcome(ok=True, text=reader.text(), timings=reader.timings())

    def _late(self, first_token_s: float, stall_s: float, reader: _SseReader) -> BackendError:
        if reader.first_at:
            flowing = reader.last_at - reader.first_at
            why = f"tokens stopped for {stall_s:g}s after {flowing:.1f}s of them"
            return ServerHung(f"{self.name}: {why}")
        if first_token_s < self._read_timeout:  # the model was loaded: nothing to wait for
            return ServerHung(f"{self.name}: no first token in {first_token_s:.1f}s")
        return GenerationTimeout(f"{self.name}: no answer in {first_token_s:g}s")

    def health(self) -> bool:
        """True when the server answers chat requests, False while it loads its model (HTTP
        503). A server without `/health` is taken to answer."""
        response = self._get("/health")
        if response.status_code == 503:
            return False
        if response.status_code < 400 or response.status_code in NOT_OFFERED:
            return True
        raise http_error(response.status_code, response.content[:ERROR_BODY_BYTES])

    def wait_ready(self, deadline: float) -> bool:
        """Wait for the server to finish loading its model, until `deadline` (monotonic);
        False if it had not by then."""
        while not self.health():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(LOAD_POLL_S, left))
        return True

    def chat_when_loaded(
        self,
        request: ChatRequest,
        *,
        first_token_s: float | None = None,
        stall_s: float | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> ChatOutcome:
        """`chat`; a server still loading its model (HTTP 503) is waited for within the first
        token's allowance, as Ollama makes a request wait for its model's load. The wait is
        the attempt's load time."""
        first_token_s = self._read_timeout if first_token_s is None else first_token_s
        started = time.monotonic()
        try:
            return self.chat(
                request,
                first_token_s=first_token_s,
                stall_s=stall_s,
                max_reply_bytes=max_reply_bytes,
            )
        except ModelLoading as exc:
            if not self.wait_ready(started + first_token_s):
                raise GenerationTimeout(
                    f"{self.name}: still loading its model after {first_token_s:g}s"
                ) from exc
        loaded_ms = (time.monotonic() - started) * 1000
        outcome = self.chat(
            request, first_token_s=first_token_s, stall_s=stall_s, max_reply_bytes=max_reply_bytes
        )
        timings = outcome.timings.model_copy(
            update={"load_ms": loaded_ms, "wall_ms": outcome.timings.wall_ms + loaded_ms}
        )
        return outcome.model_copy(update={"timings": timings})

    def served_models(self) -> list[str]:
        """The models it serves (`/v1/models`), named as a pool names them: llama-server
        lists its one model by its alias, or by its path."""
        answer = self._json("/v1/models")
        entries = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(entries, list):
            return []
        names = (entry.get("id") for entry in entries if isinstance(entry, dict))
        return sorted({served_model_name(name) for name in names if isinstance(name, str)})

    def model_path_name(self) -> str | None:
        """The model llama-server loaded, by its `/props` path; None where it does not tell."""
        props = self._json("/props")
        path = props.get("model_path") if isinstance(props, dict) else None
        return served_model_name(path) if isinstance(path, str) and path else None

    def state(self) -> ServerState:
        """Health, what it serves, slots and context; raises when it does not answer."""
        if not self.health():  # newer llama-servers list their model while loading it
            return ServerState(ready=False, models=tuple(self.served_models()))
        models = self.served_models()
        props = self._json("/props")
        slots = context = None
        if isinstance(props, dict):
            slots = _positive(props.get("total_slots"))
            settings = props.get("default_generation_settings")
            if isinstance(settings, dict):
                params = settings.get("params")
                context = _positive(settings.get("n_ctx")) or (
                    _positive(params.get("n_ctx")) if isinstance(params, dict) else None
                )
        if slots is None or context is None:
            listed = self._json("/slots")
            if isinstance(listed, list) and listed:
                slots = slots or len(listed)
                first = listed[0]
                context = context or (
                    _positive(first.get("n_ctx")) if isinstance(first, dict) else None
                )
        return ServerState(ready=True, models=tuple(models), slots=slots, context=context)

    def _get(self, path: str) -> httpx.Response:
        timeout = httpx.Timeout(PROBE_TIMEOUT_S, connect=self._connect_timeout)
        try:
            return self._http.get(f"{self.base_url}{path}", timeout=timeout)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc

    def _json(self, path: str) -> Any:
        """The JSON an endpoint answers; None when the server does not offer it or is still
        loading."""
        response = self._get(path)
        if response.status_code in NOT_OFFERED or response.status_code == 503:
            return None
        return json_answer(response, f"{self.name}{path}")


class _SseReader:
    """A streamed chat completion as it arrives: the reply's chunks, and the timings
    llama-server adds to its last chunk (`timings`) or any server's `usage`."""

    def __init__(self, started: float, max_reply_bytes: int) -> None:
        self.started = started
        self.max_reply_bytes = max_reply_bytes
        self.parts: list[str] = []
        self.first_at = 0.0  # when the first text came (monotonic)
        self.last_at = 0.0
        self.server_timings: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}

    def read(self, response: httpx.Response, on_text: Callable[[], None]) -> None:
        if response.headers.get("content-type", "").startswith("application/json"):
            self._whole(response)  # a server that does not stream answers at once
            return
        size = 0
        finished = False
        for line in response.iter_lines():
            size += len(line)
            if size > self.max_reply_bytes:
                raise ServerError(f"reply over the {self.max_reply_bytes}-byte cap: cut off")
            if not line.startswith("data:"):
                continue  # blank lines between events, comments, event names
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                return
            chunk = _json_object(payload)
            if "error" in chunk:  # llama-server reports a failure met mid-stream this way
                raise _error_from(chunk, 500)
            self._timing_fields(chunk)
            choices = chunk.get("choices")
            choice = choices[0] if isinstance(choices, list) and choices else None
            if not isinstance(choice, dict):
                continue  # the usage chunk, after the last choice
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                now = time.monotonic()
                self.first_at = self.first_at or now
                self.last_at = now
                self.parts.append(content)
                on_text()
            finished = finished or bool(choice.get("finish_reason"))
        if not finished:
            raise ServerError("stream ended before its last chunk")

    def _whole(self, response: httpx.Response) -> None:
        raw = read_capped(response, self.max_reply_bytes + 1)
        if len(raw) > self.max_reply_bytes:
            raise ServerError(f"reply over the {self.max_reply_bytes}-byte cap: cut off")
        answer = _json_object(raw.decode("utf-8", "replace"))
        self._timing_fields(answer)
        choices = answer.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ServerError("answer without choices[0].message.content")
        self.first_at = self.last_at = time.monotonic()
        self.parts.append(content)

    def _timing_fields(self, chunk: dict[str, Any]) -> None:
        timings, usage = chunk.get("timings"), chunk.get("usage")
        if isinstance(timings, dict):
            self.server_timings = timings
        if isinstance(usage, dict):
            self.usage = usage

    def text(self) -> str:
        return "".join(self.parts)

    def timings(self) -> ChatTimings:
        """llama-server's own timings where it gives them; else `usage`'s counts, timed
        here: the prompt until the first text, the reply from there to the last."""
        wall_ms = (time.monotonic() - self.started) * 1000
        told = self.server_timings
        if told:
            prompt_ms = _number(told.get("prompt_ms"))
            eval_ms = _number(told.get("predicted_ms"))
            return ChatTimings(
                wall_ms=wall_ms,
                total_ms=prompt_ms + eval_ms,
                prompt_eval_count=int(_number(told.get("prompt_n"))),
                prompt_eval_ms=prompt_ms,
                eval_count=int(_number(told.get("predicted_n"))),
                eval_ms=eval_ms,
            )
        prompt_ms = (self.first_at - self.started) * 1000 if self.first_at else 0.0
        eval_ms = (self.last_at - self.first_at) * 1000
        eval_count = int(_number(self.usage.get("completion_tokens"))) or len(self.parts)
        return ChatTimings(
            wall_ms=wall_ms,
            total_ms=prompt_ms + eval_ms,
            prompt_eval_count=int(_number(self.usage.get("prompt_tokens"))),
            prompt_eval_ms=prompt_ms,
            eval_count=eval_count,
            eval_ms=eval_ms,
        )


class _Watchdog:
    """Cuts a streamed answer whose next text is late. A socket's read timeout counts each
    read alone, and llama-server sends headers (and may send chunks without text) before its
    first token: so the deadline is kept here, and a late answer's socket is shut, which ends
    the read that waits on it. Without a socket (another transport) the read timeouts
    alone apply."""

    def __init__(self, sock: socket.socket | None, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._done = False
        self.fired = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="stream-deadline", daemon=True)

    def __enter__(self) -> _Watchdog:
        if self._sock is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._changed:
            self._done = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()

    def push(self, allowance_s: float) -> None:
        """Text came: the next must come within `allowance_s`."""
        with self._changed:
            deadline = time.monotonic() + allowance_s
            if deadline < self._deadline:  # the watch waits for the old one: wake it
                self._changed.notify()
            self._deadline = deadline

    def _run(self) -> None:
        with self._changed:
            while not self._done:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.fired = True
                    if self._sock is not None:
                        with contextlib.suppress(OSError):  # already closed by the server
                            self._sock.shutdown(socket.SHUT_RDWR)
                    return
                self._changed.wait(left)


def _socket_of(response: httpx.Response) -> socket.socket | None:
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None


def json_answer(response: httpx.Response, where: str) -> Any:
    """The JSON of a llama.cpp-kind server's answer (the server or the pool manager at `where`):
    an error answer as one of ours, an answer that is not JSON a ServerError."""
    if response.status_code >= 400:
        raise http_error(response.status_code, response.content[:ERROR_BODY_BYTES])
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(f"{where}: answer is not JSON") from exc


def http_error(status: int, content: bytes) -> BackendError:
    """An OpenAI-compatible error answer (`{"error": {...}}`, llama-server's with its type)
    as one of ours."""
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "error" in answer:
        return _error_from(answer, status)
    detail = content[:200].decode("utf-8", "replace")
    return _error_from({"error": {"message": detail}}, status)


def _error_from(answer: dict[str, Any], status: int) -> BackendError:
    error = answer.get("error")
    fields = error if isinstance(error, dict) else {"message": str(error)}
    status = int(_number(fields.get("code"))) or status
    message = str(fields.get("message", ""))[:300]
    error_type = str(fields.get("type", ""))
    text = f"HTTP {status}: {message}" + (f" ({error_type})" if error_type else "")
    lowered = message.lower()
    if status == 400 and (
        error_type == CONTEXT_SIZE_ERROR or "context size" in lowered or "context length" in lowered
    ):
        return ContextOverflow(
            text,
            n_prompt_tokens=_positive(fields.get("n_prompt_tokens")),
            n_ctx=_positive(fields.get("n_ctx")),
        )
    if status == 503:
        return ModelLoading(text) if "loading" in lowered else ServerBusy(text)
    if status == 404:
        return ModelMissing(text)
    if status == 400:
        return BadRequest(text)
    if status == 500 and "assistant" in lowered:
        # llama.cpp refuses a list that ends in two assistant turns: the request's fault.
        return BadRequest(text)
    return ServerError(text)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ServerError(f"stream data is not JSON: {text[:200]!r}") from exc
    if not isinstance(value, dict):
        raise ServerError(f"stream data is not a JSON object: {text[:200]!r}")
    return value


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _positive(value: object) -> int | None:
    number = int(_number(value))
    return number if number > 0 else None
