"""Serving our ASGI apps (the local queue, the Ollama simulator) with uvicorn."""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp


def uvicorn_server(app: ASGIApp, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)


async def serve_all(servers: list[uvicorn.Server]) -> None:
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
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
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
