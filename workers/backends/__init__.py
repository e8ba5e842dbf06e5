"""The model servers a worker can call; each maps its library's errors to ours once."""

from workers.backends.base import Backend, Inventory
from workers.backends.build import build_backend
from workers.backends.model_server import ModelServer
from workers.backends.ollama import OllamaClient
from workers.backends.openai import OpenAIBackend
from workers.backends.per_model import ModelServersBackend
from workers.backends.pool import PoolBackend

__all__ = [
    "Backend",
    "Inventory",
    "ModelServer",
    "ModelServersBackend",
    "OllamaClient",
    "OpenAIBackend",
    "PoolBackend",
    "build_backend",
]
