"""The simulated pool manager's routes: the real pool's (/get-server, /status, /models, /health)
and `/sim/...` (stats, and an eviction on request)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from standins.simulator.errors import ApiError

if TYPE_CHECKING:
    from standins.simulator.pool import SimulatedPool

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def build_pool_app(pool: SimulatedPool) -> Starlette:
    """The pool manager's ASGI app; its errors are `{"error": message}`."""

    def route(handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)

        return endpoint

    def model_parameter(request: Request) -> str:
        model = request.query_params.get("model", "").strip()
        if not model:
            raise ApiError(400, "model parameter is required")
        return model

    async def get_server(request: Request) -> Response:
        return JSONResponse(await pool.get_server(model_parameter(request)))

    async def status(request: Request) -> Response:
        return JSONResponse(pool.status())

    async def models(request: Request) -> Response:
        return JSONResponse({"models": list(pool.spec.models), "count": len(pool.spec.models)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def sim_stats(request: Request) -> Response:
        return JSONResponse(pool.stats_report())

    async def sim_evict(request: Request) -> Response:
        return JSONResponse(await pool.evict(model_parameter(request)))

    routes = [
        Route("/get-server", route(get_server), methods=["GET"]),
        Route("/status", route(status), methods=["GET"]),
        Route("/models", route(models), methods=["GET"]),
        Route("/health", route(health), methods=["GET"]),
        Route("/sim/stats", route(sim_stats), methods=["GET"]),
        Route("/sim/evict", route(sim_evict), methods=["POST"]),
    ]
    return Starlette(routes=routes)
