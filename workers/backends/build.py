"""The backend a worker's settings choose (`OLLAMA_CLOUD_BACKEND`)."""

from __future__ import annotations

from typing import Any

from workers.backends.base import Backend
from workers.backends.ollama import OllamaClient
from workers.backends.openai import OpenAIBackend
from workers.backends.per_model import ModelServersBackend
from workers.backends.pool import PoolBackend
from workers.settings import WorkerSettings


def build_backend(settings: WorkerSettings, server_id: str = "") -> Backend:
    timeouts: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout_s,
        "read_timeout": settings.read_timeout_s,
    }
    if settings.backend == "ollama":
        return OllamaClient(settings.ollama_url, max_loaded=settings.max_loaded_models, **timeouts)
    # The llama.cpp kind: what a server does not tell of its models, the settings say.
    told = {
        **timeouts,
        "model_slots": settings.model_slots,
        "model_context": settings.model_context,
        "server_id": server_id,
    }
    if settings.backend == "pool":
        return PoolBackend(settings.pool_url, start_timeout_s=settings.pool_start_timeout_s, **told)
    max_loaded = settings.max_loaded_models
    if settings.backend == "models":
        return ModelServersBackend(settings.model_map, max_loaded=max_loaded, **told)
    return OpenAIBackend(settings.model_server_url, max_loaded=max_loaded, **told)
