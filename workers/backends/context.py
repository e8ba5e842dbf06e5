"""Fitting a chat request to a model's context on this worker's servers. A llama-server whose
context is too small for a prompt says so with both sizes (HTTP 400,
`exceed_context_size_error`): the request is sent once more without its oldest history, and
the model's context is remembered, so its later requests are cut to fit before they are sent.
The system prompt, the initial context, the current message and the empty assistant turn are
never cut (only the turns `ChatRequest.history` marks)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from workers.contract.model_names import model_key
from workers.contract.protocol import ChatOutcome, ChatRequest
from workers.errors import ContextOverflow

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the bot's estimate of a prompt's tokens
DEFAULT_REPLY_TOKENS = 150  # the bot's max_tokens when an entity sets none


@dataclass(frozen=True)
class ModelContext:
    """A model's context as its server told it, and how its token count compares with ours."""

    name: str  # as the request named it
    n_ctx: int
    tokens_per_estimate: float = 1.0  # the server's count of a prompt / chars/4


def request_chars(request: ChatRequest) -> int:
    return sum(len(turn.content) for turn in request.messages)


def estimated_tokens(chars: int, tokens_per_estimate: float = 1.0) -> int:
    return round(chars / CHARS_PER_TOKEN * tokens_per_estimate)


def fewest_to_cut(request: ChatRequest, context: ModelContext) -> tuple[int, bool]:
    """The fewest oldest history turns to leave out so the prompt and the reply fit the
    context, by the estimate; and whether that fits (when not, it is every history turn)."""
    budget = context.n_ctx - (request.max_tokens or DEFAULT_REPLY_TOKENS)
    chars = request_chars(request)
    if estimated_tokens(chars, context.tokens_per_estimate) <= budget:
        return 0, True
    start, end = request.history or (0, 0)
    for count, turn in enumerate(request.messages[start:end], start=1):
        chars -= len(turn.content)
        if estimated_tokens(chars, context.tokens_per_estimate) <= budget:
            return count, True
    return end - start, False


class ContextFit:
    """What this worker learned of its models' contexts; threads of the worker share it."""

    def __init__(self, server_id: str = "") -> None:
        self.server_id = server_id
        self._lock = threading.Lock()
        self._known: dict[str, ModelContext] = {}  # by model key

    def contexts(self) -> dict[str, int]:
        """n_ctx per model, by the names requests gave them."""
        with self._lock:
            return {known.name: known.n_ctx for known in self._known.values()}

    def learn(self, request: ChatRequest, overflow: ContextOverflow) -> ModelContext | None:
        """Remember what a context-size error told of the request's model; None when it told
        neither size."""
        if overflow.n_ctx is None:
            return None
        estimate = max(1, estimated_tokens(request_chars(request)))
        key = model_key(request.model)
        with self._lock:
            before = self._known.get(key)
            ratio = (
                overflow.n_prompt_tokens / estimate
                if overflow.n_prompt_tokens
                else (before.tokens_per_estimate if before else 1.0)
            )
            known = ModelContext(request.model, overflow.n_ctx, ratio)
            self._known[key] = known
        return known

    def chat(
        self,
        request: ChatRequest,
        send: Callable[[ChatRequest], ChatOutcome],
        job_id: str = "",
    ) -> ChatOutcome:
        """`send` the request, cut to the model's known context; after a context-size error,
        once more with the fewest oldest history turns left out that make it fit. Raises
        ContextOverflow when that fails too, or when there is nothing to cut."""
        with self._lock:
            known = self._known.get(model_key(request.model))
        sent = request
        if known is not None:
            count, _ = fewest_to_cut(request, known)
            if count:
                sent = request.without_oldest(count)
                self._log_cut(job_id, request, sent, known, "before sending")
        try:
            return send(sent)
        except ContextOverflow as overflow:
            learned = self.learn(sent, overflow)
            count = fewest_to_cut(sent, learned)[0] if learned is not None else 0
            if learned is None or not count:
                raise
            retry = sent.without_oldest(count)
            told = f"the server counted {overflow.n_prompt_tokens} tokens"
            self._log_cut(job_id, sent, retry, learned, told)
        try:
            return send(retry)
        except ContextOverflow as again:
            self.learn(retry, again)
            raise

    def _log_cut(
        self,
        job_id: str,
        before: ChatRequest,
        after: ChatRequest,
        known: ModelContext,
        why: str,
    ) -> None:
        chars_before, chars_after = request_chars(before), request_chars(after)
        log.warning(
            "[CONTEXT-OVERFLOW] job=%s server=%s model=%s n_ctx=%d: %s; cut %d oldest history "
            "turns: %d messages, %d chars, ~%d tokens -> %d messages, %d chars, ~%d tokens",
            job_id, self.server_id, before.model, known.n_ctx, why,
            len(before.messages) - len(after.messages),
            len(before.messages), chars_before,
            estimated_tokens(chars_before, known.tokens_per_estimate),
            len(after.messages), chars_after,
            estimated_tokens(chars_after, known.tokens_per_estimate),
        )  # fmt: skip
