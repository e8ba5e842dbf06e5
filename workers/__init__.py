"""The worker that runs on each Mac: `celery -A workers worker -Q <server-id>`.

Imports nothing from `orchestrator`; installs alone.
"""

from workers.backends.ollama import OllamaClient
from workers.contract.keys import Keys
from workers.contract.protocol import (
    ChatOutcome,
    ChatRequest,
    ChatTurn,
    GenerateJob,
    GenerateResult,
)
from workers.errors import (
    ContextOverflow,
    GenerationTimeout,
    ModelMissing,
    OllamaError,
    ServerBusy,
    ServerError,
    ServerUnavailable,
)
from workers.settings import WorkerSettings
from workers.version import __version__

__all__ = [
    "ChatOutcome",
    "ChatRequest",
    "ChatTurn",
    "ContextOverflow",
    "GenerateJob",
    "GenerateResult",
    "GenerationTimeout",
    "Keys",
    "ModelMissing",
    "OllamaClient",
    "OllamaError",
    "ServerBusy",
    "ServerError",
    "ServerUnavailable",
    "WorkerSettings",
    "__version__",
]
