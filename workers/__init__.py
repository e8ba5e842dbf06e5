"""The worker that runs on each Mac: `celery -A workers worker -Q <server-id>`.

Imports nothing from `orchestrator`; installs alone.
"""

from workers.backends.ollama import OllamaClient
from workers.contract.job import JobState
from workers.contract.keys import Keys
from workers.contract.protocol import (
    ChatOutcome,
    ChatRequest,
    ChatTurn,
    ErrorKind,
    GenerateJob,
    GenerateResult,
)
from workers.contract.server_record import ServerRecord
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
    "ErrorKind",
    "GenerateJob",
    "GenerateResult",
    "GenerationTimeout",
    "JobState",
    "Keys",
    "ModelMissing",
    "OllamaClient",
    "OllamaError",
    "ServerBusy",
    "ServerError",
    "ServerRecord",
    "ServerUnavailable",
    "WorkerSettings",
    "__version__",
]
