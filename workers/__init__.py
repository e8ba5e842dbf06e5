"""The worker that runs on each Mac: `celery -A workers worker -Q <server-id>`.

Imports nothing from `orchestrator`; installs alone.
"""

from workers.backends import (
    Backend,
    Inventory,
    ModelServersBackend,
    OllamaClient,
    OpenAIBackend,
    PoolBackend,
    build_backend,
)
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
    BackendError,
    ContextOverflow,
    GenerationTimeout,
    ModelMissing,
    OllamaError,
    ServerBusy,
    ServerError,
    ServerUnavailable,
    TunnelDown,
)
from workers.settings import WorkerSettings
from workers.version import __version__

__all__ = [
    "Backend",
    "BackendError",
    "ChatOutcome",
    "ChatRequest",
    "ChatTurn",
    "ContextOverflow",
    "ErrorKind",
    "GenerateJob",
    "GenerateResult",
    "GenerationTimeout",
    "Inventory",
    "JobState",
    "Keys",
    "ModelMissing",
    "ModelServersBackend",
    "OllamaClient",
    "OllamaError",
    "OpenAIBackend",
    "PoolBackend",
    "ServerBusy",
    "ServerError",
    "ServerRecord",
    "ServerUnavailable",
    "TunnelDown",
    "WorkerSettings",
    "__version__",
    "build_backend",
]
