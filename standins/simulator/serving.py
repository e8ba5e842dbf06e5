"""Serving simulated servers of every kind (Ollama, llama-server, pool manager): on the caller's
event loop (`serve`), or from a background thread for tests (`SimulatorFleet`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from types import TracebackType

from standins.embedded_redis import free_port
from standins.http_server import PromptServer, uvicorn_server
from standins.simulator.llama_server import SimulatedLlamaServer
from standins.simulator.pool import SimulatedPool
from standins.simulator.server import SimulatedOllama
from standins.simulator.spec import SimServerSpec
from standins.waiting import wait_for

log = logging.getLogger(__package__)  # the simulator logs as one: standins.simulator

Simulated = SimulatedOllama | SimulatedLlamaServer | SimulatedPool


def _with_port(spec: SimServerSpec) -> SimServerSpec:
    return spec if spec.port else spec.model_copy(update={"port": free_port(spec.host)})


def simulated(spec: SimServerSpec) -> Simulated:
    """The simulated server a spec describes, not yet serving."""
    if spec.kind == "pool":
        return SimulatedPool(spec)
    if spec.kind == "llamacpp":
        return SimulatedLlamaServer(spec)
    return SimulatedOllama(spec)


async def _run(sim: Simulated, http: PromptServer) -> None:
    if isinstance(sim, SimulatedOllama):
        await http.serve()
    else:
        await sim.run(http)


def _servers(specs: list[SimServerSpec]) -> tuple[dict[str, Simulated], list[PromptServer]]:
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"simulated server names must be unique: {names}")
    sims = {spec.name: simulated(spec) for spec in specs}
    servers = [uvicorn_server(sims[spec.name].app, spec.host, spec.port) for spec in specs]
    return sims, servers


async def _serve_all(sims: dict[str, Simulated], servers: list[PromptServer]) -> None:
    await asyncio.gather(
        *(_run(sim, http) for sim, http in zip(sims.values(), servers, strict=True))
    )


async def serve(specs: list[SimServerSpec]) -> None:
    """Serve every simulated server on this event loop until cancelled (then shut down cleanly)."""
    specs = [_with_port(spec) for spec in specs]
    sims, servers = _servers(specs)
    for spec in specs:
        log.info(
            "server=%s kind=%s serving on http://%s:%d", spec.name, spec.kind, spec.host, spec.port
        )
    running = asyncio.ensure_future(_serve_all(sims, servers))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        for server in servers:
            server.exit_soon()
        await running
        raise


class SimulatorFleet:
    """Simulated servers served from one background thread and event loop, for tests.

    `sims[name]` is the simulated server (SimulatedOllama, SimulatedLlamaServer or
    SimulatedPool); read its state over HTTP (`/sim/stats`), as it lives on another thread.
    """

    def __init__(self, specs: list[SimServerSpec]) -> None:
        self.specs = [_with_port(spec) for spec in specs]
        self.sims, self._servers = _servers(self.specs)
        self.urls = {spec.name: f"http://{spec.host}:{spec.port}" for spec in self.specs}
        self._thread = threading.Thread(target=self._run, name="simulators", daemon=True)

    def _run(self) -> None:
        asyncio.run(_serve_all(self.sims, self._servers))

    def start(self, timeout: float = 10.0) -> SimulatorFleet:
        self._thread.start()
        with contextlib.suppress(TimeoutError):
            wait_for(
                lambda: (
                    all(server.started for server in self._servers) or not self._thread.is_alive()
                ),
                timeout,
                what="simulated servers to start",
            )
        if not all(server.started for server in self._servers):
            self.stop()
            raise RuntimeError(f"simulated servers did not start: {self.urls}")
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.exit_soon()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> SimulatorFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
