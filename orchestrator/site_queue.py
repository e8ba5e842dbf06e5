"""The site queue's HTTP API (docs/site-queue.md) as a synchronous client.

httpx errors and HTTP statuses become our own errors here, once (orchestrator.errors). The client
never retries: the bridge and the control tasks choose their own backoff.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.domain.messages import NewMessage
from orchestrator.errors import (
    BadQueueAnswer,
    MessageGone,
    QueueClientError,
    QueueNotReached,
    QueueServerError,
    QueueUnreachable,
)

log = logging.getLogger(__name__)
Answer = TypeVar("Answer", bound=BaseModel)
DETAIL_CHARS = 300


@dataclass(frozen=True)
class ClaimNext:
    """What claim-next gave: the raw message (validated by the caller), or None when empty."""

    message: dict[str, Any] | None
    total_pending: int
    remaining_pending: int
    reason: str | None


@dataclass(frozen=True)
class PostResult:
    id: str
    timestamp: int
    status: Literal["success", "duplicate"]


# The answers' shapes: only what we read is checked; anything more is allowed.


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _ClaimNextAnswer(_Shape):
    success: bool
    message: dict[str, Any] | None = None
    total_pending: int = Field(default=0, alias="totalPending")
    remaining_pending: int = Field(default=0, alias="remainingPending")
    reason: str | None = None


class _ClaimAnswer(_Shape):
    success: Literal[True]
    message: dict[str, Any]


class _PendingAnswer(_Shape):
    pending: list[dict[str, Any]]


class _PostAnswer(_Shape):
    id: str
    timestamp: int
    status: Literal["success", "duplicate"]


class _SuccessAnswer(_Shape):
    success: Literal[True]


class _PatchAnswer(_Shape):
    success: Literal[True]
    global_score: float = Field(alias="globalScore")


class _CommentsAnswer(_Shape):
    messages: list[dict[str, Any]]


class SiteQueueClient:
    """One keep-alive connection pool to the site queue (or the local queue)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        connect_timeout: float = 3.0,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.bytes_received = 0  # the answers' bodies, for what a caller costs the site
        self._http = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SiteQueueClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # The bot's queue -------------------------------------------------------------------------

    def claim_next(self, worker_id: str) -> ClaimNext:
        answer = self._call(
            "POST", "/api/queue/claim-next", _ClaimNextAnswer, {"workerId": worker_id}
        )
        if answer.success and answer.message is None:
            raise BadQueueAnswer("claim-next answered success without a message")
        return ClaimNext(
            message=answer.message if answer.success else None,
            total_pending=answer.total_pending,
            remaining_pending=answer.remaining_pending,
            reason=answer.reason,
        )

    def claim(self, message_id: str, worker_id: str) -> dict[str, Any]:
        body = {"messageId": message_id, "workerId": worker_id}
        return self._call("POST", "/api/queue/claim", _ClaimAnswer, body, gone=message_id).message

    def pending(self, limit: int = 50) -> list[dict[str, Any]]:
        params = {"limit": limit}
        return self._call("GET", "/api/queue/pending", _PendingAnswer, params=params).pending

    def complete(self, message_id: str) -> None:
        body = {"messageId": message_id}
        self._call("POST", "/api/queue/complete", _SuccessAnswer, body, gone=message_id)

    # Messages --------------------------------------------------------------------------------

    def post_comment(self, message: NewMessage | dict[str, Any]) -> PostResult:
        body = message.wire() if isinstance(message, NewMessage) else message
        answer = self._call("POST", "/api/comments", _PostAnswer, body)
        return PostResult(id=answer.id, timestamp=answer.timestamp, status=answer.status)

    def patch_eq(self, message_id: str, score: float) -> float:
        """Add `score` to the site's global score: not idempotent, so the caller guards repeats."""
        path = f"/api/comments/{quote(message_id, safe='')}"
        answer = self._call("PATCH", path, _PatchAnswer, {"eqScore": score}, gone=message_id)
        return answer.global_score

    def comments_after(self, after_ms: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Messages with a timestamp after `after_ms`, newest first."""
        params = {"after": after_ms} if limit is None else {"after": after_ms, "limit": limit}
        return self._call("GET", "/api/comments", _CommentsAnswer, params=params).messages

    # Admin -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/api/admin/stats", _Shape).model_dump(by_alias=True)

    def purge(self) -> None:
        self._call("POST", "/api/admin/purge", _Shape)

    # The boundary ----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        shape: type[Answer],
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, int] | None = None,
        gone: str | None = None,
    ) -> Answer:
        """One request; `gone` names the message whose 404 means MessageGone."""
        # ASCII-escaped JSON: a lone surrogate the site sent us goes back as it came.
        content = None if body is None else json.dumps(body).encode()
        headers = None if body is None else {"Content-Type": "application/json"}
        try:
            response = self._http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.DecodingError as exc:
            raise BadQueueAnswer(f"{method} {path}: undecodable answer: {exc}") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise QueueNotReached(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except httpx.RequestError as exc:
            raise QueueUnreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        self.bytes_received += len(response.content)
        status = response.status_code
        if status == 404 and gone is not None:
            raise MessageGone(gone)
        if 400 <= status < 500:
            raise QueueClientError(status, _detail(response))
        if status >= 500:
            raise QueueServerError(status, _detail(response))
        if status != 200:
            raise BadQueueAnswer(f"{method} {path}: unexpected HTTP {status}")
        try:
            return shape.model_validate(response.json())
        except ValueError as exc:  # not JSON, or not the contract's shape (ValidationError)
            what = "shape" if isinstance(exc, ValidationError) else "JSON"
            text = response.text[:DETAIL_CHARS]
            raise BadQueueAnswer(
                f"{method} {path}: answer is not the expected {what}: {text!r}"
            ) from exc


def _detail(response: httpx.Response) -> str:
    """The queue's `error` field when it gives one, else the start of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else response.text[:DETAIL_CHARS]
