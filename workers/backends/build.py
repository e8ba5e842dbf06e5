"""The backend a worker's settings choose (`OLLAMA_CLOUD_BACKEND`)."""

from __future__ import annotations

from typing import Any

from workers.backends.base import Backend
from workers.backends.ollama import OllamaClient
from workers.backends.openai import OpenAIBackend
from workers.backends.per_model import ModelServersBackend
from workers.backends.pool import PoolBackend
from workers.settings import WorkerSettings
from workers.transport import Links, SshOptions, Tunnels


def ssh_options(settings: WorkerSettings) -> SshOptions:
    """How the worker's `ssh://` addresses are connected, as its settings say."""
    return SshOptions(
        config=settings.ssh_config,
        known_hosts=settings.ssh_known_hosts,
        keepalive_s=settings.ssh_keepalive_s,
    )


def build_backend(
    settings: WorkerSettings, server_id: str = "", tunnels: Tunnels | None = None
) -> Backend:
    """The backend of `settings`. Its `ssh://` addresses get tunnels of their own, or of
    `tunnels` when given (one process serving many nodes shares one set, and closes it)."""
    links = Links(
        ssh_options(settings),
        tunnels=tunnels,
        connect_wait_s=settings.connect_timeout_s,
        server_id=server_id,
    )
    timeouts: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout_s,
        "read_timeout": settings.read_timeout_s,
        "links": links,
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
