"""Chat requests built from an entity and a site message, as the current bot builds them."""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.domain.entities import Entity
from orchestrator.domain.messages import Message
from workers.contract.protocol import ChatRequest, ChatTurn

CHARS_PER_TOKEN = 4  # the current bot's estimate; rough, hence the overflow retry's factor
EQ_TEMPERATURE = 1.0
EQ_MAX_TOKENS = 20
MESSAGE_PLACEHOLDERS = ("{message}", "{text}")


def build_chat_request(
    entity: Entity, message: Message, history_budget_factor: float = 1.0
) -> ChatRequest:
    """System prompt, then the newest `nom` context lines that fit the budget, then the message.

    The prompt budget is `context_tokens - max_tokens` tokens at 4 characters a token. The system
    prompt and the message always go in, even over budget; history fills what is left, newest
    first, and stops at the first line that does not fit (older lines are dropped, no gaps).
    `history_budget_factor` (0..1) scales the room left for history: a retry after a context
    overflow passes less than 1 to send a shorter history.
    """
    if not 0 <= history_budget_factor <= 1:
        raise ValueError(f"history_budget_factor must be within 0..1, not {history_budget_factor}")
    system = [ChatTurn(role="system", content=entity.system_prompt)] if entity.system_prompt else []
    current = ChatTurn(role="user", content=current_turn_text(entity, message))
    fixed_chars = sum(len(turn.content) for turn in [*system, current])
    budget_chars = (entity.context_tokens - entity.max_tokens) * CHARS_PER_TOKEN
    history_room = max(0, budget_chars - fixed_chars) * history_budget_factor
    history = fit_newest(history_turns(entity, message), history_room)
    return ChatRequest(
        model=entity.model, messages=[*system, *history, current], options=chat_options(entity)
    )


def current_turn_text(entity: Entity, message: Message) -> str:
    """The message's text, put into the entity's `userPrompt` when that has a placeholder."""
    template = entity.user_prompt
    if not template or not any(mark in template for mark in MESSAGE_PLACEHOLDERS):
        return message.text
    # str.replace, not str.format: braces in the template or the text must stay as they are.
    for mark in MESSAGE_PLACEHOLDERS:
        template = template.replace(mark, message.text)
    return template


def history_turns(entity: Entity, message: Message) -> list[ChatTurn]:
    """The newest `nom` context lines as turns, oldest first.

    `"name: text"` is split at the first `": "`: the poster's lines are `user`, everyone else's
    (the bots, other people) `assistant`, with the name removed. A line without `": "` has no
    speaker we can tell: it is kept whole as a `user` turn. Blank lines and empty texts are dropped.
    """
    lines = (message.context or [])[-entity.nom :] if entity.nom else []
    humans = {message.username}
    if message.bot_params and message.bot_params.human_username:
        humans.add(message.bot_params.human_username)
    turns = []
    for line in lines:
        speaker, separator, said = line.partition(": ")
        if not separator:
            speaker, said = "", line
        if not said.strip():
            continue
        role: Literal["user", "assistant"] = (
            "assistant" if separator and speaker.strip() not in humans else "user"
        )
        turns.append(ChatTurn(role=role, content=said))
    return turns


def fit_newest(turns: list[ChatTurn], room_chars: float) -> list[ChatTurn]:
    """The longest run of newest turns whose text fits in `room_chars`."""
    used = 0
    start = len(turns)
    while start > 0 and used + len(turns[start - 1].content) <= room_chars:
        used += len(turns[start - 1].content)
        start -= 1
    return turns[start:]


def chat_options(entity: Entity) -> dict[str, Any]:
    """The entity's sampling settings under Ollama's option names."""
    options: dict[str, Any] = {
        "temperature": entity.temperature,
        "num_predict": entity.max_tokens,
        "top_p": entity.top_p,
        "top_k": entity.top_k,
        "repeat_penalty": entity.repeat_penalty,
        "min_p": entity.min_p,
        "num_ctx": entity.context_tokens,
    }
    if entity.stop:
        options["stop"] = list(entity.stop)
    return options


def build_eq_request(scorer: Entity, message: Message) -> ChatRequest:
    """The message's text alone to the scoring entity: temperature 1.0, at most 20 tokens."""
    system = [ChatTurn(role="system", content=scorer.system_prompt)] if scorer.system_prompt else []
    options: dict[str, Any] = {
        "temperature": EQ_TEMPERATURE,
        "num_predict": min(EQ_MAX_TOKENS, scorer.max_tokens),
        # The same num_ctx as the model's chat requests: Ollama reloads a model on a new num_ctx.
        "num_ctx": scorer.context_tokens,
    }
    if scorer.stop:
        options["stop"] = list(scorer.stop)
    return ChatRequest(
        model=scorer.model,
        messages=[*system, ChatTurn(role="user", content=message.text)],
        options=options,
    )
