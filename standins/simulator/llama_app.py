"""The simulated llama-server's routes: llama.cpp's own (/health, /props, /slots), its
OpenAI-compatible ones (/v1/models, /v1/chat/completions), and `/sim/...`.

While the model loads, everything but /health, the model lists and `/sim/...` answers 503
"Loading model", as llama-server does.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from standins.simulator.errors import ApiError
from standins.simulator.faults import Faults, FaultsBody, changed_faults
from standins.simulator.llama_wire import LlamaError, loading_error
from standins.simulator.requests import json_object, validated
from standins.simulator.stats import LlamaStats

if TYPE_CHECKING:
    from standins.simulator.llama_server import SimulatedLlamaServer

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def build_llama_app(server: SimulatedLlamaServer) -> Starlette:
    """The simulated llama-server's ASGI app; errors are written as llama-server writes them."""

    def route(handler: Endpoint, *, while_loading: bool = False) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                if not while_loading and not server.ready:
                    raise loading_error()
                return await handler(request)
            except ApiError as exc:
                return LlamaError.of(exc).response()

        return endpoint

    async def health(request: Request) -> Response:
        if not server.ready:
            raise loading_error()
        return JSONResponse({"status": "ok"})

    async def props(request: Request) -> Response:
        return JSONResponse(server.props())

    async def slots(request: Request) -> Response:
        fail_on_no_slot = request.query_params.get("fail_on_no_slot") in ("1", "true")
        if fail_on_no_slot and server.active == len(server.slots):
            raise LlamaError(503, "no slot available")
        return JSONResponse(server.slot_reports())

    async def models(request: Request) -> Response:
        return JSONResponse(server.models())

    async def chat(request: Request) -> Response:
        return await server.chat(await json_object(request), request)

    async def sim_stats(request: Request) -> Response:
        return JSONResponse(server.stats_report())

    async def sim_faults(request: Request) -> Response:
        server.faults = changed_faults(
            server.faults, validated(FaultsBody, await json_object(request))
        )
        return JSONResponse(asdict(server.faults))

    async def sim_reset(request: Request) -> Response:
        server.stats = LlamaStats(max_active=server.active)
        server.faults = Faults()
        return JSONResponse(server.stats_report())

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return LlamaError(status, "File Not Found" if status == 404 else str(exc)).response()

    routes = [
        Route("/health", route(health, while_loading=True), methods=["GET"]),
        Route("/v1/health", route(health, while_loading=True), methods=["GET"]),
        Route("/props", route(props), methods=["GET"]),
        Route("/slots", route(slots), methods=["GET"]),
        Route("/models", route(models, while_loading=True), methods=["GET"]),
        Route("/v1/models", route(models, while_loading=True), methods=["GET"]),
        # A chat checks the loading state itself, to count what it refuses.
        Route("/chat/completions", route(chat, while_loading=True), methods=["POST"]),
        Route("/v1/chat/completions", route(chat, while_loading=True), methods=["POST"]),
        Route("/sim/stats", route(sim_stats, while_loading=True), methods=["GET"]),
        Route("/sim/faults", route(sim_faults, while_loading=True), methods=["POST"]),
        Route("/sim/reset", route(sim_reset, while_loading=True), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
