"""A small Ollama client for the worker: one chat call, tags, ps; errors mapped to ours once."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import httpx

from workers.contract.protocol import ChatOutcome, ChatRequest, ChatTimings
from workers.errors import (
    BadRequest,
    ContextOverflow,
    GenerationTimeout,
    ModelMissing,
    OllamaError,
    ServerBusy,
    ServerError,
    ServerUnavailable,
)

NS_PER_MS = 1_000_000


class OllamaClient:
    """Talks to one Ollama server; the transport seam lets bytes travel another way (SSH)."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def chat(self, request: ChatRequest) -> ChatOutcome:
        """Run one chat request; raises an OllamaError subclass when there is no answer."""
        started = time.monotonic()
        answer = self._call("POST", "/api/chat", json=request.ollama_body())
        wall_ms = (time.monotonic() - started) * 1000
        message = answer.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ServerError(f"answer without message content: {str(answer)[:200]}")
        return ChatOutcome(
            ok=True,
            text=message["content"],
            timings=ChatTimings(
                wall_ms=wall_ms,
                total_ms=_ms(answer.get("total_duration")),
                load_ms=_ms(answer.get("load_duration")),
                prompt_eval_count=int(answer.get("prompt_eval_count") or 0),
                eval_count=int(answer.get("eval_count") or 0),
                eval_ms=_ms(answer.get("eval_duration")),
            ),
        )

    def installed_models(self, timeout: float = 2.0) -> list[str]:
        return _model_names(self._call("GET", "/api/tags", timeout=timeout))

    def loaded_models(self, timeout: float = 2.0) -> list[str]:
        return _model_names(self._call("GET", "/api/ps", timeout=timeout))

    def _call(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"json": json}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ServerUnavailable(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise GenerationTimeout(f"{self.base_url}: no answer in time") from exc
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise _http_error(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise ServerError(f"{self.base_url}: answer is not JSON") from exc
        if not isinstance(body, dict):
            raise ServerError(f"{self.base_url}: answer is not a JSON object")
        return body


def _http_error(response: httpx.Response) -> OllamaError:
    try:
        detail = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        detail = response.text[:200]
    text = f"HTTP {response.status_code}: {detail}"
    if response.status_code == 503:
        return ServerBusy(text)
    if response.status_code == 404:
        return ModelMissing(text)
    if response.status_code == 400:
        return ContextOverflow(text) if "context" in detail.lower() else BadRequest(text)
    return ServerError(text)


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
