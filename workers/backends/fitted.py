"""What the llama.cpp kind of backend (one server, a map of them, a pool) shares: each request
fitted to its server's context before it is sent (and once more after an overflow), the
speeds it shows noted."""

from __future__ import annotations

from abc import abstractmethod

from workers.backends.base import MAX_REPLY_BYTES, LinkedBackend, Measures
from workers.backends.context import ContextFit
from workers.contract.protocol import ChatOutcome, ChatRequest


class FittedBackend(LinkedBackend):
    """A subclass sets `fit`, `measures`, `_http` and `_links`, and says how one fitted request
    is sent (`send`)."""

    fit: ContextFit
    measures: Measures

    def chat(
        self,
        request: ChatRequest,
        *,
        first_token_s: float | None = None,
        stall_s: float | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        job_id: str = "",
    ) -> ChatOutcome:
        def send(fitted: ChatRequest) -> ChatOutcome:
            return self.send(fitted, first_token_s, stall_s, max_reply_bytes, job_id)

        outcome = self.fit.chat(request, send, job_id)
        self.measures.note_reply(request.model, outcome.timings)
        return outcome

    @abstractmethod
    def send(
        self,
        request: ChatRequest,
        first_token_s: float | None,
        stall_s: float | None,
        max_reply_bytes: int,
        job_id: str,
    ) -> ChatOutcome:
        """One request, already fitted to its server's context."""
