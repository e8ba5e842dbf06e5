"""The site queue's message and reply, as pydantic models (see docs: queue API contract)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DEFAULT_PRIORITY = 5
DEFAULT_DOMAIN = "saywhatwant.app"
MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 200  # an entity's name, as a message asks for it
REPLY_SUFFIX = "-re"
EXCERPT_CHARS = 1000  # what a refused message keeps of its text
# Line breaks and other control characters, the Unicode line separators, lone surrogates.
_UNFIT_IN_ID = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _text_lines(value: Any) -> Any:
    """Context lines that are not text (a number, null, an object) are left out, not the
    message: the deployed queue stores whatever a poster sent."""
    if isinstance(value, list):
        return [line for line in value if isinstance(line, str)]
    return value  # anything else fails validation as it is


ContextLines = Annotated[list[str] | None, BeforeValidator(_text_lines)]


class BotParams(BaseModel):
    """What the poster asked of the bot; present only when an entity is named."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    status: Literal["pending", "processing", "complete"] | None = None
    priority: int = DEFAULT_PRIORITY
    entity: str | None = None
    ais: str | None = None
    session_id: str | None = Field(default=None, alias="sessionId")
    human_username: str | None = Field(default=None, alias="humanUsername")
    human_color: str | None = Field(default=None, alias="humanColor")
    claimed_by: str | None = Field(default=None, alias="claimedBy")
    claimed_at: int | None = Field(default=None, alias="claimedAt")
    completed_at: int | None = Field(default=None, alias="completedAt")

    @property
    def effective_priority(self) -> int:
        """A missing or zero priority counts as the default, as the site queue orders it."""
        return self.priority or DEFAULT_PRIORITY


class MessageFields(BaseModel):
    """What every message of the site queue carries. Field names follow the wire (camelCase,
    `message-type`); fields the site adds are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    text: str
    username: str
    color: str = ""
    domain: str = DEFAULT_DOMAIN
    message_type: Literal["human", "AI"] = Field(default="human", alias="message-type")
    reply_to: str | None = Field(default=None, alias="replyTo")
    context: ContextLines = None
    eq_score: float = Field(default=0, alias="eqScore")
    bot_params: BotParams | None = Field(default=None, alias="botParams")

    def wire(self) -> dict[str, Any]:
        """The message as the site queue speaks it."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Message(MessageFields):
    """One message as the site queue holds it: with its id and timestamp."""

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    timestamp: int


class NewMessage(MessageFields):
    """A message as posted: the queue fills in `id` and `timestamp` when they are missing."""

    id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    timestamp: int | None = None


def reply_id_for(human_message_id: str) -> str:
    """The id of the reply to a human message: derived, so a second post is a `duplicate`.

    It must itself be a valid id: when the suffix would pass the length limit, the id is cut
    and a digest of the whole id keeps the reply's id unique to its message."""
    reply_id = f"{human_message_id}{REPLY_SUFFIX}"
    if len(reply_id) <= MAX_ID_LENGTH:
        return reply_id
    digest = hashlib.sha256(human_message_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    keep = MAX_ID_LENGTH - len(digest) - 1 - len(REPLY_SUFFIX)
    return f"{human_message_id[:keep]}-{digest}{REPLY_SUFFIX}"


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match else pos


def leading_fields(text: str, *, within: str | None = None) -> dict[str, Any]:
    """The complete fields at the start of a JSON object that may be cut short (the first
    bytes of an answer too large to read): every key whose value ends before the cut. With
    `within`, those of the object under that key of the outer one."""
    fields: dict[str, Any] = {}
    try:
        pos = _skip_space(text, 0)
        if text[pos] != "{":
            return fields
        pos += 1
        while True:
            pos = _skip_space(text, pos)
            if text[pos] == "}":
                return fields
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_space(text, pos)
            if text[pos] != ":":
                return fields
            pos = _skip_space(text, pos + 1)
            if key == within and text[pos] == "{":
                return leading_fields(text[pos:])
            value, pos = _DECODER.raw_decode(text, pos)
            fields[str(key)] = value
            pos = _skip_space(text, pos)
            if text[pos] != ",":
                return fields
            pos += 1
    except (ValueError, IndexError):
        return fields  # the cut: what came before it


@dataclass(frozen=True)
class MessageLimits:
    """What the system takes of a message from the site; past any, it is refused whole."""

    max_bytes: int
    max_text_chars: int
    max_context_lines: int


def id_problem(message_id: object) -> str | None:
    """Why a message's id cannot serve as a job's id (kept in Redis, written in logs, turned
    into its reply's id); None when it can."""
    if not isinstance(message_id, str) or not message_id:
        return "the message has no id"
    if len(message_id) > MAX_ID_LENGTH:
        return f"its id is {len(message_id)} characters long, over {MAX_ID_LENGTH}"
    unfit = _UNFIT_IN_ID.search(message_id)
    if unfit is not None:
        code = ord(unfit.group())
        what = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
        return f"its id holds {what} (U+{code:04X})"
    return None


def size_problem(raw: dict[str, Any], size: int, limits: MessageLimits) -> str | None:
    """Why a claimed message (of `size` bytes as JSON) is too large to take; None if it is
    not."""
    if size > limits.max_bytes:
        return f"too large: message of {size} bytes, over the {limits.max_bytes}-byte limit"
    text = raw.get("text")
    if isinstance(text, str) and len(text) > limits.max_text_chars:
        return f"too large: text of {len(text)} characters, over {limits.max_text_chars}"
    context = raw.get("context")
    if isinstance(context, list) and len(context) > limits.max_context_lines:
        return f"too large: context of {len(context)} lines, over {limits.max_context_lines}"
    params = raw.get("botParams")
    entity = params.get("entity") if isinstance(params, dict) else None
    if isinstance(entity, str) and len(entity) > MAX_NAME_LENGTH:
        return f"too large: entity name of {len(entity)} characters, over {MAX_NAME_LENGTH}"
    return None


def excerpt_of(raw: dict[str, Any], size: int, digest: str) -> dict[str, Any]:
    """What is kept of a refused message: its id, time, bot parameters when small, the start of
    its text, and its size and hash in place of the rest."""
    kept: dict[str, Any] = {"id": raw.get("id"), "timestamp": raw.get("timestamp", 0)}
    params = raw.get("botParams")
    if isinstance(params, dict) and len(json.dumps(params)) <= EXCERPT_CHARS:
        kept["botParams"] = params
    text = raw.get("text")
    kept["text"] = text[:EXCERPT_CHARS] if isinstance(text, str) else ""
    kept["username"] = str(raw.get("username", ""))[:MAX_NAME_LENGTH]
    kept["excerpt"] = {"bytes": size, "sha256": digest}
    return kept
