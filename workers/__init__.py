"""The worker that runs on each Mac: `celery -A workers worker -Q <server-id>`.

Imports nothing from `orchestrator`; installs alone. The names below are imported when first
asked for, so a process that needs one small part (a supervisor, the log format) does not load
the backends and Celery with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOME = {
    "Backend": "workers.backends",
    "BackendError": "workers.errors",
    "ChatOutcome": "workers.contract.protocol",
    "ChatRequest": "workers.contract.protocol",
    "ChatTurn": "workers.contract.protocol",
    "ContextOverflow": "workers.errors",
    "ErrorKind": "workers.contract.protocol",
    "GenerateJob": "workers.contract.protocol",
    "GenerateResult": "workers.contract.protocol",
    "GenerationTimeout": "workers.errors",
    "Inventory": "workers.backends",
    "JobState": "workers.contract.job",
    "Keys": "workers.contract.keys",
    "ModelMissing": "workers.errors",
    "ModelServersBackend": "workers.backends",
    "OllamaClient": "workers.backends",
    "OllamaError": "workers.errors",
    "OpenAIBackend": "workers.backends",
    "PoolBackend": "workers.backends",
    "ServerBusy": "workers.errors",
    "ServerError": "workers.errors",
    "ServerRecord": "workers.contract.server_record",
    "ServerUnavailable": "workers.errors",
    "TunnelDown": "workers.errors",
    "WorkerSettings": "workers.settings",
    "__version__": "workers.version",
    "build_backend": "workers.backends",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


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
