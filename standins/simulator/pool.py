"""The operator's pool manager, simulated: it starts one llama-server per model on demand, each
on its own loopback port and on this event loop, and keeps at most `max_servers` of them.

It reproduces the pool as its own docs describe it (operator.md §7), hazards included:

- "Recently used" counts only `/get-server` calls: inference goes straight to a server's port,
  so eviction and the idle timeout stop servers that are answering, and their clients see the
  connection close with no complete response.
- An evicted server's port is reused by the next start, so a client holding a cached port
  reaches another model, which answers anyway (echoing the request's model name).
- A server enters the table only once its start finishes, and the capacity check skips servers
  still starting: two calls for the same cold model each start a server, one of which leaks
  (never evicted nor stopped) and the pool can exceed `max_servers`. `hazards=off` makes a call
  wait for a start already under way and counts starting servers against the capacity.

`/status` lists the servers still starting too (status "starting"), which the real table does
not: a router wants to know what is loading. Leaked servers are in no list, as in the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from standins.embedded_redis import free_port
from standins.http_server import PromptServer, quiet_config
from standins.simulator.errors import ApiError
from standins.simulator.llama_server import SimulatedLlamaServer
from standins.simulator.pool_app import build_pool_app
from standins.simulator.spec import SimServerSpec
from standins.simulator.stats import PoolStats, generations_report

log = logging.getLogger(__package__)  # the simulator logs as one: standins.simulator

HEALTH_POLL_S = 0.05  # how often a cold start asks its server's /health
STOP_TIMEOUT_S = 5.0


class ChildServer(PromptServer):
    """A pool's llama-server. The pool's own server handles signals; a child stops with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def kill(self) -> None:
        """Stop at once, as a killed process does: every open connection is cut."""
        for connection in list(self.server_state.connections):
            connection.transport.abort()
        self.exit_soon()


def child_server(server: SimulatedLlamaServer, host: str, port: int) -> ChildServer:
    return ChildServer(quiet_config(server.app, host, port))


@dataclass
class PoolServer:
    """One llama-server the pool started: its model, port, and when /get-server last named it."""

    model: str
    port: int
    llama: SimulatedLlamaServer
    http: ChildServer
    task: asyncio.Task[bool]
    last_used: float = field(default_factory=time.time)
    started_at: float = field(default_factory=time.time)
    stopped: bool = False

    def touch(self) -> None:
        self.last_used = time.time()

    @property
    def busy(self) -> bool:
        return self.llama.active > 0 or self.llama.queued > 0

    def status_entry(self, status: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "port": self.port,
            "lastUsed": int(self.last_used * 1000),
            "startedAt": int(self.started_at * 1000),
            "status": status,
            "slots": self.llama.spec.parallel,
            "nCtx": self.llama.n_ctx,
        }


class PoolError(ApiError):
    """A pool manager error, answered as `{"error": message}`."""


class SimulatedPool:
    """The pool manager: its table of ready servers, the starts under way, the leaked servers,
    the freed ports, and the counts."""

    def __init__(self, spec: SimServerSpec) -> None:
        if spec.kind != "pool":
            raise ValueError(f"{spec.name}: a pool needs a pool spec, not {spec.kind}")
        self.spec = spec
        self.table: dict[str, PoolServer] = {}  # ready servers by model: the real pool's state
        self.starting: list[PoolServer] = []
        self.leaked: list[PoolServer] = []
        self.free_ports: deque[int] = deque()
        self.stats = PoolStats()
        self._starts: dict[str, asyncio.Task[PoolServer]] = {}  # hazards off: one per model
        self._start_tasks: set[asyncio.Task[PoolServer]] = set()
        self._llamas: list[SimulatedLlamaServer] = []  # every server ever started, for stats
        self.app = build_pool_app(self)

    # /get-server

    async def get_server(self, model: str) -> dict[str, Any]:
        self.stats.get_server_calls += 1
        if model not in self.spec.models:
            self.stats.unknown_models += 1
            raise PoolError(404, f"Model not found: {model}")
        entry = self.table.get(model)
        if entry is None:
            pending = None if self.spec.hazards else self._starts.get(model)
            if pending is not None:
                self.stats.joined_starts += 1
            else:
                pending = await self._cold_start(model)
            entry = await asyncio.shield(pending)
        entry.touch()
        return {"port": entry.port, "status": "ready"}

    async def _cold_start(self, model: str) -> asyncio.Task[PoolServer]:
        self.stats.cold_starts += 1
        self.stats.cold_starts_per_model[model] += 1
        await self._make_room()
        entry = self._launch(model, self.spec.load_seconds_of(model))
        # The start goes on when the caller gives up, as the real pool keeps loading.
        start = asyncio.create_task(self._finish_start(entry))
        self._start_tasks.add(start)
        start.add_done_callback(self._start_tasks.discard)
        start.add_done_callback(_seen)  # a failure no caller is left to read is not an error
        if not self.spec.hazards:
            self._starts[model] = start
            start.add_done_callback(lambda _: self._starts.pop(model, None))
        return start

    async def _make_room(self) -> None:
        """Evict the least recently used ready servers until a new one fits. With hazards on,
        servers still starting are not counted, as in the real pool."""
        while self.table and self._counted() >= self.spec.max_servers:
            oldest = min(self.table.values(), key=lambda entry: entry.last_used)
            self.stats.evictions += 1
            await self._stop(oldest, "evicted (least recently used)", eviction=True)

    def _counted(self) -> int:
        return len(self.table) + (0 if self.spec.hazards else len(self.starting))

    def _take_port(self) -> int:
        return self.free_ports.popleft() if self.free_ports else free_port(self.spec.host)

    def _launch(self, model: str, load_seconds: float) -> PoolServer:
        """Start a llama-server for `model` on a port; it loads for `load_seconds`."""
        port = self._take_port()
        spec = SimServerSpec(
            name=f"{self.spec.name}/{model}@{port}",
            kind="llamacpp",
            host=self.spec.host,
            port=port,
            models=[model],
            tokens_per_second=self.spec.tokens_per_second,
            load_seconds=load_seconds,
            parallel=self.spec.slot_count(model),
            context_length=self.spec.context_length,
        )
        llama = SimulatedLlamaServer(spec)
        http = child_server(llama, self.spec.host, port)
        entry = PoolServer(model, port, llama, http, asyncio.create_task(_run_child(llama, http)))
        self.starting.append(entry)
        self._llamas.append(llama)
        self.stats.servers_started_per_model[model] += 1
        self.stats.max_servers_running = max(self.stats.max_servers_running, self.running())
        log.info(
            "pool=%s model=%s starting a llama-server on port %d (%d slots, loads %.1fs)",
            self.spec.name,
            model,
            port,
            spec.parallel,
            load_seconds,
        )
        return entry

    async def _finish_start(self, entry: PoolServer) -> PoolServer:
        try:
            await self._wait_healthy(entry)
        except BaseException:
            self.stats.start_failures += 1
            await self._stop(entry, "failed to start", eviction=False)
            raise
        finally:
            if entry in self.starting:
                self.starting.remove(entry)
        previous = self.table.get(entry.model)
        if previous is not None and previous is not entry:
            # The table keeps one server per model: the one it replaces runs on, unmanaged.
            self.leaked.append(previous)
            self.stats.leaked_servers += 1
            log.warning(
                "pool=%s model=%s server on port %d leaked: replaced by port %d",
                self.spec.name,
                entry.model,
                previous.port,
                entry.port,
            )
        self.table[entry.model] = entry
        log.info("pool=%s model=%s ready on port %d", self.spec.name, entry.model, entry.port)
        return entry

    async def _wait_healthy(self, entry: PoolServer) -> None:
        deadline = time.monotonic() + self.spec.health_timeout_seconds
        host = "127.0.0.1" if self.spec.host in ("0.0.0.0", "") else self.spec.host
        url = f"http://{host}:{entry.port}/health"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if entry.task.done():
                    raise PoolError(500, f"llama-server for {entry.model} exited while starting")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise PoolError(
                        504,
                        f"Timeout waiting for {entry.model} to become healthy "
                        f"({self.spec.health_timeout_seconds:g}s)",
                    )
                await asyncio.sleep(HEALTH_POLL_S)

    # Stopping servers.

    async def _stop(self, entry: PoolServer, reason: str, *, eviction: bool) -> None:
        """Stop a server like killing its process; its port becomes free for the next start.
        An eviction (for room, on request, or idle) of a server that is answering is counted."""
        if entry.stopped:
            return
        entry.stopped = True
        if self.table.get(entry.model) is entry:
            del self.table[entry.model]
        busy = entry.busy
        if busy and eviction:
            self.stats.busy_evictions += 1
        log.info(
            "pool=%s model=%s port=%d stopped: %s%s",
            self.spec.name,
            entry.model,
            entry.port,
            reason,
            " while answering" if busy else "",
        )
        entry.llama.stop()
        entry.http.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(entry.task), STOP_TIMEOUT_S)
        self.free_ports.append(entry.port)

    async def evict(self, model: str) -> dict[str, Any]:
        """Stop the model's server now (the tests' "eviction in the middle of a reply")."""
        entry = self.table.get(model)
        if entry is None:
            raise PoolError(404, f"No running server for {model}")
        busy = entry.busy
        self.stats.forced_evictions += 1
        await self._stop(entry, "evicted on request", eviction=True)
        return {"evicted": model, "port": entry.port, "busy": busy}

    async def _stop_idle(self) -> None:
        """Every `idle_check_seconds`: stop the servers no /get-server named for `idle_seconds`."""
        while True:
            await asyncio.sleep(self.spec.idle_check_seconds)
            now = time.time()
            for entry in list(self.table.values()):
                if now - entry.last_used >= self.spec.idle_seconds:
                    self.stats.idle_stops += 1
                    await self._stop(entry, f"idle {now - entry.last_used:.1f}s", eviction=True)

    async def run(self, http: PromptServer) -> None:
        """Serve until told to exit; then stop every server this pool started."""
        idle = asyncio.create_task(self._stop_idle())
        try:
            for model in self.spec.loaded:  # started with the pool, already loaded
                await self._finish_start(self._launch(model, 0.0))
            await http.serve()
        finally:
            idle.cancel()
            for start in list(self._start_tasks):
                start.cancel()
            for entry in [*self.table.values(), *self.starting, *self.leaked]:
                await self._stop(entry, "pool shut down", eviction=False)
            with contextlib.suppress(asyncio.CancelledError):
                await idle

    # Reports.

    def running(self) -> int:
        leaked = sum(1 for entry in self.leaked if not entry.stopped)
        return len(self.table) + len(self.starting) + leaked

    def status(self) -> dict[str, Any]:
        ready = sorted(self.table.values(), key=lambda entry: entry.port)
        return {
            "poolSize": len(self.table),
            "maxServers": self.spec.max_servers,
            "totalModels": len(self.spec.models),
            "servers": [entry.status_entry("ready") for entry in ready]
            + [entry.status_entry("starting") for entry in self.starting],
        }

    def stats_report(self) -> dict[str, Any]:
        counts = {
            name: value for name, value in vars(self.stats).items() if not isinstance(value, dict)
        }
        max_active: dict[str, int] = {}
        max_queued: dict[str, int] = {}
        generations: Counter[tuple[str, str]] = Counter()
        for llama in self._llamas:
            max_active[llama.model] = max(max_active.get(llama.model, 0), llama.stats.max_active)
            max_queued[llama.model] = max(max_queued.get(llama.model, 0), llama.stats.max_queued)
            generations.update(llama.stats.generations)
        return {
            **counts,
            "cold_starts_per_model": dict(self.stats.cold_starts_per_model),
            "servers_started_per_model": dict(self.stats.servers_started_per_model),
            "max_active_per_model": max_active,
            # Requests a model's server held waiting for a slot: more than its slots at once.
            "max_queued_per_model": max_queued,
            "running_servers": self.running(),
            "pool_size": len(self.table),
            "starting": len(self.starting),
            "leaked_ports": [entry.port for entry in self.leaked if not entry.stopped],
            "free_ports": list(self.free_ports),
            "requests": sum(llama.stats.requests for llama in self._llamas),
            "completed": sum(llama.stats.completed for llama in self._llamas),
            "dropped": sum(llama.stats.dropped for llama in self._llamas),
            **generations_report(generations),
        }


def _seen(task: asyncio.Task[PoolServer]) -> None:
    if not task.cancelled():
        task.exception()


async def _run_child(llama: SimulatedLlamaServer, http: ChildServer) -> bool:
    """Serve one child until it is stopped; False when it could not start (its port taken)."""
    try:
        await llama.run(http)
    except SystemExit:  # uvicorn exits when it cannot listen on its port
        log.warning("server=%s could not start", llama.spec.name)
        return False
    return http.started
