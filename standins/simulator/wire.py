"""How each API shapes an answer: Ollama's chat and generate, OpenAI's chat completions.

Whole answers, streamed chunks, timings, errors, and a stream that gives its slot back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from standins.simulator.errors import ApiError
from standins.simulator.replies import Reply
from standins.simulator.requests import Ask
from standins.simulator.times import NS, rfc3339


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
        return {"model": self.ask.model, "created_at": rfc3339(time.time())}

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
