"""The worker's backends beyond Ollama: one OpenAI-compatible server, a server per model, and
the pool manager; against real HTTP servers on loopback that answer as llama-server and the
pool manager do (operator notes §7), defined here."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from standins.embedded_redis import free_port
from standins.http_server import ThreadedServer
from standins.processes import ManagedProcess, python_command
from standins.simulator import SimServerSpec, SimulatorFleet
from standins.waiting import wait_for
from workers.backends import (
    Backend,
    ModelServersBackend,
    OllamaClient,
    OpenAIBackend,
    PoolBackend,
    build_backend,
)
from workers.backends.model_server import ModelServer
from workers.contract.keys import Keys
from workers.contract.model_names import served_model_name
from workers.contract.protocol import ChatOutcome, ChatRequest, ChatTurn
from workers.contract.server_record import ServerRecord
from workers.errors import (
    BackendError,
    BadRequest,
    ContextOverflow,
    ModelMissing,
    OllamaError,
    ServerBusy,
    ServerError,
    ServerHung,
    ServerUnavailable,
    WrongModel,
)
from workers.heartbeat import server_record, slots_at_once
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

ETERNAL = "the-eternal-f16"
SCORER = "eq-score-f16"
CRITIC = "the-critic-f16"
TOKENS_PER_CHAR = 0.3  # how the servers here count a prompt's tokens: more than chars/4


def gguf_path(key: str) -> str:
    """The pool's folder convention: `<name>-f16/<name>_f16.gguf`."""
    name, _, quant = key.rpartition("-")
    return f"/models/{key}/{name}_{quant}.gguf"


# A llama-server, as far as the worker sees one --------------------------------------------------


class LlamaShape:
    """An HTTP server that answers as llama-server does: one model, `/health` (503 while
    loading), `/v1/models`, `/props`, and `/v1/chat/completions` streamed as server-sent
    events with its headers first, a context-size error with both sizes, and its timings in
    the last chunk. Its knobs make it slow, stalled, dropped or failing."""

    def __init__(
        self, key: str = ETERNAL, *, alias: str | None = None, slots: int = 1, n_ctx: int = 8192
    ) -> None:
        self.model_id = alias or gguf_path(key)
        self.model_path = gguf_path(key)
        self.slots = slots
        self.n_ctx = n_ctx
        self.loading = False
        self.first_token_s = 0.0  # after the headers, before the first text
        self.empty_chunks_s = 0.0  # while waiting for the first text, chunks without text
        self.stall_after: int | None = None  # stop sending after this many tokens
        self.drop_after: int | None = None  # end the connection after this many tokens
        self.failures: list[tuple[int, dict[str, Any]]] = []  # the next chats' answers
        self.chats: list[dict[str, Any]] = []  # every chat request's body, answered or not
        self.loading_answers = 0
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/props", self.props),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    @staticmethod
    def loading_answer() -> JSONResponse:
        error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
        return JSONResponse({"error": error}, status_code=503)

    async def health(self, request: Request) -> Response:
        return self.loading_answer() if self.loading else JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        if self.loading:
            return self.loading_answer()
        return JSONResponse({"object": "list", "data": [{"id": self.model_id, "object": "model"}]})

    async def props(self, request: Request) -> Response:
        if self.loading:
            return self.loading_answer()
        settings = {"n_ctx": self.n_ctx, "params": {"n_predict": -1}}
        return JSONResponse(
            {
                "default_generation_settings": settings,
                "total_slots": self.slots,
                "model_path": self.model_path,
            }
        )

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.chats.append(body)
            failure = self.failures.pop(0) if self.failures else None
        if self.loading:
            self.loading_answers += 1
            return self.loading_answer()
        if failure is not None:
            return JSONResponse(failure[1], status_code=failure[0])
        chars = sum(len(turn["content"]) for turn in body["messages"])
        prompt_tokens = int(chars * TOKENS_PER_CHAR)
        if prompt_tokens > self.n_ctx:
            error = {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": prompt_tokens,
                "n_ctx": self.n_ctx,
            }
            return JSONResponse({"error": error}, status_code=400)
        words = [f"w{index} " for index in range(int(body.get("max_tokens") or 16))]
        return StreamingResponse(
            self.events(body["model"], words, prompt_tokens), media_type="text/event-stream"
        )

    async def events(self, model: str, words: list[str], prompt_tokens: int) -> AsyncIterator[str]:
        def event(delta: dict[str, Any], **extra: Any) -> str:
            chunk = {"model": model, "choices": [{"index": 0, "delta": delta, **extra}]}
            return f"data: {json.dumps(chunk)}\n\n"

        began = time.monotonic()
        yield event({"role": "assistant", "content": None})  # with the headers, before a token
        if self.empty_chunks_s:
            while time.monotonic() - began < self.first_token_s:
                await asyncio.sleep(self.empty_chunks_s)
                yield event({"content": ""})
        else:
            await asyncio.sleep(self.first_token_s)
        for index, word in enumerate(words):
            if index == self.stall_after:
                await asyncio.sleep(3600)  # cancelled when the client goes
            if index == self.drop_after:
                raise ConnectionAbortedError("evicted while answering")
            yield event({"content": word})
        last = {
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            "timings": {
                "prompt_n": prompt_tokens,
                "prompt_ms": 40.0,
                "predicted_n": len(words),
                "predicted_ms": len(words) * 20.0,
            },
        }
        yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"


class Served:
    """Shapes served on loopback for one test."""

    def __init__(self) -> None:
        self.servers: list[ThreadedServer] = []

    def start(self, app: Any) -> ThreadedServer:
        server = ThreadedServer(app)
        server.start()
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def served() -> Iterator[Served]:
    shapes = Served()
    yield shapes
    shapes.stop()


def llama(served: Served, shape: LlamaShape) -> str:
    return served.start(shape.app).url


# The pool manager ---------------------------------------------------------------------------


class PoolShape:
    """An HTTP server that answers as the operator's pool manager: `/get-server?model=` finds
    or starts (after `cold_start_s`) the model's llama-server and answers its port; `/status`
    lists the servers, ready or starting; `/models` the models. Like the real one it has no
    guard against two starts of one model, and `reuse` makes a model's port answer another
    model's server (a port reused after an eviction)."""

    def __init__(self, shapes: dict[str, LlamaShape], cold_start_s: float = 0.0) -> None:
        self.shapes = shapes
        self.cold_start_s = cold_start_s
        self.running: dict[str, ThreadedServer] = {}
        self.starting: dict[str, int] = {}  # model → its port to be
        self.reuse: dict[str, str] = {}  # model → the model whose server answers for it
        self.asks: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self.app = Starlette(
            routes=[
                Route("/get-server", self.get_server),
                Route("/status", self.status),
                Route("/models", self.models),
                Route("/health", self.health),
            ]
        )

    async def get_server(self, request: Request) -> Response:
        model = request.query_params.get("model", "")
        if model not in self.shapes:
            return JSONResponse({"error": f"model {model} not found"}, status_code=404)
        self.asks[model] += 1
        self.in_flight[model] += 1
        self.most_in_flight[model] = max(self.most_in_flight[model], self.in_flight[model])
        try:
            target = self.reuse.get(model, model)
            if target not in self.running:
                port = free_port()
                self.starting[target] = port
                await asyncio.sleep(self.cold_start_s)
                server = ThreadedServer(self.shapes[target].app, port=port)
                await asyncio.to_thread(server.start)
                self.running[target] = server
                self.starts[target] += 1
                del self.starting[target]
            return JSONResponse({"port": self.running[target].port, "status": "ready"})
        finally:
            self.in_flight[model] -= 1

    async def status(self, request: Request) -> Response:
        servers = [
            {"model": model, "port": server.port, "status": "ready", "lastUsed": 0}
            for model, server in self.running.items()
        ] + [
            {"model": model, "port": port, "status": "starting"}
            for model, port in self.starting.items()
        ]
        return JSONResponse(
            {
                "poolSize": len(self.running),
                "maxServers": 24,
                "totalModels": len(self.shapes),
                "servers": servers,
            }
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {"models": [{"name": key, "path": gguf_path(key)} for key in self.shapes]}
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()


@pytest.fixture
def pool_of(served: Served) -> Iterator[Any]:
    pools: list[PoolShape] = []

    def start(shapes: dict[str, LlamaShape], cold_start_s: float = 0.0) -> tuple[PoolShape, str]:
        pool = PoolShape(shapes, cold_start_s)
        pools.append(pool)
        return pool, served.start(pool.app).url

    yield start
    for pool in pools:
        pool.stop()


# Requests -------------------------------------------------------------------------------------


def chat(model: str = ETERNAL, text: str = "hello", max_tokens: int = 8) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[
            ChatTurn(role="system", content="Be brief."),
            ChatTurn(role="user", content=text),
            ChatTurn(role="assistant", content=""),
        ],
        max_tokens=max_tokens,
    )


def with_history(model: str = ETERNAL, turns: int = 10, turn_chars: int = 200) -> ChatRequest:
    """A system prompt (100 chars), `turns` history turns, the message (100) and the empty
    assistant turn, as the bot builds it."""
    history = [
        ChatTurn(role="user" if index % 2 == 0 else "assistant", content=f"{index}" * turn_chars)
        for index in range(turns)
    ]
    return ChatRequest(
        model=model,
        messages=[
            ChatTurn(role="system", content="s" * 100),
            *history,
            ChatTurn(role="user", content="u" * 100),
            ChatTurn(role="assistant", content=""),
        ],
        max_tokens=100,
        history=(1, 1 + turns),
    )


def chat_in_threads(backend: Backend, requests: list[ChatRequest]) -> list[ChatOutcome | Exception]:
    results: list[ChatOutcome | Exception] = [Exception("not run")] * len(requests)

    def run(index: int) -> None:
        try:
            results[index] = backend.chat(requests[index], first_token_s=30, stall_s=10)
        except BackendError as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# Names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served_as", "key"),
    [
        ("/models/the-eternal-f16/the-eternal_f16.gguf", "the-eternal-f16"),
        ("/models/alcohol-addiction-q8_0/alcohol-addiction_q8_0.gguf", "alcohol-addiction-q8_0"),
        ("/elsewhere/eq-score_f16.gguf", "eq-score-f16"),
        ("the-eternal-f16", "the-eternal-f16"),  # an alias, as it is
        ("qwen2.5:7b", "qwen2.5:7b"),
    ],
)
def test_a_served_path_is_named_by_the_pools_convention(served_as: str, key: str) -> None:
    assert served_model_name(served_as) == key


# One OpenAI-compatible server -----------------------------------------------------------------


def test_openai_chat_streams_the_reply_with_the_servers_timings(served: Served) -> None:
    shape = LlamaShape()
    with OpenAIBackend(llama(served, shape)) as backend:
        outcome = backend.chat(chat(max_tokens=12))
        assert outcome.ok
        assert outcome.text.split() == [f"w{index}" for index in range(12)]
        timings = outcome.timings
        assert (timings.eval_count, timings.eval_ms) == (12, 240.0)
        assert timings.prompt_eval_count > 0
        assert timings.prompt_eval_ms == 40.0
        assert timings.wall_ms > 0
        sent = shape.chats[0]
        assert sent["model"] == ETERNAL  # the key, as the bot sends it
        assert sent["stream"] is True
        assert sent["max_tokens"] == 12
        assert backend.inventory().tokens_per_s == {ETERNAL: 50.0}


def test_openai_inventory_tells_model_slots_and_context(served: Served) -> None:
    shape = LlamaShape(SCORER, slots=10, n_ctx=1024)
    with OpenAIBackend(llama(served, shape)) as backend:
        inventory = backend.inventory()
    assert inventory.healthy
    assert inventory.models == inventory.loaded == [SCORER]  # from its path
    assert inventory.loading == []
    assert inventory.model_slots == {SCORER: 10}
    assert inventory.context == {SCORER: 1024}
    assert inventory.max_loaded == 1


def test_a_loading_server_is_healthy_its_model_loading_and_a_request_waits_for_it(
    served: Served,
) -> None:
    shape = LlamaShape(alias=ETERNAL)
    with OpenAIBackend(llama(served, shape)) as backend:
        assert backend.inventory().loaded == [ETERNAL]
        shape.loading = True
        inventory = backend.inventory()
        assert inventory.healthy
        assert (inventory.models, inventory.loaded, inventory.loading) == ([ETERNAL], [], [ETERNAL])
        results = []
        waiting = threading.Thread(target=lambda: results.append(backend.chat(chat())))
        waiting.start()
        wait_for(lambda: shape.loading_answers, 10, what="the request to find the model loading")
        shape.loading = False
        waiting.join(timeout=30)
    [outcome] = results
    assert outcome.ok
    assert outcome.timings.load_ms > 0  # the wait for the load, apart from the generation


def test_the_first_token_allowance_runs_past_the_headers_until_text_comes(served: Served) -> None:
    """llama-server sends its headers, and chunks without text, before its first token: the
    allowance is for the text, however much comes before it."""
    shape = LlamaShape()
    shape.first_token_s = 1.5
    shape.empty_chunks_s = 0.05
    url = llama(served, shape)
    with OpenAIBackend(url, read_timeout=30) as backend:
        began = time.monotonic()
        with pytest.raises(ServerHung, match=r"no first token in 0\.4s"):
            backend.chat(chat(), first_token_s=0.4, stall_s=5)
        assert time.monotonic() - began < 1.2
        shape.first_token_s = 0.6  # longer than a stall, within the first token's allowance
        assert backend.chat(chat(), first_token_s=5, stall_s=0.3).ok


def test_tokens_that_stop_are_a_hang(served: Served) -> None:
    shape = LlamaShape()
    shape.stall_after = 3
    with OpenAIBackend(llama(served, shape), read_timeout=30) as backend:
        began = time.monotonic()
        with pytest.raises(ServerHung, match=r"tokens stopped for 0\.3s"):
            backend.chat(chat(max_tokens=20), first_token_s=5, stall_s=0.3)
        assert time.monotonic() - began < 2  # a stall is timed from the last token
        shape.stall_after = None
        assert backend.chat(chat(max_tokens=20), stall_s=5).ok


def test_a_reply_over_the_cap_is_cut_off(served: Served) -> None:
    backend = OpenAIBackend(llama(served, LlamaShape()))
    with backend, pytest.raises(ServerError, match="over the 2048-byte cap"):
        backend.chat(chat(max_tokens=400), max_reply_bytes=2048)


def error(code: int, message: str, error_type: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"code": code, "message": message, "type": error_type, **extra}}


@pytest.mark.parametrize(
    ("failure", "raised"),
    [
        (error(503, "Server busy", "unavailable_error"), ServerBusy),
        (error(404, "model not found", "not_found_error"), ModelMissing),
        (error(400, "invalid temperature", "invalid_request_error"), BadRequest),
        (
            error(500, "Cannot have 2 or more assistant messages at the end", "server_error"),
            BadRequest,
        ),
        (error(500, "something broke", "server_error"), ServerError),
    ],
)
def test_error_answers_map_to_our_kinds(
    served: Served, failure: tuple[int, dict[str, Any]], raised: type[OllamaError]
) -> None:
    shape = LlamaShape()
    shape.failures.append(failure)
    with OpenAIBackend(llama(served, shape)) as backend, pytest.raises(raised):
        backend.chat(chat())


def test_a_context_size_error_carries_both_sizes(served: Served) -> None:
    shape = LlamaShape(n_ctx=100)
    with httpx.Client() as http, pytest.raises(ContextOverflow) as overflow:
        ModelServer(llama(served, shape), http).chat(with_history())
    assert (overflow.value.n_prompt_tokens, overflow.value.n_ctx) == (660, 100)


def test_a_dropped_connection_is_server_unavailable(served: Served) -> None:
    shape = LlamaShape()
    shape.drop_after = 2
    with OpenAIBackend(llama(served, shape)) as backend, pytest.raises(ServerUnavailable):
        backend.chat(chat(max_tokens=10))


def test_a_refused_connection_is_server_unavailable() -> None:
    with OpenAIBackend(f"http://127.0.0.1:{free_port()}", connect_timeout=1) as backend:
        with pytest.raises(ServerUnavailable):
            backend.chat(chat())
        with pytest.raises(ServerUnavailable):
            backend.inventory()


# Context overflow ---------------------------------------------------------------------------


def test_an_overflow_is_retried_once_without_the_oldest_history_and_later_requests_are_cut(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """2200 chars, 660 tokens as the server counts, for a context of 400 less a reply of
    100: six of the ten history turns (200 chars each) go, and no more."""
    shape = LlamaShape(n_ctx=400)
    caplog.set_level(logging.WARNING, logger="workers.backends.context")
    with OpenAIBackend(llama(served, shape), server_id="mac-1") as backend:
        outcome = backend.chat(with_history(), job_id="m-1")
        assert outcome.ok
        assert [len(body["messages"]) for body in shape.chats] == [13, 7]
        kept = [turn["content"][0] for turn in shape.chats[1]["messages"][1:5]]
        assert kept == ["6", "7", "8", "9"]  # the newest history stays
        assert backend.inventory().context == {ETERNAL: 400}
        # The next request for the model is cut before it is sent: one request, no error.
        assert backend.chat(with_history(), job_id="m-2").ok
        assert [len(body["messages"]) for body in shape.chats] == [13, 7, 7]
    cuts = [record.getMessage() for record in caplog.records]
    assert len(cuts) == 2
    assert all(line.startswith("[CONTEXT-OVERFLOW] job=m-") for line in cuts)
    assert "server=mac-1" in cuts[0]
    assert "the server counted 660 tokens" in cuts[0]
    assert "13 messages, 2200 chars, ~660 tokens -> 7 messages, 1000 chars, ~300 tokens" in cuts[0]
    assert "before sending" in cuts[1]


def test_an_overflow_with_nothing_to_cut_is_raised(served: Served) -> None:
    shape = LlamaShape(n_ctx=400)
    request = with_history().model_copy(update={"history": None})
    with OpenAIBackend(llama(served, shape)) as backend, pytest.raises(ContextOverflow):
        backend.chat(request)
    assert len(shape.chats) == 1


def test_an_overflow_even_without_history_is_raised_after_one_retry(served: Served) -> None:
    shape = LlamaShape(n_ctx=40)  # the system prompt and the message alone are 60 tokens
    with OpenAIBackend(llama(served, shape)) as backend, pytest.raises(ContextOverflow):
        backend.chat(with_history())
    assert [len(body["messages"]) for body in shape.chats] == [13, 3]


# A server per model ---------------------------------------------------------------------------


def test_models_backend_sends_each_model_to_its_own_server(served: Served) -> None:
    eternal, scorer = LlamaShape(ETERNAL), LlamaShape(SCORER, slots=10, n_ctx=1024)
    servers = {ETERNAL: llama(served, eternal), SCORER: llama(served, scorer)}
    with ModelServersBackend(servers) as backend:
        assert backend.chat(chat(ETERNAL)).ok
        assert backend.chat(chat(SCORER)).ok
        assert backend.chat(chat(SCORER)).ok
        assert (len(eternal.chats), len(scorer.chats)) == (1, 2)
        with pytest.raises(ModelMissing):
            backend.chat(chat(CRITIC))
        inventory = backend.inventory()
    assert inventory.models == inventory.loaded == [ETERNAL, SCORER]
    assert inventory.model_slots == {ETERNAL: 1, SCORER: 10}
    assert inventory.context == {ETERNAL: 8192, SCORER: 1024}
    assert inventory.max_loaded == 2


def test_models_backend_leaves_out_a_server_that_does_not_answer(served: Served) -> None:
    critic = LlamaShape(CRITIC)
    critic.loading = True
    servers = {
        ETERNAL: llama(served, LlamaShape(ETERNAL)),
        SCORER: f"http://127.0.0.1:{free_port()}",
        CRITIC: llama(served, critic),
    }
    with ModelServersBackend(servers, connect_timeout=1, model_slots={"default": 2}) as backend:
        inventory = backend.inventory()
    assert inventory.models == [ETERNAL, CRITIC]
    assert (inventory.loaded, inventory.loading) == ([ETERNAL], [CRITIC])
    assert inventory.model_slots == {ETERNAL: 1, CRITIC: 2}  # told by its server, else set


def test_models_backend_with_no_server_answering_is_unavailable() -> None:
    servers = {ETERNAL: f"http://127.0.0.1:{free_port()}"}
    backend = ModelServersBackend(servers, connect_timeout=1)
    with backend, pytest.raises(ServerUnavailable):
        backend.inventory()


# The pool manager ---------------------------------------------------------------------------


def test_pool_asks_for_a_server_for_every_request(pool_of: Any) -> None:
    shape = LlamaShape(ETERNAL)
    pool, url = pool_of({ETERNAL: shape})
    with PoolBackend(url) as backend:
        for _ in range(3):
            assert backend.chat(chat()).ok
    assert pool.asks[ETERNAL] == 3
    assert pool.starts[ETERNAL] == 1
    assert len(shape.chats) == 3


def test_pool_never_sends_to_a_port_that_answers_another_model(pool_of: Any) -> None:
    eternal, scorer = LlamaShape(ETERNAL), LlamaShape(SCORER)
    pool, url = pool_of({ETERNAL: eternal, SCORER: scorer})
    with PoolBackend(url) as backend:
        assert backend.chat(chat(SCORER)).ok
        pool.reuse[ETERNAL] = SCORER  # the eternal's old port now serves the scorer
        with pytest.raises(WrongModel, match=f"answers {SCORER}, not {ETERNAL}"):
            backend.chat(chat(ETERNAL))
    assert pool.asks[ETERNAL] == 2  # asked once more, then given up
    assert len(scorer.chats) == 1  # its own request only
    assert eternal.chats == []


def test_pool_starts_a_cold_model_once_for_many_requests_and_reports_the_start_as_load(
    pool_of: Any,
) -> None:
    shape = LlamaShape(ETERNAL)
    pool, url = pool_of({ETERNAL: shape}, cold_start_s=0.8)
    with PoolBackend(url) as backend:
        results = chat_in_threads(backend, [chat() for _ in range(8)])
        inventory = backend.inventory()
    assert all(isinstance(result, ChatOutcome) and result.ok for result in results), results
    assert pool.starts[ETERNAL] == 1
    assert pool.most_in_flight[ETERNAL] == 1  # one /get-server at a time for the model
    assert pool.asks[ETERNAL] == 8  # each request still asked
    outcomes = [result for result in results if isinstance(result, ChatOutcome)]
    assert max(outcome.timings.load_ms for outcome in outcomes) >= 800
    for outcome in outcomes:
        if outcome.timings.load_ms:  # the start is apart from the generation's timings
            assert outcome.timings.wall_ms >= outcome.timings.load_ms
        assert outcome.timings.eval_ms == 160.0
    assert inventory.load_s[ETERNAL] >= 0.8
    assert inventory.tokens_per_s == {ETERNAL: 50.0}


def test_pool_inventory_lists_models_servers_and_slots(pool_of: Any) -> None:
    shapes = {
        ETERNAL: LlamaShape(ETERNAL),
        SCORER: LlamaShape(SCORER, slots=10, n_ctx=1024),
        CRITIC: LlamaShape(CRITIC),
    }
    pool, url = pool_of(shapes, cold_start_s=0.6)
    slots = {SCORER: 10, "default": 1}
    with PoolBackend(url, model_slots=slots, model_context={"default": 8192}) as backend:
        assert backend.chat(chat(SCORER)).ok
        starting = threading.Thread(target=lambda: backend.chat(chat(CRITIC)))
        starting.start()
        wait_for(lambda: CRITIC in pool.starting, 10, what="the critic's start")
        inventory = backend.inventory()
        starting.join(timeout=30)
    assert inventory.healthy
    assert inventory.models == [SCORER, CRITIC, ETERNAL]
    assert (inventory.loaded, inventory.loading) == ([SCORER], [CRITIC])
    assert inventory.max_loaded == 24
    assert inventory.model_slots == {ETERNAL: 1, SCORER: 10, CRITIC: 1}
    assert inventory.context == {ETERNAL: 8192, SCORER: 1024, CRITIC: 8192}
    assert inventory.load_s[SCORER] >= 0.6


def test_pool_server_evicted_while_answering_is_server_unavailable(pool_of: Any) -> None:
    shape = LlamaShape(ETERNAL)
    shape.drop_after = 3
    _, url = pool_of({ETERNAL: shape})
    with PoolBackend(url) as backend, pytest.raises(ServerUnavailable):
        backend.chat(chat(max_tokens=10))


def test_pool_errors_map_to_our_kinds(pool_of: Any) -> None:
    _, url = pool_of({ETERNAL: LlamaShape(ETERNAL)})
    with PoolBackend(url) as backend, pytest.raises(ModelMissing):
        backend.chat(chat(CRITIC))
    with PoolBackend(f"http://127.0.0.1:{free_port()}", connect_timeout=1) as backend:
        with pytest.raises(ServerUnavailable):
            backend.chat(chat())
        with pytest.raises(ServerUnavailable):
            backend.inventory()


def test_pool_overflow_is_cut_once_and_remembered(pool_of: Any) -> None:
    shape = LlamaShape(ETERNAL, n_ctx=400)
    pool, url = pool_of({ETERNAL: shape})
    with PoolBackend(url) as backend:
        assert backend.chat(with_history()).ok
        assert backend.chat(with_history()).ok
    assert [len(body["messages"]) for body in shape.chats] == [13, 7, 7]
    assert pool.asks[ETERNAL] == 3


# Choosing a backend, and its record ---------------------------------------------------------


def test_settings_choose_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(build_backend(WorkerSettings()), OllamaClient)
    monkeypatch.setenv("OLLAMA_CLOUD_BACKEND", "openai")
    openai = build_backend(WorkerSettings())
    assert isinstance(openai, OpenAIBackend)
    assert openai.address == "http://127.0.0.1:8080"
    monkeypatch.setenv("OLLAMA_CLOUD_BACKEND", "models")
    monkeypatch.setenv(
        "OLLAMA_CLOUD_MODEL_MAP", f"{ETERNAL}=http://127.0.0.1:8081, {SCORER}=http://127.0.0.1:8082"
    )
    models = build_backend(WorkerSettings())
    assert isinstance(models, ModelServersBackend)
    assert list(models.servers) == [ETERNAL, SCORER]
    monkeypatch.setenv("OLLAMA_CLOUD_MODEL_MAP", json.dumps({ETERNAL: "http://127.0.0.1:8081"}))
    assert list(WorkerSettings().model_map) == [ETERNAL]
    monkeypatch.setenv("OLLAMA_CLOUD_BACKEND", "pool")
    monkeypatch.setenv("OLLAMA_CLOUD_MODEL_SLOTS", f"{SCORER}=10,default=1")
    monkeypatch.setenv("OLLAMA_CLOUD_POOL_START_TIMEOUT_S", "60")
    pool = build_backend(WorkerSettings())
    assert isinstance(pool, PoolBackend)
    assert (pool.address, pool.start_timeout_s) == ("http://127.0.0.1:9000", 60.0)
    assert pool.model_slots == {SCORER: 10, "default": 1}
    for backend in (openai, models, pool):
        backend.close()
    monkeypatch.setenv("OLLAMA_CLOUD_MODEL_SLOTS", "eq-score-f16")
    with pytest.raises(ValueError, match="model=value"):
        WorkerSettings()


def test_the_record_says_the_backend_and_what_it_told(
    served: Served, pool_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = pool_of({ETERNAL: LlamaShape(ETERNAL), SCORER: LlamaShape(SCORER, slots=10)})
    pool_server = served.servers[-1]
    monkeypatch.setenv("OLLAMA_CLOUD_BACKEND", "pool")
    monkeypatch.setenv("OLLAMA_CLOUD_POOL_URL", url)
    runtime = WorkerRuntime.build(WorkerSettings(), "mac-1")
    try:
        assert runtime.chat(chat(SCORER), "m-1").ok
        record = server_record(runtime, capacity=4)
        assert runtime.loaded == frozenset({f"{SCORER}:latest"})  # by model key
        pool_server.stop()
        unanswered = server_record(runtime, capacity=4, known_models=record.models)
    finally:
        runtime.close()
    assert (record.backend, record.ollama_url, record.ollama_healthy) == ("pool", url, True)
    assert record.models == [SCORER, ETERNAL]
    assert record.loaded == [SCORER]
    assert record.model_slots == {SCORER: 10, ETERNAL: 1}
    assert record.max_loaded == 24
    assert record.context == {SCORER: 8192}
    assert not unanswered.ollama_healthy
    assert unanswered.models == [SCORER, ETERNAL]  # kept while the backend does not answer


def test_ollama_backend_inventory_is_its_tags_and_ps() -> None:
    spec = SimServerSpec(name="mac-1", models=["llama3.2:3b", "qwen2.5:7b"], loaded=["llama3.2:3b"])
    with SimulatorFleet([spec]) as fleet, OllamaClient(fleet.urls["mac-1"], max_loaded=4) as ollama:
        inventory = ollama.inventory()
    assert inventory.models == ["llama3.2:3b", "qwen2.5:7b"]
    assert inventory.loaded == ["llama3.2:3b"]
    assert (inventory.max_loaded, inventory.model_slots, inventory.healthy) == (4, {}, True)


@pytest.mark.e2e
def test_a_worker_on_a_pool_beats_its_pools_record(
    pool_of: Any, redis_url: str, tmp_path: Path
) -> None:
    _, url = pool_of({ETERNAL: LlamaShape(ETERNAL), SCORER: LlamaShape(SCORER)})
    env = {name: value for name, value in os.environ.items() if not name.startswith("OLLAMA_")}
    env.update(
        OLLAMA_CLOUD_REDIS_URL=redis_url,
        OLLAMA_CLOUD_BACKEND="pool",
        OLLAMA_CLOUD_POOL_URL=url,
        OLLAMA_CLOUD_MODEL_SLOTS=f"{SCORER}=10",
    )
    argv = python_command(
        "-m", "celery", "-A", "workers", "worker", "-Q", "mac-1", "-c", "2",
        "-n", "mac-1@%h", "--without-mingle", "--without-gossip",
    )  # fmt: skip
    worker = ManagedProcess("mac-1", argv, env, tmp_path / "mac-1.log")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    worker.start()
    try:
        record = wait_for(lambda: client.hgetall(Keys().server("mac-1")), 30, what="the record")
    finally:
        returncode = worker.stop()
        client.close()
    assert returncode == 0, worker.log_tail()
    assert (record["backend"], record["ollama_url"], record["ollama_healthy"]) == ("pool", url, "1")
    assert json.loads(record["models"]) == [SCORER, ETERNAL]
    assert json.loads(record["model_slots"]) == {SCORER: 10, ETERNAL: 1}
    assert record["max_loaded"] == "24"


def test_a_worker_is_told_when_its_backend_can_run_more_than_its_threads() -> None:
    pool = ServerRecord(id="p", model_slots={"a": 1, "b": 1, "eq": 10}, max_loaded=2)
    assert slots_at_once(pool) == 11  # the scorer's ten and one more model at once
    assert slots_at_once(ServerRecord(id="m", model_slots={"a": 2, "b": 1})) == 3
    assert slots_at_once(ServerRecord(id="o", capacity=4)) == 0  # Ollama's slots are shared
