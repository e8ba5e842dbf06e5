"""Chat requests built from an entity and a site message, as the site's bot builds them.

Turns, in order: the system prompt; the warm-up turns of `global.json` for an entity with
`initContext`; the newest `nom` context lines, each a `user` or `assistant` turn; the message
itself; and an empty `assistant` turn (llama.cpp refuses a list ending in two assistant turns,
and the empty one keeps the roles alternating). While the whole is over the budget (the
model's context less 500 tokens, at 4 characters a token), the oldest history goes first;
never the system prompt, the warm-up, the message or the empty turn.
"""

from __future__ import annotations

from typing import Literal

from orchestrator.domain.entities import CONTEXT_RESERVE_TOKENS, Entity, GlobalSettings
from orchestrator.domain.messages import Message
from workers.contract.protocol import ChatRequest, ChatTurn

CHARS_PER_TOKEN = 4  # the site bot's estimate; rough, hence the overflow retry's factor
EQ_TEMPERATURE = 1.0
EQ_MAX_TOKENS = 20
EQ_PLACEHOLDER = "[message]"
MESSAGE_PLACEHOLDERS = ("{message}", "{text}")


def build_chat_request(
    entity: Entity,
    message: Message,
    global_settings: GlobalSettings | None = None,
    history_budget_factor: float = 1.0,
) -> ChatRequest:
    """The reply's request. `history_budget_factor` (0..1) scales the room left for history:
    a retry after a context overflow passes less than 1 to send a shorter history."""
    if not 0 <= history_budget_factor <= 1:
        raise ValueError(f"history_budget_factor must be within 0..1, not {history_budget_factor}")
    settings = global_settings or GlobalSettings()
    system = ChatTurn(role="system", content=entity.system_text)
    warm_up = (
        [ChatTurn(role=turn.role, content=turn.content) for turn in settings.init_context.messages]
        if entity.init_context
        else []
    )
    current = ChatTurn(role="user", content=current_turn_text(entity, message))
    completion = ChatTurn(role="assistant", content="")
    fixed_chars = sum(len(turn.content) for turn in [system, *warm_up, current])
    budget_chars = (entity.context_tokens - CONTEXT_RESERVE_TOKENS) * CHARS_PER_TOKEN
    history_room = max(0, budget_chars - fixed_chars) * history_budget_factor
    history = fit_newest(history_turns(entity, message), history_room)
    return ChatRequest(
        model=entity.model,
        messages=[system, *warm_up, *history, current, completion],
        history=(1 + len(warm_up), 1 + len(warm_up) + len(history)),
        temperature=entity.temperature,
        max_tokens=entity.max_tokens,
        top_p=entity.top_p,
        top_k=entity.top_k,
        repeat_penalty=entity.repeat_penalty,
        min_p=entity.min_p,
        stop=stop_sequences(entity, settings),
        num_ctx=entity.num_ctx,
    )


def stop_sequences(entity: Entity, settings: GlobalSettings) -> list[str] | None:
    """`global.json`'s stop sequences, unescaped, then the entity's own; none at all when
    neither has any (the site bot sends `stop` only when the global list exists)."""
    global_stop = settings.stop
    if global_stop is None and not entity.stop:
        return None
    return [*(global_stop or []), *(s for s in entity.stop if s not in (global_stop or []))]


def current_turn_text(entity: Entity, message: Message) -> str:
    """The message's text, put into the entity's `userPrompt` when that has a placeholder."""
    template = entity.user_prompt
    if not template or not any(mark in template for mark in MESSAGE_PLACEHOLDERS):
        return message.text
    # str.replace, not str.format: braces in the template or the text must stay as they are.
    for mark in MESSAGE_PLACEHOLDERS:
        template = template.replace(mark, message.text)
    return template


def reply_name(entity: Entity, message: Message) -> str:
    """The name the reply is posted under: the `ais` name when the poster set one."""
    ais = message.bot_params.ais if message.bot_params else None
    name, separator, color = (ais or "").rpartition(":")
    if separator and name.strip() and color.strip():
        return name.strip()
    return entity.username


def history_turns(entity: Entity, message: Message) -> list[ChatTurn]:
    """The newest `nom` context lines as turns, oldest first.

    `"name: text"` is split at the first `": "`, the name dropped: the reply's own name speaks
    as `assistant`, anyone else as `user`. A line without `": "` has no speaker we can tell: it
    is a `user` turn, whole. Blank lines and empty texts are left out."""
    lines = (message.context or [])[-entity.nom :] if entity.nom else []
    assistant = reply_name(entity, message).strip()
    turns = []
    for line in lines:
        speaker, separator, said = line.partition(": ")
        if not separator:
            speaker, said = "", line
        if not said.strip():
            continue
        role: Literal["user", "assistant"] = (
            "assistant" if separator and speaker.strip() == assistant else "user"
        )
        turns.append(ChatTurn(role=role, content=said))
    return turns


def fit_newest(turns: list[ChatTurn], room_chars: float) -> list[ChatTurn]:
    """The longest run of newest turns whose text fits in `room_chars`: what is left once the
    oldest are dropped one by one until the rest fits."""
    used = 0
    start = len(turns)
    while start > 0 and used + len(turns[start - 1].content) <= room_chars:
        used += len(turns[start - 1].content)
        start -= 1
    return turns[start:]


def build_eq_request(scorer: Entity, message: Message) -> ChatRequest:
    """The scorer's request: its prompt with `[message]` (the first one) replaced by the
    message's text, then the text alone as the user's turn; temperature 1.0, at most 20
    tokens, no context."""
    prompt = scorer.system_text.replace(EQ_PLACEHOLDER, message.text, 1)
    return ChatRequest(
        model=scorer.model,
        messages=[
            ChatTurn(role="system", content=prompt),
            ChatTurn(role="user", content=message.text),
        ],
        temperature=EQ_TEMPERATURE,
        max_tokens=EQ_MAX_TOKENS,
    )
