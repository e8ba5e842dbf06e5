"""One simulated llama.cpp `llama-server`: one model, `parallel` slots sharing `--ctx-size`, a
FIFO queue behind them, a loading phase, generation paced at `tokens_per_second`, and a stop
that cuts its open connections the way a killed process does.

Like the real one it answers whatever model a request names, echoing that name back; the words
are the loaded model's, and the stats record (requested, actual) for every reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from standins.http_server import PromptServer
from standins.simulator.errors import ApiError
from standins.simulator.faults import SIM_ERROR, Faults
from standins.simulator.llama_app import build_llama_app
from standins.simulator.llama_wire import (
    CONTEXT_EXCEEDED_MESSAGE,
    TRAILING_ASSISTANTS_MESSAGE,
    LlamaError,
    LlamaTimings,
    LlamaWire,
    default_message,
    loading_error,
    models_report,
    props_report,
    slot_report,
)
from standins.simulator.replies import Reply, compose_reply
from standins.simulator.requests import Ask, llamacpp_ask
from standins.simulator.spec import SimServerSpec
from standins.simulator.stats import LlamaStats
from standins.simulator.wire import ReleasingStream

log = logging.getLogger(__package__)  # the simulator logs as one: standins.simulator

# Prompt processing is far faster than generation; 1 µs a token keeps the rates finite.
PROMPT_MS_PER_TOKEN = 0.001


class Stopped(Exception):
    """The server was stopped while this request was in it: nothing more reaches the client."""


@dataclass
class Slot:
    """One of the server's parallel slots, and the generation it holds (task -1: idle)."""

    id: int
    task_id: int = -1
    since: float = 0.0
    tokens: int = 0
    max_tokens: int = -1
    tokens_per_second: float = 0.0

    def n_decoded(self) -> int:
        if self.task_id < 0:
            return 0
        if self.tokens_per_second <= 0:
            return self.tokens
        return min(self.tokens, int((time.monotonic() - self.since) * self.tokens_per_second))


def _pad(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def context_per_slot(ctx_size: int, parallel: int) -> int:
    """Each slot's context, as llama.cpp sizes it: `--ctx-size` split evenly among the slots,
    rounded up to a multiple of 256 (8192 over 10 slots gives 1024, as the operator saw)."""
    return _pad(_pad(ctx_size, 256) // parallel, 256)


def trailing_assistants(ask: Ask) -> int:
    count = 0
    for role, _ in reversed(ask.turns):
        if role != "assistant":
            break
        count += 1
    return count


class SimulatedLlamaServer:
    """One llama-server: its model, slots, queue, loading state, faults and stats."""

    def __init__(self, spec: SimServerSpec) -> None:
        if spec.kind != "llamacpp":
            raise ValueError(f"{spec.name}: a llama-server needs a llamacpp spec, not {spec.kind}")
        self.spec = spec
        self.model = spec.models[0]
        self.n_ctx = context_per_slot(spec.context_length, spec.parallel)
        self.created = time.time()
        self.ready_at = time.monotonic()
        self.slots = [Slot(index) for index in range(spec.parallel)]
        self.stats = LlamaStats()
        self.faults = Faults()
        self.stopped = False
        self._stopping = asyncio.Event()
        self._waiters: deque[asyncio.Future[Slot]] = deque()
        self._tasks = 0
        self.app = build_llama_app(self)

    # Life: loading, then ready until stopped.

    def start_loading(self) -> None:
        """The model loads for `load_seconds` from now (at once if the spec says it is loaded)."""
        warm = self.model in self.spec.loaded
        self.ready_at = time.monotonic() + (0.0 if warm else self.spec.load_seconds)
        if not warm and self.spec.load_seconds > 0:
            log.info(
                "server=%s model=%s loading %.1fs",
                self.spec.name,
                self.model,
                self.spec.load_seconds,
            )

    @property
    def ready(self) -> bool:
        return not self.stopped and time.monotonic() >= self.ready_at

    async def run(self, http: PromptServer) -> None:
        """Serve until told to exit: the model starts loading as the server starts."""
        self.start_loading()
        await http.serve()

    def stop(self) -> None:
        """Stopped like a killed process: queued and running generations end unanswered."""
        if self.stopped:
            return
        self.stopped = True
        self._stopping.set()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Stopped())
        log.info("server=%s model=%s stopped", self.spec.name, self.model)

    async def pause(self, seconds: float) -> None:
        """Generation time that a stop cuts short."""
        if self.stopped:
            raise Stopped
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return
        raise Stopped

    # Slots: `parallel` generations at once; the others wait in FIFO order, unbounded.

    @property
    def active(self) -> int:
        return sum(1 for slot in self.slots if slot.task_id >= 0)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire_slot(self, reply: Reply, ask: Ask) -> Slot:
        if self.stopped:
            raise Stopped
        if not self._waiters:
            for slot in self.slots:
                if slot.task_id < 0:
                    return self._take(slot, reply, ask)
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.stats.max_queued = max(self.stats.max_queued, len(self._waiters))
        try:
            slot = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release_slot(waiter.result())  # handed to us as we were cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        return self._take(slot, reply, ask)

    def _take(self, slot: Slot, reply: Reply, ask: Ask) -> Slot:
        self._tasks += 1
        slot.task_id = self._tasks
        slot.since = time.monotonic()
        slot.tokens = len(reply.tokens)
        slot.max_tokens = ask.num_predict
        slot.tokens_per_second = self.spec.tokens_per_second
        self.stats.max_active = max(self.stats.max_active, self.active)
        return slot

    def release_slot(self, slot: Slot) -> None:
        self.stats.busy_seconds += time.monotonic() - slot.since
        slot.task_id = -1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                slot.task_id = 0  # held for the waiter until it takes it
                slot.since = time.monotonic()
                waiter.set_result(slot)
                return

    # Requests.

    def injected_error(self, ask: Ask) -> LlamaError | None:
        directive = SIM_ERROR.search(ask.last_user)
        if directive and 400 <= int(directive.group(1)) <= 599:
            status = int(directive.group(1))
            self.stats.failures_injected += 1
            return LlamaError(status, default_message(status))
        if self.faults.fail_next > 0:
            self.faults.fail_next -= 1
            self.stats.failures_injected += 1
            status = self.faults.status
            return LlamaError(status, self.faults.error or default_message(status))
        return None

    def _told(self, remaining: int, only_model: str | None, ask: Ask) -> bool:
        return remaining > 0 and only_model in (None, ask.model)

    async def chat(self, body: dict[str, Any], request: Request) -> Response:
        """POST /v1/chat/completions, end to end."""
        if not self.ready:
            self.stats.refused_loading += 1
            raise loading_error()
        try:
            ask = llamacpp_ask(body, self.model)
        except ApiError as exc:
            raise LlamaError.of(exc) from None
        self.stats.requests += 1
        if trailing_assistants(ask) >= 2:
            raise LlamaError(500, TRAILING_ASSISTANTS_MESSAGE, "server_error")
        injected = self.injected_error(ask)
        if injected is not None:
            log.warning("server=%s injected HTTP %d", self.spec.name, injected.status)
            raise injected
        if self._told(self.faults.hang_next, self.faults.hang_model, ask):
            self.faults.hang_next -= 1
            self.stats.failures_injected += 1
            log.warning("server=%s hanging a request until its client gives up", self.spec.name)
            await _until_disconnected(request)
            return Response(status_code=500)  # nobody is left to read it
        if ask.prompt_tokens >= self.n_ctx:
            self.stats.context_overflows += 1
            raise LlamaError(
                400,
                CONTEXT_EXCEEDED_MESSAGE,
                "exceed_context_size_error",
                n_prompt_tokens=ask.prompt_tokens,
                n_ctx=self.n_ctx,
            )
        # The loaded model writes the words, whatever model the request named.
        reply = compose_reply(replace(ask, model=self.model))
        generation = Generation(self, ask, reply)
        wire = LlamaWire(ask.model)
        if ask.stream:
            # The SSE headers go out now; the events follow once a slot is free.
            return ReleasingStream(
                self._events(generation, wire), wire.media_type, generation.abandon
            )
        try:
            await generation.begin()
            await self.pause(generation.eval_s)
        except Stopped:
            generation.abandon()
            return Response(status_code=500)  # the connection is already cut
        except BaseException:
            generation.abandon()
            raise
        generation.finish()
        return JSONResponse(wire.whole(reply, generation.timings()))

    async def _events(self, generation: Generation, wire: LlamaWire) -> AsyncGenerator[bytes, None]:
        ask, reply = generation.ask, generation.reply
        try:
            await generation.begin()
            stall_after = self._stall_after(ask)
            yield wire.encode(wire.first_chunk())
            tps = self.spec.tokens_per_second
            began = time.monotonic()
            for index, token in enumerate(reply.tokens):
                if index == stall_after:
                    await _forever()
                if tps > 0:  # spread generation over the events, without drifting
                    await self.pause(began + (index + 1) / tps - time.monotonic())
                elif self.stopped:
                    raise Stopped
                yield wire.encode(wire.chunk(token))
            if stall_after is not None:
                await _forever()
            generation.finish()
            for event in wire.final(reply, generation.timings(), ask.include_usage):
                yield wire.encode(event)
            yield wire.done
        except Stopped:
            return
        finally:
            generation.abandon()

    def _stall_after(self, ask: Ask) -> int | None:
        stall_after = self.faults.take_stall(ask.model, self.spec.name)
        if stall_after is not None:
            self.stats.failures_injected += 1
        return stall_after

    # Reports.

    def props(self) -> dict[str, Any]:
        return props_report(self.model, self.n_ctx, self.spec.parallel)

    def slot_reports(self) -> list[dict[str, Any]]:
        reports = []
        for slot in self.slots:
            decoded = slot.n_decoded()
            remain = slot.max_tokens - decoded if slot.max_tokens >= 0 else -1
            reports.append(slot_report(slot.id, self.n_ctx, slot.task_id, decoded, remain))
        return reports

    def models(self) -> dict[str, Any]:
        return models_report(self.model, self.n_ctx, self.created, self.ready)

    def stats_report(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ready": self.ready,
            "stopped": self.stopped,
            "n_ctx": self.n_ctx,
            "total_slots": self.spec.parallel,
            "active": self.active,
            "queued": self.queued,
            **self.stats.report(),
        }


class Generation:
    """One request's generation: its slot (once it has one) and how it ended, counted once."""

    def __init__(self, server: SimulatedLlamaServer, ask: Ask, reply: Reply) -> None:
        self.server = server
        self.ask = ask
        self.reply = reply
        self.slot: Slot | None = None
        self.ended = False
        tps = server.spec.tokens_per_second
        self.eval_s = len(reply.tokens) / tps if tps > 0 else 0.0

    async def begin(self) -> None:
        self.slot = await self.server.acquire_slot(self.reply, self.ask)

    def timings(self) -> LlamaTimings:
        tps = self.server.spec.tokens_per_second
        # tps 0 means instant; report 1 µs a token so the rates stay finite.
        predicted_ms = 1000 * self.eval_s if tps > 0 else len(self.reply.tokens) * 0.001
        prompt_ms = self.ask.prompt_tokens * PROMPT_MS_PER_TOKEN
        return LlamaTimings(self.ask.prompt_tokens, prompt_ms, len(self.reply.tokens), predicted_ms)

    def finish(self) -> None:
        """The whole reply is produced: counted by (requested, actual) model."""
        if self.ended:
            return
        self._end()
        stats = self.server.stats
        stats.completed += 1
        stats.generations[(self.ask.model, self.server.model)] += 1

    def abandon(self) -> None:
        """The generation ended without its reply: the client left, or the server stopped."""
        if self.ended:
            return
        self._end()
        if self.server.stopped:
            self.server.stats.dropped += 1

    def _end(self) -> None:
        self.ended = True
        if self.slot is not None:
            self.server.release_slot(self.slot)


async def _until_disconnected(request: Request) -> None:
    # The body is read, so the next message uvicorn delivers is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _forever() -> None:
    """A stalled stream: Starlette cancels it when the client disconnects."""
    await asyncio.get_running_loop().create_future()
