"""The simulated server's routes: Ollama's API, its OpenAI-compatible part, and `/sim/...`."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from standins.simulator.errors import ApiError
from standins.simulator.faults import Faults, FaultsBody, changed_faults
from standins.simulator.models import (
    MAX_NUM_CTX,
    canonical_model,
    model_details,
    parameter_billions,
)
from standins.simulator.requests import (
    Ask,
    chat_ask,
    generate_ask,
    json_object,
    openai_ask,
    validated,
)
from standins.simulator.stats import SimStats
from standins.simulator.times import rfc3339
from standins.simulator.wire import GenerateWire, OpenAIWire, Wire

if TYPE_CHECKING:
    from standins.simulator.server import SimulatedOllama

OLLAMA_VERSION = "0.12.3"


class LoadedBody(BaseModel):
    models: list[str]


def build_app(sim: SimulatedOllama) -> Starlette:
    """The simulated server's ASGI app; every bad input answers 4xx, never 500."""

    def generation(
        parse: Callable[[dict[str, Any]], Ask], wire_type: type[Wire]
    ) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                ask = parse(await json_object(request))
                return await sim.generate(ask, wire_type(ask), request)
            except ApiError as exc:
                return wire_type.error(exc)

        return endpoint

    def plain(
        handler: Callable[[Request], Coroutine[Any, Any, Response]],
    ) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)

        return endpoint

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": sim.tags()})

    async def ps(request: Request) -> Response:
        return JSONResponse({"models": sim.processes()})

    async def pull(request: Request) -> Response:
        body = await json_object(request)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "model is required")
        statuses = sim.pull(canonical_model(name.strip()))
        if body.get("stream", True) is False:
            return JSONResponse(statuses[-1])
        lines = b"".join(json.dumps(status).encode() + b"\n" for status in statuses)
        return Response(lines, media_type="application/x-ndjson")

    async def show(request: Request) -> Response:
        body = await json_object(request)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "model is required")
        model = canonical_model(name.strip())
        if model not in sim.installed:
            raise ApiError(404, f"model '{model}' not found")
        details = model_details(model)
        return JSONResponse(
            {
                "license": "",
                "modelfile": f"FROM {model}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {
                    "general.architecture": details["family"],
                    "general.parameter_count": int(parameter_billions(model) * 1e9),
                    f"{details['family']}.context_length": MAX_NUM_CTX,
                },
                "capabilities": ["completion"],
                "modified_at": rfc3339(sim.installed[model]),
            }
        )

    async def openai_models(request: Request) -> Response:
        models = [
            {"id": name, "object": "model", "created": int(installed_at), "owned_by": "library"}
            for name, installed_at in sim.installed.items()
        ]
        return JSONResponse({"object": "list", "data": models})

    async def sim_stats(request: Request) -> Response:
        return JSONResponse(sim.stats_report())

    async def sim_faults(request: Request) -> Response:
        change = validated(FaultsBody, await json_object(request))
        sim.faults = changed_faults(sim.faults, change, canonical_model)
        return JSONResponse(asdict(sim.faults))

    async def sim_reset(request: Request) -> Response:
        sim.stats = SimStats(max_active=sim.active)
        sim.faults = Faults()
        return JSONResponse(sim.stats_report())

    async def sim_loaded(request: Request) -> Response:
        wanted = [
            canonical_model(name)
            for name in validated(LoadedBody, await json_object(request)).models
        ]
        missing = [name for name in wanted if name not in sim.installed]
        if missing:
            raise ApiError(400, f"not installed: {', '.join(missing)}")
        if len(wanted) > sim.spec.max_loaded_models:
            raise ApiError(400, f"more than max_loaded_models={sim.spec.max_loaded_models}")
        sim.set_loaded(wanted)
        return JSONResponse({"models": sim.processes()})

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/chat", generation(chat_ask, Wire), methods=["POST"]),
        Route("/api/generate", generation(generate_ask, GenerateWire), methods=["POST"]),
        Route("/api/pull", plain(pull), methods=["POST"]),
        Route("/api/show", plain(show), methods=["POST"]),
        Route("/v1/models", openai_models, methods=["GET"]),
        Route("/v1/chat/completions", generation(openai_ask, OpenAIWire), methods=["POST"]),
        Route("/sim/stats", sim_stats, methods=["GET"]),
        Route("/sim/faults", plain(sim_faults), methods=["POST"]),
        Route("/sim/reset", sim_reset, methods=["POST"]),
        Route("/sim/loaded", plain(sim_loaded), methods=["POST"]),
    ]
    return Starlette(routes=routes)
