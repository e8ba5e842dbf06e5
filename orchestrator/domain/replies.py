"""From a model's answer to what is posted: the entity's text rules, the EQ score, the reply."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from orchestrator.domain.entities import Entity, GlobalSettings
from orchestrator.domain.messages import BotParams, Message, NewMessage, reply_id_for

SKIP_MARKER = "[SKIP]"  # as the site's bot looks for it: this case only
EQ_MIN, EQ_MAX = 0, 100
RANDOM_COLOR = "random"

_NUMBER = r"(\d+)"  # digits only, as the site's bot reads them: no sign, no fraction
# In order, as the site's bot tries them: `Score: N` (or `Score: [N]`; markdown bold allowed),
# then `score is N` / `score of N`, then the first number of one to three digits.
_EXPLICIT_SCORES = (
    re.compile(r"score\s*\**\s*[:=]\s*\**\s*\[?\s*" + _NUMBER, re.IGNORECASE),
    re.compile(r"score\s+(?:is|of)\s*:?\s*\**\s*" + _NUMBER, re.IGNORECASE),
    re.compile(r"(?<![\d.])(\d{1,3})(?![\d])"),
)


def post_process(
    text: str, entity: Entity, global_settings: GlobalSettings | None = None
) -> str | None:
    """The reply to post, or None when there is none: a `[SKIP]` anywhere, or no visible text
    left after removing every `filterOut` string (the entity's, then `global.json`'s), cutting
    at the earliest `trimAfter` marker of either, and stripping when `trimWhitespace` says so."""
    if SKIP_MARKER in text:
        return None
    settings = global_settings or GlobalSettings()
    for unwanted in [*entity.filter_out, *settings.filter_out]:
        text = text.replace(unwanted, "")
    markers = [*entity.trim_after, *settings.trim_after]
    cuts = [text.find(marker) for marker in markers if marker in text]
    if cuts:
        text = text[: min(cuts)]
    if entity.trim_whitespace:
        text = text.strip()
    return text if text.strip() else None


def parse_eq_score(text: str) -> int:
    """The score in a scorer's answer, by the first rule that finds one, reading digits only
    (a sign or a fraction is not read). A number above 100, or no number at all, gives 0: the
    site adds every positive score to its global score, so a doubtful one must add nothing."""
    for pattern in _EXPLICIT_SCORES:
        found = pattern.search(text)
        if found:
            return _in_range(int(found.group(1)))
    return 0


def _in_range(score: int) -> int:
    return score if EQ_MIN <= score <= EQ_MAX else 0


def reply_identity(entity: Entity, message: Message) -> tuple[str, str]:
    """(username, color) of the reply: the entity's, unless the poster set `ais`.

    `"Name:color"` posts as Name in that color (as given); `"Name:random"` as Name in a color
    derived from the message id, so a retried post keeps the same identity. An `ais` without a
    colon, a name or a color is ignored.
    """
    ais = message.bot_params.ais if message.bot_params else None
    name, separator, color = (ais or "").rpartition(":")
    name, color = name.strip(), color.strip()
    if not separator or not name or not color:
        return entity.username, entity.color
    if color.lower() == RANDOM_COLOR:
        color = color_for(message.id)
    return name, color


def color_for(seed: str) -> str:
    """A site color (`RRRGGGBBB`, zero-padded decimals) chosen by `seed`, always the same."""
    digest = hashlib.sha256(seed.encode()).digest()
    # 64..255 per channel: no near-black color that would vanish on a dark page.
    red, green, blue = (64 + byte % 192 for byte in digest[:3])
    return f"{red:03d}{green:03d}{blue:03d}"


class ReplyMessage(NewMessage):
    """A bot reply. Its `botParams` never carry `status` or `priority`: those belong to a message
    waiting for the bot, and a reply must never look like one."""

    def wire(self) -> dict[str, Any]:
        return self.model_dump(
            by_alias=True,
            exclude_none=True,
            mode="json",
            exclude={"bot_params": {"status", "priority"}},
        )


def build_reply(entity: Entity, message: Message, text: str) -> NewMessage:
    """The reply to `message`: an `AI` message whose id is derived from the human message's."""
    params = message.bot_params or BotParams()
    username, color = reply_identity(entity, message)
    bot_params = {
        "entity": entity.id,
        "ais": params.ais,
        "sessionId": params.session_id,
        "humanUsername": params.human_username or message.username,
        "humanColor": params.human_color or message.color or None,
    }
    return ReplyMessage.model_validate(
        {
            "id": reply_id_for(message.id),
            "text": text,
            "username": username,
            "color": color,
            "domain": message.domain,
            "message-type": "AI",
            "replyTo": message.id,
            "botParams": bot_params,
        }
    )
