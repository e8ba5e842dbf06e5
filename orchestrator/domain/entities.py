"""Entities, the bot personas, and the global settings beside them, read from the documents the
site's operator keeps (one JSON object per file, `global.json` beside them). Pure: turning a
folder of files into a catalog is `orchestrator.entity_folder`'s.

Their files name the model by `baseModel` and `defaultQuantization` (or a quantization's
`modelPath`), spell the sampling fields in camelCase or snake_case, and count on the site bot's
JavaScript fallbacks (`value || default`: 0, "" and false take the default). Our own simpler
files name a plain `model`. Fields we do not use are kept, never refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

GLOBAL_FILE = "global.json"
# Budget of a request: the model's context less this, at about 4 characters a token (the site
# bot's 8192 - 500).
CONTEXT_RESERVE_TOKENS = 500
DEFAULT_CONTEXT_TOKENS = 8192

# The site bot's fallbacks, applied as `entity.field || default`.
FALLBACKS: dict[str, Any] = {
    "temperature": 0.7,
    "max_tokens": 150,
    "top_p": 0.9,
    "top_k": 40,
    "repeat_penalty": 1.1,
    "min_p": 0.05,
    "nom": 100,
}
# What a model server takes (low, high, whole number): a value outside is not sent. A sampling
# field's takes its fallback instead, as 0 would; the others are left out.
LIMITS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 100, False),
    "max_tokens": (1, 1_000_000, True),
    "top_p": (0, 1, False),
    "top_k": (0, 1_000_000, True),
    "repeat_penalty": (0, 100, False),
    "min_p": (0, 1, False),
    "nom": (0, 100_000, True),
    "num_ctx": (1, 10_000_000, True),
    "contextTokens": (CONTEXT_RESERVE_TOKENS + 1, 10_000_000, True),
}
# Both spellings of a sampling field; snake_case is the newer and wins when a file has both.
CAMEL_CASE = {
    "max_tokens": "maxTokens",
    "top_p": "topP",
    "top_k": "topK",
    "repeat_penalty": "repeatPenalty",
    "min_p": "minP",
    "num_ctx": "numCtx",
    "system_prompt": "systemPrompt",
}

# What the site's documents leave open, and what is done here (logged once at start).
CHOICES = (
    "an entity's model is baseModel-defaultQuantization, else the default quantization's "
    "modelPath, else baseModel, else a plain `model`",
    "an empty or missing systemPrompt is sent as 'You are <username>.', the site bot's fallback",
    "a file's name is the entity's id (as the site bot looks it up); a differing `id` is noted",
    "an entity with enabled: false is not answered (its messages are completed without a reply)",
    "an entity with a specialHandler (god-mode's broadcast) is not answered",
    "context lines: a speaker equal to the reply's name (the `ais` name, else the entity's "
    "username) is the assistant, anyone else the user; blank lines are left out",
    "global filterOut and trimAfter apply with the entity's own (filters first, then the "
    "earliest trim marker); trimWhitespace strips only when true; a reply left with no visible "
    "text is not posted",
    "a scorer's number above 100 scores 0, whichever rule found it",
)


def _string_list(value: Any) -> Any:
    """A lone string stands for a one-item list; empty strings are dropped (an empty
    `trimAfter` marker would cut every reply to nothing)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [item for item in value if item != ""]
    return value  # anything else fails validation as it is


StringList = Annotated[list[str], BeforeValidator(_string_list)]


def unescape_stop(sequence: str) -> str:
    """The site bot's stop-sequence unescape, in its order: `\\n`, then `\\t`, then `\\\\`."""
    return sequence.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")


def model_from_fields(fields: Mapping[str, Any]) -> tuple[str, str] | None:
    """The model an entity names, and which fields named it."""
    base = fields.get("baseModel")
    quant = fields.get("defaultQuantization")
    if isinstance(base, str) and base and isinstance(quant, str) and quant:
        return f"{base}-{quant}", "baseModel-defaultQuantization"
    quantizations = fields.get("quantizations")
    if isinstance(quantizations, dict) and isinstance(quant, str):
        chosen = quantizations.get(quant)
        path = chosen.get("modelPath") if isinstance(chosen, dict) else None
        if isinstance(path, str) and path:
            return path, f"quantizations.{quant}.modelPath"
    if isinstance(base, str) and base:
        return base, "baseModel"
    model = fields.get("model")
    if isinstance(model, str) and model:
        return model, "model"
    return None


def within(value: Any, low: float, high: float, *, whole: bool) -> bool:
    """A number (or its text) in [low, high], and whole if it must be."""
    if isinstance(value, bool):
        return False
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return low <= number <= high and (not whole or number.is_integer())


def as_the_site_bot_reads(document: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An entity document as the site bot reads it: one spelling of each field, its
    fallbacks applied (`||`), the model derived; and notes on how, for one log line."""
    fields = dict(document)
    notes: list[str] = []
    for snake, camel in CAMEL_CASE.items():
        if snake in fields and camel in fields:
            notes.append(f"{camel} and {snake} both given: {snake} used")
            del fields[camel]
        elif camel in fields:
            fields[snake] = fields.pop(camel)
    for name, fallback in FALLBACKS.items():
        if name in fields and fields[name] in (0, "", False, None):
            notes.append(f"{name} {fields[name]!r} sent as {fallback} (the site bot's fallback)")
            del fields[name]
    for name, (low, high, whole) in LIMITS.items():
        if name in fields and not within(fields[name], low, high, whole=whole):
            instead = FALLBACKS.get(name, "the default" if name == "contextTokens" else "nothing")
            notes.append(f"{name} {fields[name]!r} is not what a server takes: {instead} used")
            del fields[name]
    derived = model_from_fields(fields)
    if derived is not None:
        fields["model"], source = derived
        if source != "model":
            notes.append(f"model {derived[0]} from {source}")
    return fields, notes


class Turn(BaseModel):
    """A warm-up turn, copied into requests as it is."""

    role: Literal["system", "user", "assistant"]
    content: str


class InitContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[Turn] = Field(default_factory=list)


class GlobalSettings(BaseModel):
    """`global.json`: settings for every entity, read with them."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    stop_sequences: StringList | None = Field(default=None, alias="globalStopSequences")
    trim_after: StringList = Field(default_factory=list, alias="globalTrimAfter")
    filter_out: StringList = Field(default_factory=list, alias="globalFilterOut")
    init_context: InitContext = Field(default_factory=InitContext, alias="initContext")

    @property
    def stop(self) -> list[str] | None:
        """The stop sequences as sent: unescaped; None when the file has none (no `stop`)."""
        if self.stop_sequences is None:
            return None
        return [unescape_stop(sequence) for sequence in self.stop_sequences]


class Entity(BaseModel):
    """One persona. Wire names are camelCase (both spellings of the sampling fields are
    taken); unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(min_length=1)
    enabled: bool = True
    username: str = ""  # empty: the id is used (a scorer never posts, so may have none)
    color: str = ""
    model: str = ""  # the model's name, as derived (see model_from_fields)
    base_model: str | None = Field(default=None, alias="baseModel")
    default_quantization: str | None = Field(default=None, alias="defaultQuantization")
    quantizations: dict[str, Any] | None = None
    system_prompt: str = Field(default="", alias="systemPrompt")
    # A template for the current message: `{message}` (or `{text}`) is replaced by its text;
    # a template with neither placeholder is ignored (see prompts.current_turn_text).
    user_prompt: str | None = Field(default=None, alias="userPrompt")
    init_context: bool = Field(default=False, alias="initContext")
    temperature: float = Field(default=FALLBACKS["temperature"], ge=0)
    max_tokens: int = Field(default=FALLBACKS["max_tokens"], ge=1, alias="maxTokens")
    top_p: float = Field(default=FALLBACKS["top_p"], ge=0, le=1, alias="topP")
    top_k: int = Field(default=FALLBACKS["top_k"], ge=0, alias="topK")
    repeat_penalty: float = Field(default=FALLBACKS["repeat_penalty"], ge=0, alias="repeatPenalty")
    min_p: float = Field(default=FALLBACKS["min_p"], ge=0, le=1, alias="minP")
    num_ctx: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("num_ctx", "numCtx")
    )
    stop: StringList = Field(default_factory=list)
    nom: int = Field(default=FALLBACKS["nom"], ge=0)  # how many context lines, newest first
    filter_out: StringList = Field(default_factory=list, alias="filterOut")
    trim_after: StringList = Field(default_factory=list, alias="trimAfter")
    trim_whitespace: bool = Field(default=False, alias="trimWhitespace")
    context_tokens: int = Field(
        default=DEFAULT_CONTEXT_TOKENS, gt=CONTEXT_RESERVE_TOKENS, alias="contextTokens"
    )
    region: str | None = None
    special_handler: str | None = Field(default=None, alias="specialHandler")

    @model_validator(mode="before")
    @classmethod
    def _as_the_site_bot_reads(cls, data: Any) -> Any:
        return as_the_site_bot_reads(data)[0] if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _model_and_username(self) -> Entity:
        if not self.model and self.special_handler is None:
            raise ValueError("no model: neither baseModel, quantizations nor model names one")
        if not self.username:
            self.username = self.id
        return self

    @property
    def system_text(self) -> str:
        """The system message's content: the prompt, or the site bot's fallback."""
        return self.system_prompt or f"You are {self.username}."

    @property
    def answers(self) -> bool:
        """Whether its messages get a reply at all."""
        return self.enabled and self.special_handler is None

    def refusal(self) -> str | None:
        """Why a message for this entity gets no reply, if it does not."""
        if not self.enabled:
            return f"entity {self.id!r} is disabled"
        if self.special_handler is not None:
            return (
                f"entity {self.id!r} has a specialHandler ({self.special_handler}), not supported"
            )
        return None


@dataclass(frozen=True)
class EntityCatalog:
    """The entities by id and the global settings, as of one reading of the folder."""

    entities: Mapping[str, Entity] = field(default_factory=dict)
    global_settings: GlobalSettings = field(default_factory=GlobalSettings)

    def get(self, entity_id: str) -> Entity | None:
        return self.entities.get(entity_id)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self.entities

    def __len__(self) -> int:
        return len(self.entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self.entities.values())

    @property
    def ids(self) -> list[str]:
        return sorted(self.entities)

    @property
    def answered_models(self) -> frozenset[str]:
        """The models of every entity that gets replies."""
        return frozenset(entity.model for entity in self if entity.answers)
