"""The orchestrator's exception tree, mapped once at each boundary."""

from __future__ import annotations


class QueueError(Exception):
    """The site queue did not do what was asked."""


class QueueUnreachable(QueueError):
    """No answer from the site queue: connection refused, reset or timed out."""


class EqInDoubt(QueueUnreachable):
    """Another delivery began applying this EQ score moments ago: look again later."""


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


class EntityError(Exception):
    """An entity file that cannot be loaded."""


class JobRefused(Exception):
    """An operator's action on a job that its state does not allow (unknown, not dead, ended)."""
