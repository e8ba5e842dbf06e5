"""The site queue's message and reply, as pydantic models (see docs: queue API contract)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DEFAULT_PRIORITY = 5
DEFAULT_DOMAIN = "saywhatwant.app"
MAX_ID_LENGTH = 200
REPLY_SUFFIX = "-re"


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
