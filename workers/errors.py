"""The worker's exception tree: callers catch by meaning, not by HTTP library."""

from __future__ import annotations

from typing import ClassVar

from workers.contract.protocol import ErrorKind


class OllamaError(Exception):
    """A chat request that an Ollama server did not answer."""

    kind: ClassVar[ErrorKind] = ErrorKind.OLLAMA_ERROR


class ServerUnavailable(OllamaError):
    """The server refused or did not accept the connection in time."""

    kind: ClassVar[ErrorKind] = ErrorKind.UNAVAILABLE


class ServerBusy(OllamaError):
    """HTTP 503: every parallel slot of the server is taken."""

    kind: ClassVar[ErrorKind] = ErrorKind.BUSY


class GenerationTimeout(OllamaError):
    """The server accepted the request but did not answer within the read allowance."""

    kind: ClassVar[ErrorKind] = ErrorKind.TIMEOUT


class ServerHung(OllamaError):
    """The model was loaded, yet no token came in time, or its tokens stopped coming."""

    kind: ClassVar[ErrorKind] = ErrorKind.HUNG


class ContextOverflow(OllamaError):
    """HTTP 400 because the prompt does not fit the model's context."""

    kind: ClassVar[ErrorKind] = ErrorKind.CONTEXT_OVERFLOW


class BadRequest(OllamaError):
    """HTTP 400 about the request itself (an option the server refuses): any server would
    refuse it, so no server is to blame for it."""

    kind: ClassVar[ErrorKind] = ErrorKind.BAD_REQUEST


class ModelMissing(OllamaError):
    """HTTP 404: the server does not have the model."""

    kind: ClassVar[ErrorKind] = ErrorKind.MODEL_MISSING


class ServerError(OllamaError):
    """Any other HTTP error, or an answer that is not Ollama's."""

    kind: ClassVar[ErrorKind] = ErrorKind.SERVER_ERROR
