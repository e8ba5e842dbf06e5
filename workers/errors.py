"""The worker's exception tree: callers catch by meaning, not by HTTP library or backend."""

from __future__ import annotations

from typing import ClassVar

from workers.contract.protocol import ErrorKind


class BackendError(Exception):
    """A chat request that the model server (Ollama, llama-server, a pool's) did not answer."""

    kind: ClassVar[ErrorKind] = ErrorKind.OLLAMA_ERROR


OllamaError = BackendError  # its first name, from when Ollama was the only backend


class ServerUnavailable(BackendError):
    """The server refused or did not accept the connection in time."""

    kind: ClassVar[ErrorKind] = ErrorKind.UNAVAILABLE


class TunnelDown(ServerUnavailable):
    """The SSH link to the node is down, or the node would not forward to its model server's
    port: the message says which, in a line an operator can act on (an unknown alias, a
    refused key, a host key not in known_hosts, nothing listening on the node)."""


class ServerBusy(BackendError):
    """HTTP 503: every parallel slot of the server is taken."""

    kind: ClassVar[ErrorKind] = ErrorKind.BUSY


class ModelLoading(ServerBusy):
    """HTTP 503 from a llama-server still loading its model: it answers once loaded."""


class GenerationTimeout(BackendError):
    """The server accepted the request but did not answer within the read allowance."""

    kind: ClassVar[ErrorKind] = ErrorKind.TIMEOUT


class ServerHung(BackendError):
    """The model was loaded, yet no token came in time, or its tokens stopped coming."""

    kind: ClassVar[ErrorKind] = ErrorKind.HUNG


class ContextOverflow(BackendError):
    """HTTP 400 because the prompt does not fit the model's context. llama-server says by how
    much: the prompt's tokens and the context's, None where the server does not tell."""

    kind: ClassVar[ErrorKind] = ErrorKind.CONTEXT_OVERFLOW

    def __init__(
        self, message: str, *, n_prompt_tokens: int | None = None, n_ctx: int | None = None
    ) -> None:
        super().__init__(message)
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx


class BadRequest(BackendError):
    """HTTP 400 about the request itself (an option the server refuses): any server would
    refuse it, so no server is to blame for it."""

    kind: ClassVar[ErrorKind] = ErrorKind.BAD_REQUEST


class ModelMissing(BackendError):
    """HTTP 404: the server does not have the model."""

    kind: ClassVar[ErrorKind] = ErrorKind.MODEL_MISSING


class WrongModel(ModelMissing):
    """The server reached answers another model than the one asked for (a pool's port reused
    by another model): nothing was sent to it."""


class ServerError(BackendError):
    """Any other HTTP error, or an answer that is not the API's."""

    kind: ClassVar[ErrorKind] = ErrorKind.SERVER_ERROR
