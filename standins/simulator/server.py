"""One simulated Ollama server: slots, model loading and keep-alive, faults, generation, reports."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from standins.simulator.app import build_app
from standins.simulator.errors import BUSY_MESSAGE, CONTEXT_MESSAGE, ApiError, default_error
from standins.simulator.faults import SIM_ERROR, Faults
from standins.simulator.models import model_details, model_digest, model_size
from standins.simulator.replies import Reply, compose_reply
from standins.simulator.requests import Ask
from standins.simulator.spec import SimServerSpec
from standins.simulator.stats import SimStats
from standins.simulator.times import DEFAULT_KEEP_ALIVE_S, rfc3339
from standins.simulator.wire import ReleasingStream, Timings, Wire

log = logging.getLogger(__package__)  # the simulator logs as one: standins.simulator

# Ollama reports a few milliseconds of load_duration even for a loaded model (finding its
# runner); a cold load reports the whole load.
WARM_LOAD_S = 0.003


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
            return ApiError(status, default_error(status, ask.model))
        if self.faults.fail_next > 0:
            self.faults.fail_next -= 1
            self.stats.failures_injected += 1
            status = self.faults.status
            return ApiError(status, self.faults.error or default_error(status, ask.model))
        return None

    async def hang_if_told(self, model: str, request: Request) -> None:
        if self.faults.hang_next <= 0 or self.faults.hang_model not in (None, model):
            return
        self.faults.hang_next -= 1
        self.stats.failures_injected += 1
        log.warning("server=%s hanging a request until its client gives up", self.spec.name)
        await _until_disconnected(request)
        raise ApiError(500, "client disconnected")

    def stall_if_told(self, model: str) -> int | None:
        """How many tokens this stream sends before it stalls; None: it does not stall."""
        stall_after = self.faults.take_stall(model, self.spec.name)
        if stall_after is not None:
            self.stats.failures_injected += 1
        return stall_after

    # One generation request, end to end.

    async def generate(self, ask: Ask, wire: Wire, request: Request) -> Response:
        started = time.monotonic()
        self.stats.requests += 1
        if ask.model not in self.installed:
            raise ApiError(404, default_error(404, ask.model))
        self.stats.model(ask.model).requests += 1
        if ask.load_only:
            return await self._load_only(ask, wire)
        injected = self.injected_error(ask)
        if injected is not None:
            log.warning(
                "server=%s injected HTTP %d: %s", self.spec.name, injected.status, injected.message
            )
            raise injected
        await self.hang_if_told(ask.model, request)
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
            load_s = max(await self.ensure_loaded(ask.model, ask.keep_alive), WARM_LOAD_S)
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
            return await self._start_stream(ask, reply, wire, timings, holding, request)
        try:
            if tps > 0:
                await asyncio.sleep(eval_s)
        except BaseException:
            holding.release(completed=False)
            raise
        holding.release(completed=True, eval_tokens=len(reply.tokens))
        return JSONResponse(wire.whole(reply, timings()))

    async def _start_stream(
        self,
        ask: Ask,
        reply: Reply,
        wire: Wire,
        timings: Callable[[], Timings],
        holding: _SlotHold,
        request: Request,
    ) -> Response:
        """A streamed answer whose headers go out with its first chunk, as Ollama's do (Go
        flushes them on the first write): until the model is loaded and the first token is out,
        the client has received nothing, and errors until then are plain HTTP errors."""
        stall_after = self.stall_if_told(ask.model)
        chunks = self._stream(reply, wire, timings, holding, stall_after)
        try:
            if stall_after == 0:  # stalled before the first chunk: not even headers are sent
                await _until_disconnected(request)
                raise ApiError(500, "client disconnected")
            first = await anext(chunks)
        except BaseException:
            holding.release(completed=False)
            await chunks.aclose()
            raise
        return ReleasingStream(
            _resumed(first, chunks), wire.media_type, lambda: holding.release(completed=False)
        )

    async def _stream(
        self,
        reply: Reply,
        wire: Wire,
        timings: Callable[[], Timings],
        holding: _SlotHold,
        stall_after: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        tps = self.spec.tokens_per_second
        began = time.monotonic()
        for index, token in enumerate(reply.tokens):
            if index == stall_after:
                await _forever()
            if tps > 0:  # spread generation over the chunks, without drifting
                delay = began + (index + 1) / tps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield wire.encode(wire.chunk(token))
        if stall_after is not None:  # as many tokens as the reply has, then no end
            await _forever()
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
                "modified_at": rfc3339(installed_at),
                "size": model_size(name),
                "digest": model_digest(name),
                "details": model_details(name),
            }
            for name, installed_at in self.installed.items()
        ]

    def processes(self) -> list[dict[str, Any]]:
        self.prune_expired()
        return [
            {
                "name": name,
                "model": name,
                "size": model_size(name),
                "digest": model_digest(name),
                "details": model_details(name),
                "expires_at": rfc3339(expires_at),
                "size_vram": model_size(name),
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
        size, digest = model_size(model), model_digest(model)
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


async def _until_disconnected(request: Request) -> None:
    # The body is read, so the next message uvicorn delivers is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _forever() -> None:
    """A stalled stream: Starlette cancels it when the client disconnects."""
    await asyncio.get_running_loop().create_future()


async def _resumed(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """The stream again, its first chunk (awaited before the headers went out) included."""
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


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
