"""The worker's exception tree: callers catch by meaning, not by HTTP library."""

from __future__ import annotations


class OllamaError(Exception):
    """A chat request that an Ollama server did not answer."""

    kind = "ollama_error"


class ServerUnavailable(OllamaError):
    """The server refused or did not accept the connection in time."""

    kind = "unavailable"


class ServerBusy(OllamaError):
    """HTTP 503: every parallel slot of the server is taken."""

    kind = "busy"


class GenerationTimeout(OllamaError):
    """The server accepted the request but did not answer within the read allowance."""

    kind = "timeout"


class ContextOverflow(OllamaError):
    """HTTP 400 because the prompt does not fit the model's context."""

    kind = "context_overflow"


class ModelMissing(OllamaError):
    """HTTP 404: the server does not have the model."""

    kind = "model_missing"


class ServerError(OllamaError):
    """Any other HTTP error, or an answer that is not Ollama's."""

    kind = "server_error"
