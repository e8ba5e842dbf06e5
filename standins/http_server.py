"""Serving our ASGI apps (the local queue, the Ollama simulator) with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp


class PromptServer(uvicorn.Server):
    """uvicorn's server, which stops the moment it is told to, not at its next tick, and does
    not linger once its connections are closed: the tests start and stop hundreds."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._told = asyncio.Event()
        self.serving = threading.Event()  # set once it listens, or once it gave up starting

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.serving.set()

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._told.wait(), 0.1)

    def exit_soon(self) -> None:
        """Stop serving; safe from any thread."""
        self.should_exit = True
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._told.set)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0)
        while (self.server_state.connections or self.server_state.tasks) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.005)
        for task in self.server_state.tasks:
            task.cancel()
        for server in self.servers:
            await server.wait_closed()


def quiet_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    """A stand-in's uvicorn settings: no access log, no lifespan, a quick graceful stop."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )


def uvicorn_server(app: ASGIApp, host: str, port: int) -> PromptServer:
    return PromptServer(quiet_config(app, host, port))


async def serve_all(servers: list[PromptServer]) -> None:
    """Run several uvicorn servers on one event loop until cancelled or told to exit."""
    await asyncio.gather(*(server.serve() for server in servers))


class ThreadedServer:
    """One ASGI app served from a background thread, for tests and in-process use."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        if port == 0:
            from standins.embedded_redis import free_port  # noqa: PLC0415

            port = free_port(host)
        self.host = host
        self.port = port
        self.server = uvicorn_server(app, host, port)
        self.thread = threading.Thread(target=self.server.run, name=f"http-{port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        self.server.serving.wait(timeout)
        if not self.server.started:
            raise RuntimeError(f"server on port {self.port} did not start")

    def stop(self) -> None:
        self.server.exit_soon()
        self.thread.join(timeout=10)

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
