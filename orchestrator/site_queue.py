"""The site queue's HTTP API (docs/site-queue.md) as a synchronous client.

httpx errors and HTTP statuses become our own errors here, once (orchestrator.errors). The client
never retries: the bridge and the control tasks choose their own backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.domain.messages import NewMessage, leading_fields
from orchestrator.errors import (
    AnswerTooLarge,
    BadQueueAnswer,
    MessageGone,
    QueueClientError,
    QueueError,
    QueueNotReached,
    QueueServerError,
    QueueUnreachable,
)
from orchestrator.json_stream import Oversize, StreamError, array_items

log = logging.getLogger(__name__)
Answer = TypeVar("Answer", bound=BaseModel)
DETAIL_CHARS = 300
DEFAULT_MAX_ANSWER_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_COMMENTS_BYTES = 256 * 1024 * 1024
PREFIX_BYTES = 64 * 1024  # what is kept of an answer over its cap: enough for a message's id
# Added by this client to a listed message too large to parse, with its size: never a field of
# the site's, which stores a fixed set of them.
OVERSIZE_FIELD = "oversizeBytes"


@dataclass(frozen=True)
class OversizeClaim:
    """A claim-next answer over the cap: what its first bytes say of the claimed message (its
    id comes first, as the site writes it), its size so far and a hash of what was read."""

    fields: dict[str, Any]
    bytes_read: int
    sha256: str
    prefix: str


@dataclass(frozen=True)
class ClaimNext:
    """What claim-next gave: the raw message (validated by the caller), or None when empty."""

    message: dict[str, Any] | None
    total_pending: int
    remaining_pending: int
    reason: str | None
    oversize: OversizeClaim | None = None


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
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        max_comments_bytes: int = DEFAULT_MAX_COMMENTS_BYTES,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """No answer is read past its cap: `max_answer_bytes` for each route's answer but the
        message list's, which is read as a stream, one message at a time, up to
        `max_comments_bytes`. `on_error` is told the kind of each failed call
        (`error_kind`)."""
        self.base_url = base_url
        self.on_error = on_error
        self.max_answer_bytes = max_answer_bytes
        self.max_comments_bytes = max_comments_bytes
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
        """The next message, claimed. One too large to read is not read: what its first bytes
        say of it comes back as `oversize`, so the caller can end it with its reason."""
        try:
            answer = self._call(
                "POST", "/api/queue/claim-next", _ClaimNextAnswer, {"workerId": worker_id}
            )
        except AnswerTooLarge as exc:
            text = exc.prefix.decode("utf-8", "replace")
            oversize = OversizeClaim(
                fields=leading_fields(text, within="message"),
                bytes_read=exc.bytes_read,
                sha256=hashlib.sha256(exc.prefix).hexdigest(),
                prefix=text[:1000],
            )
            return ClaimNext(None, 0, 0, "answer over the cap", oversize=oversize)
        if answer.success and answer.message is None:
            with self._noting_errors():
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
        return list(self.iter_comments_after(after_ms, limit))

    def iter_comments_after(
        self, after_ms: int, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The same, read as a stream, one message at a time: a day of history (tens of
        megabytes) is never held whole. A message over `max_answer_bytes` is not parsed: what
        its first and last bytes tell of it comes, with its size under `OVERSIZE_FIELD`.
        Raises AnswerTooLarge past `max_comments_bytes`, after the messages read so far."""
        params = {"after": after_ms} if limit is None else {"after": after_ms, "limit": limit}
        path = "/api/comments"
        with self._noting_errors(), self._send("GET", path, None, params) as response:
            if response.status_code != 200:
                self._answer(response, path, "GET", gone=None)
            chunks = _capped_chunks(response, self.max_comments_bytes, f"GET {path}", self)
            try:
                for item in array_items(chunks, "messages", max_item_bytes=self.max_answer_bytes):
                    if isinstance(item, Oversize):
                        yield {**item.fields(), OVERSIZE_FIELD: item.size}
                    else:
                        yield item
            except StreamError as exc:
                raise BadQueueAnswer(f"GET {path}: answer is not the expected JSON: {exc}") from exc

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
        with self._noting_errors():
            with self._send(method, path, body, params) as response:
                answer = self._answer(response, path, method, gone=gone)
            try:
                return shape.model_validate(answer)
            except ValidationError as exc:
                text = json.dumps(answer)[:DETAIL_CHARS]
                raise BadQueueAnswer(
                    f"{method} {path}: answer is not the expected shape: {text!r}"
                ) from exc

    @contextmanager
    def _noting_errors(self) -> Iterator[None]:
        """Tell `on_error` the kind of a call that failed; the error goes on as it was."""
        try:
            yield
        except QueueError as exc:
            if self.on_error is not None:
                self.on_error(error_kind(exc))
            raise

    @contextmanager
    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, params: dict[str, int] | None
    ) -> Iterator[httpx.Response]:
        """One request's answer, streamed: its body is read by the caller, within a cap, and
        the connection released when done. httpx errors become ours here."""
        # ASCII-escaped JSON: a lone surrogate the site sent us goes back as it came.
        content = None if body is None else json.dumps(body).encode()
        headers = None if body is None else {"Content-Type": "application/json"}
        request = self._http.build_request(
            method, path, content=content, headers=headers, params=params
        )
        what = f"{method} {path}"
        try:
            response = self._http.send(request, stream=True)
        except httpx.DecodingError as exc:
            raise BadQueueAnswer(f"{what}: undecodable answer: {exc}") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise QueueNotReached(f"{what}: {type(exc).__name__}: {exc}") from exc
        except httpx.RequestError as exc:
            raise QueueUnreachable(f"{what}: {type(exc).__name__}: {exc}") from exc
        try:
            yield response
        finally:
            response.close()

    def _answer(self, response: httpx.Response, path: str, method: str, *, gone: str | None) -> Any:
        """The answer's JSON, read up to the cap; HTTP statuses become our errors."""
        content = _read_capped(response, self.max_answer_bytes, f"{method} {path}", self)
        status = response.status_code
        if status == 404 and gone is not None:
            raise MessageGone(gone)
        if 400 <= status < 500:
            raise QueueClientError(status, _detail(content))
        if status >= 500:
            raise QueueServerError(status, _detail(content))
        if status != 200:
            raise BadQueueAnswer(f"{method} {path}: unexpected HTTP {status}")
        try:
            return json.loads(content)
        except ValueError as exc:
            text = content[:DETAIL_CHARS].decode("utf-8", "replace")
            raise BadQueueAnswer(f"{method} {path}: answer is not JSON: {text!r}") from exc


# Every kind `error_kind` gives, so that the metrics show each from zero.
ERROR_KINDS = (
    "connect", "timeout", "network", "gone", "client_error", "server_error", "too_large",
    "bad_answer",
)  # fmt: skip


def error_kind(exc: QueueError) -> str:
    """A failed call's kind, as the metrics label it: `connect` (never reached the queue),
    `timeout` (no answer in time: it may have been carried out), `network` (the connection
    broke), `gone` (404: the message vanished), `client_error` (other 4xx), `server_error`
    (5xx), `too_large` (an answer over its cap), `bad_answer` (not the contract)."""
    if isinstance(exc, QueueNotReached):
        return "connect"
    if isinstance(exc, QueueUnreachable):
        return "timeout" if isinstance(exc.__cause__, httpx.TimeoutException) else "network"
    if isinstance(exc, MessageGone):
        return "gone"
    if isinstance(exc, QueueClientError):
        return "client_error"
    if isinstance(exc, QueueServerError):
        return "server_error"
    if isinstance(exc, AnswerTooLarge):
        return "too_large"
    return "bad_answer"


def _read_capped(response: httpx.Response, cap: int, what: str, client: SiteQueueClient) -> bytes:
    """The body, never more of it than `cap`: past it, AnswerTooLarge with its first bytes."""
    chunks: list[bytes] = []
    try:
        for chunk in _capped_chunks(response, cap, what, client):
            chunks.append(chunk)
    except AnswerTooLarge as exc:
        kept = b"".join(chunks)[:PREFIX_BYTES]
        raise AnswerTooLarge(str(exc), kept, exc.bytes_read) from None
    return b"".join(chunks)


def _capped_chunks(
    response: httpx.Response, cap: int, what: str, client: SiteQueueClient
) -> Iterator[bytes]:
    """The body's chunks as they come, counted on the client, up to `cap`."""
    read = 0
    try:
        for chunk in response.iter_bytes():
            read += len(chunk)
            client.bytes_received += len(chunk)
            if read > cap:
                raise AnswerTooLarge(f"{what}: answer over the {cap}-byte cap", b"", read)
            yield chunk
    except httpx.DecodingError as exc:
        raise BadQueueAnswer(f"{what}: undecodable answer: {exc}") from exc
    except httpx.RequestError as exc:
        raise QueueUnreachable(f"{what}: {type(exc).__name__}: {exc}") from exc


def _detail(content: bytes) -> str:
    """The queue's `error` field when it gives one, else the start of the body."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else content[:DETAIL_CHARS].decode("utf-8", "replace")
