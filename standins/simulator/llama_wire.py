"""How llama.cpp's `llama-server` shapes its answers: OpenAI chat completions with its own
`timings`, server-sent events, its error bodies, and the /props, /slots and /v1/models reports.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from standins.simulator.errors import ApiError
from standins.simulator.replies import Reply

BUILD_INFO = "b6500-5171a7e"  # llama-server's `b<build>-<commit>`
LOADING_MESSAGE = "Loading model"
CONTEXT_EXCEEDED_MESSAGE = "the request exceeds the available context size, try increasing it"
TRAILING_ASSISTANTS_MESSAGE = "Cannot have 2 or more assistant messages at the end of the list."
# llama-server's error types by HTTP status (its `error_type`).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
DEFAULT_MESSAGES = {
    400: "Invalid request",
    404: "File Not Found",
    503: LOADING_MESSAGE,
}
SAMPLING_DEFAULTS: dict[str, Any] = {
    "n_predict": -1,
    "seed": 4294967295,
    "temperature": 0.800000011920929,
    "top_k": 40,
    "top_p": 0.949999988079071,
    "min_p": 0.05000000074505806,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "stop": [],
    "max_tokens": -1,
    "n_keep": 0,
    "ignore_eos": False,
    "stream": True,
    "samplers": ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"],
}


class LlamaError(ApiError):
    """An error as llama-server writes it: `{"error": {"code", "message", "type", ...}}`."""

    def __init__(
        self, status: int, message: str, error_type: str | None = None, **extra: Any
    ) -> None:
        super().__init__(status, message)
        self.error_type = error_type or ERROR_TYPES.get(status, "server_error")
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error = {"code": self.status, "message": self.message, "type": self.error_type}
        return {"error": {**error, **self.extra}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    @classmethod
    def of(cls, exc: ApiError) -> LlamaError:
        return exc if isinstance(exc, LlamaError) else cls(exc.status, exc.message)


def loading_error() -> LlamaError:
    return LlamaError(503, LOADING_MESSAGE)


def default_message(status: int) -> str:
    return DEFAULT_MESSAGES.get(status, "Internal Server Error")


def model_path(key: str) -> str:
    """Where the operator's pool keeps a model: `<name>-f16` lives in
    `/models/<name>-f16/<name>_f16.gguf` (only the hyphen before the quant becomes `_`)."""
    name, sep, quant = key.rpartition("-")
    file_name = f"{name}_{quant}" if sep and name else key
    return f"/models/{key}/{file_name}.gguf"


@dataclass
class LlamaTimings:
    """llama-server's `timings`: prompt and generation counts and milliseconds."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float

    def as_json(self) -> dict[str, Any]:
        def per_token(ms: float, n: int) -> float:
            return ms / n if n else 0.0

        def per_second(ms: float, n: int) -> float:
            return 1000.0 * n / ms if ms > 0 else 0.0

        return {
            "cache_n": 0,
            "prompt_n": self.prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": per_token(self.prompt_ms, self.prompt_n),
            "prompt_per_second": per_second(self.prompt_ms, self.prompt_n),
            "predicted_n": self.predicted_n,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": per_token(self.predicted_ms, self.predicted_n),
            "predicted_per_second": per_second(self.predicted_ms, self.predicted_n),
        }


class LlamaWire:
    """One chat completion's answer; `model` is the request's `model`, echoed."""

    media_type = "text/event-stream"

    def __init__(self, model: str) -> None:
        self.model = model
        self.created = int(time.time())
        self.id = f"chatcmpl-{uuid.uuid4().hex}"

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "created": self.created,
            "id": self.id,
            "model": self.model,
            "system_fingerprint": BUILD_INFO,
            "object": kind,
        }

    @staticmethod
    def _usage(timings: LlamaTimings) -> dict[str, int]:
        return {
            "completion_tokens": timings.predicted_n,
            "prompt_tokens": timings.prompt_n,
            "total_tokens": timings.predicted_n + timings.prompt_n,
        }

    def whole(self, reply: Reply, timings: LlamaTimings) -> dict[str, Any]:
        choice = {
            "finish_reason": reply.done_reason,
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
        }
        return {
            "choices": [choice],
            **self._head("chat.completion"),
            "usage": self._usage(timings),
            "timings": timings.as_json(),
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"finish_reason": finish_reason, "index": 0, "delta": delta}
        return {"choices": [choice], **self._head("chat.completion.chunk")}

    def first_chunk(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": None}, None)

    def chunk(self, token: str) -> dict[str, Any]:
        return self._chunk({"content": token}, None)

    def final(
        self, reply: Reply, timings: LlamaTimings, include_usage: bool
    ) -> list[dict[str, Any]]:
        """The last events: the finish reason, then (when asked) the usage; the last of them
        carries the timings."""
        events = [self._chunk({}, reply.done_reason)]
        if include_usage:
            usage = {"choices": [], **self._head("chat.completion.chunk")}
            events.append({**usage, "usage": self._usage(timings)})
        events[-1]["timings"] = timings.as_json()
        return events

    @staticmethod
    def encode(event: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    done = b"data: [DONE]\n\n"


def slot_report(
    slot_id: int, n_ctx: int, task_id: int, n_decoded: int, n_remain: int
) -> dict[str, Any]:
    """One entry of GET /slots (and /props' `default_generation_settings`)."""
    busy = task_id >= 0
    return {
        "id": slot_id,
        "id_task": task_id,
        "n_ctx": n_ctx,
        "speculative": False,
        "is_processing": busy,
        "params": SAMPLING_DEFAULTS,
        "next_token": {
            "has_next_token": busy,
            "has_new_line": False,
            "n_remain": n_remain if busy else -1,
            "n_decoded": n_decoded,
        },
    }


def props_report(model_key: str, n_ctx: int, total_slots: int) -> dict[str, Any]:
    return {
        "default_generation_settings": {
            **slot_report(0, n_ctx, -1, 0, -1),
            "prompt": "",
        },
        "total_slots": total_slots,
        "model_alias": model_key,
        "model_path": model_path(model_key),
        "chat_template": "{{ messages }}",
        "chat_template_caps": {},
        "modalities": {"vision": False, "audio": False},
        "build_info": BUILD_INFO,
        "is_sleeping": False,
    }


def models_report(model_key: str, n_ctx: int, created: float, ready: bool) -> dict[str, Any]:
    """GET /v1/models: the one loaded model, named by its alias (the key), in both the
    Ollama-style `models` and the OpenAI-style `data`; `meta` is null while loading."""
    meta = (
        {
            "vocab_type": 2,
            "n_vocab": 128256,
            "n_ctx": n_ctx,
            "n_ctx_train": 131072,
            "n_embd": 4096,
            "n_params": 8030261312,
            "size": 16068890624,
        }
        if ready
        else None
    )
    return {
        "models": [
            {
                "name": model_key,
                "model": model_key,
                "modified_at": "",
                "size": "",
                "digest": "",
                "type": "model",
                "description": "",
                "tags": [""],
                "capabilities": ["completion"],
                "parameters": "",
                "details": {"parent_model": "", "format": "gguf", "family": ""},
            }
        ],
        "object": "list",
        "data": [
            {
                "id": model_key,
                "aliases": [model_key],
                "object": "model",
                "created": int(created),
                "owned_by": "llamacpp",
                "meta": meta,
            }
        ],
    }
