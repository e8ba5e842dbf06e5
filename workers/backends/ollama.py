"""The Ollama backend: a small client of Ollama's own API (one chat call, tags, ps), its errors
mapped to ours once."""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

import httpx

from workers.backends.base import (
    ERROR_BODY_BYTES,
    MAX_REPLY_BYTES,
    Inventory,
    LinkedBackend,
    Measures,
    read_capped,
    transport_error,
)
from workers.contract.protocol import ChatOutcome, ChatRequest, ChatTimings
from workers.errors import (
    BadRequest,
    ContextOverflow,
    GenerationTimeout,
    ModelMissing,
    OllamaError,
    ServerBusy,
    ServerError,
    ServerHung,
)
from workers.transport import Links

NS_PER_MS = 1_000_000
COLD_LOAD_MS = 1000.0  # a load_duration this long was a model load, not a warm lookup
OLLAMA_PORT = 11434  # the node's port for an ssh:// address that names none


class OllamaClient(LinkedBackend):
    """Talks to one Ollama server, at `http://…` or through an SSH tunnel (`ssh://alias`):
    `links` is the transport seam, and the backend closes it with itself."""

    kind: ClassVar[str] = "ollama"

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
        max_loaded: int = 0,
        links: Links | None = None,
    ) -> None:
        self._links = links or Links(connect_wait_s=connect_timeout)
        link = self._links.open(base_url, OLLAMA_PORT)
        self.where = link.address  # for people: the address as written
        self.base_url = link.base_url
        self.max_loaded = max_loaded
        self.measures = Measures()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._http = self._links.client(
            transport,
            max_connections=max_connections,
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    @property
    def address(self) -> str:
        return self.where

    def chat(
        self,
        request: ChatRequest,
        *,
        first_token_s: float | None = None,
        stall_s: float | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        job_id: str = "",
    ) -> ChatOutcome:
        """Run one chat request, streamed; raises an OllamaError subclass when there is no
        answer. Ollama sends nothing, not even its headers, before the first token: that wait
        (a model load, the prompt) is allowed `first_token_s`; once tokens flow, `stall_s`
        without one is a hang. A reply is read up to `max_reply_bytes`, never more."""
        first_token_s = self._read_timeout if first_token_s is None else first_token_s
        stall_s = self._read_timeout if stall_s is None else stall_s
        started = time.monotonic()
        body = {**request.ollama_body(), "stream": True}
        timeout = httpx.Timeout(first_token_s, connect=self._connect_timeout)
        began = 0.0  # when the first token came
        try:
            with self._http.stream("POST", "/api/chat", json=body, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise _http_error(response.status_code, read_capped(response))
                # The headers came with the first token: from now on a pause is a stall.
                began = time.monotonic()
                response.request.extensions["timeout"]["read"] = stall_s
                text, final = _read_stream(response, max_reply_bytes)
        except httpx.ReadTimeout as exc:
            if began:
                flowing = max(0.0, time.monotonic() - began - stall_s)
                why = f"tokens stopped for {stall_s:g}s after {flowing:.1f}s of them"
                raise ServerHung(f"{self.where}: {why}") from exc
            if first_token_s < self._read_timeout:  # the model was loaded: nothing to wait for
                raise ServerHung(f"{self.where}: no first token in {first_token_s:.1f}s") from exc
            raise GenerationTimeout(f"{self.where}: no answer in {first_token_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise transport_error(self.where, exc) from exc
        timings = ChatTimings(
            wall_ms=(time.monotonic() - started) * 1000,
            total_ms=_ms(final.get("total_duration")),
            load_ms=_ms(final.get("load_duration")),
            prompt_eval_count=_count(final.get("prompt_eval_count")),
            prompt_eval_ms=_ms(final.get("prompt_eval_duration")),
            eval_count=_count(final.get("eval_count")),
            eval_ms=_ms(final.get("eval_duration")),
        )
        self.measures.note_reply(request.model, timings)
        if timings.load_ms >= COLD_LOAD_MS:
            self.measures.note_load(request.model, timings.load_ms / 1000)
        return ChatOutcome(ok=True, text=text, timings=timings)

    def inventory(self) -> Inventory:
        """Ollama's installed (`/api/tags`) and loaded (`/api/ps`) models; its slots are
        shared by every model, so none are a model's own."""
        return Inventory(
            models=self.installed_models(),
            loaded=self.loaded_models(),
            max_loaded=self.max_loaded,
            tokens_per_s=self.measures.tokens_per_s(),
            load_s=self.measures.load_s(),
        )

    def installed_models(self, timeout: float = 2.0) -> list[str]:
        return _model_names(self._call("GET", "/api/tags", timeout=timeout))

    def loaded_models(self, timeout: float = 2.0) -> list[str]:
        """Least recently used first: the first to expire (each use renews its keep-alive),
        as Ollama unloads them."""
        answer = self._call("GET", "/api/ps", timeout=timeout)
        expiry = {
            str(entry.get("name") or entry.get("model")): str(entry.get("expires_at") or "")
            for entry in answer.get("models") or []
            if isinstance(entry, dict)
        }
        return sorted(_model_names(answer), key=lambda name: (expiry.get(name, ""), name))

    def _call(
        self, method: str, path: str, *, payload: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"json": payload}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.where, exc) from exc
        if response.status_code >= 400:
            raise _http_error(response.status_code, response.content[:ERROR_BODY_BYTES])
        try:
            body = response.json()
        except ValueError as exc:
            raise ServerError(f"{self.where}: answer is not JSON") from exc
        if not isinstance(body, dict):
            raise ServerError(f"{self.where}: answer is not a JSON object")
        return body


def _read_stream(response: httpx.Response, max_reply_bytes: int) -> tuple[str, dict[str, Any]]:
    """The reply's text and Ollama's last chunk (its durations and counts)."""
    parts: list[str] = []
    size = 0
    for line in response.iter_lines():
        if not line.strip():
            continue
        size += len(line)
        if size > max_reply_bytes:
            raise ServerError(f"reply over the {max_reply_bytes}-byte cap: cut off")
        try:
            chunk = json.loads(line)
        except ValueError as exc:
            raise ServerError(f"stream line is not JSON: {line[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise ServerError(f"stream line is not a JSON object: {line[:200]!r}")
        if "error" in chunk:  # Ollama reports a failure met mid-stream this way
            raise ServerError(f"error mid-stream: {str(chunk['error'])[:300]}")
        message = chunk.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ServerError(f"stream chunk without message content: {line[:200]!r}")
        parts.append(content)
        if chunk.get("done") is True:
            return "".join(parts), chunk
    raise ServerError("stream ended before its last chunk")


def _http_error(status: int, content: bytes) -> OllamaError:
    try:
        detail = str(json.loads(content).get("error", ""))
    except (ValueError, AttributeError):
        detail = content[:200].decode("utf-8", "replace")
    text = f"HTTP {status}: {detail}"
    if status == 503:
        return ServerBusy(text)
    if status == 404:
        return ModelMissing(text)
    if status == 400:
        return ContextOverflow(text) if "context" in detail.lower() else BadRequest(text)
    return ServerError(text)


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _ms(nanoseconds: object) -> float:
    return float(nanoseconds) / NS_PER_MS if isinstance(nanoseconds, int | float) else 0.0


def _model_names(answer: dict[str, Any]) -> list[str]:
    models = answer.get("models")
    if not isinstance(models, list):
        return []
    return sorted(
        str(entry.get("name") or entry.get("model"))
        for entry in models
        if isinstance(entry, dict) and (entry.get("name") or entry.get("model"))
    )
