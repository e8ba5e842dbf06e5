"""The orchestrator's exception tree: callers catch by meaning, never by library. Third-party
errors are mapped to these once, where they enter (the site queue client)."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Anything of ours that went wrong on the orchestrator's side."""


class Retry(OrchestratorError):
    """Not now: the same step may well succeed later. `delay` says when to look again (None:
    the caller's own backoff)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class EqInDoubt(Retry):
    """Another delivery began applying this EQ score moments ago: look again later."""


class QueueError(OrchestratorError):
    """The site queue did not do what was asked."""


class QueueUnreachable(QueueError):
    """No answer from the site queue (connection refused, reset or timed out): the request may
    or may not have been carried out."""


class QueueNotReached(QueueUnreachable):
    """The request never reached the site queue (connection refused, or not made in time):
    nothing was carried out, so sending it again cannot do it twice."""


class QueueClientError(QueueError):
    """The site queue answered 4xx (other than a vanished message)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class QueueServerError(QueueError):
    """The site queue answered 5xx."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class MessageGone(QueueError):
    """The message is not (or no longer) in the site queue: 404 on complete, claim or PATCH."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id} is gone from the site queue")
        self.message_id = message_id


class BadQueueAnswer(QueueError):
    """The site queue answered something that is not the contract (bad JSON, wrong shape)."""


class AnswerTooLarge(BadQueueAnswer):
    """The site queue's answer is over its cap: read no further. `prefix` holds its start."""

    def __init__(self, message: str, prefix: bytes, bytes_read: int) -> None:
        super().__init__(message)
        self.prefix = prefix
        self.bytes_read = bytes_read


# Failures of the site queue worth trying again after a pause.
TRANSIENT_QUEUE_ERRORS = (QueueUnreachable, QueueServerError)


class EntityError(OrchestratorError):
    """An entity file that cannot be loaded."""


class JobRefused(OrchestratorError):
    """An operator's action on a job that its state does not allow (unknown, not dead, ended)."""
