"""The errors a simulated server answers with, worded as Ollama words them."""

from __future__ import annotations

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
CONTEXT_MESSAGE = "the input length exceeds the context length"
RUNNER_DIED_MESSAGE = "llama runner process has terminated: exit status 2"


class ApiError(Exception):
    """An answer with an HTTP error status; each API shapes the body its own way."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def default_error(status: int, model: str) -> str:
    """What Ollama says for each status, so clients that read the text classify it right."""
    return {
        400: CONTEXT_MESSAGE,
        404: f'model "{model}" not found, try pulling it first',
        503: BUSY_MESSAGE,
    }.get(status, RUNNER_DIED_MESSAGE)
