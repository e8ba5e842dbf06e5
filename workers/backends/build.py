"""The backend a worker's settings choose (`OLLAMA_CLOUD_BACKEND`)."""

from __future__ import annotations

from workers.backends.base import Backend
from workers.backends.ollama import OllamaClient
from workers.backends.openai import OpenAIBackend
from workers.backends.per_model import ModelServersBackend
from workers.backends.pool import PoolBackend
from workers.settings import WorkerSettings


def build_backend(settings: WorkerSettings, server_id: str = "") -> Backend:
    connect, read = settings.connect_timeout_s, settings.read_timeout_s
    if settings.backend == "openai":
        return OpenAIBackend(
            settings.model_server_url,
            connect_timeout=connect,
            read_timeout=read,
            model_slots=settings.model_slots,
            model_context=settings.model_context,
            max_loaded=settings.max_loaded_models,
            server_id=server_id,
        )
    if settings.backend == "models":
        return ModelServersBackend(
            settings.model_map,
            connect_timeout=connect,
            read_timeout=read,
            model_slots=settings.model_slots,
            model_context=settings.model_context,
            max_loaded=settings.max_loaded_models,
            server_id=server_id,
        )
    if settings.backend == "pool":
        return PoolBackend(
            settings.pool_url,
            connect_timeout=connect,
            read_timeout=read,
            start_timeout_s=settings.pool_start_timeout_s,
            model_slots=settings.model_slots,
            model_context=settings.model_context,
            server_id=server_id,
        )
    return OllamaClient(
        settings.ollama_url,
        connect_timeout=connect,
        read_timeout=read,
        max_loaded=settings.max_loaded_models,
    )
