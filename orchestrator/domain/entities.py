"""Entities: the bot personas, one JSON file each, loaded as the existing bot's files are."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from orchestrator.domain.messages import DEFAULT_PRIORITY
from orchestrator.errors import EntityError

log = logging.getLogger(__name__)


def _string_list(value: Any) -> Any:
    """A lone string stands for a one-item list; empty strings are dropped (an empty
    `trimAfter` marker would cut every reply to nothing)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [item for item in value if item != ""]
    return value  # anything else fails validation as it is


StringList = Annotated[list[str], BeforeValidator(_string_list)]


class Entity(BaseModel):
    """One persona. Wire names are camelCase; unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(min_length=1)
    enabled: bool = True
    username: str = ""  # empty: the id is used (a scorer never posts, so may have none)
    color: str = ""
    model: str = Field(min_length=1)
    system_prompt: str = Field(default="", alias="systemPrompt")
    # A template for the current message: `{message}` (or `{text}`) is replaced by its text;
    # a template with neither placeholder is ignored (see prompts.current_turn_text).
    user_prompt: str | None = Field(default=None, alias="userPrompt")
    temperature: float = Field(default=0.7, ge=0)
    max_tokens: int = Field(default=150, ge=1, alias="maxTokens")
    top_p: float = Field(default=0.9, ge=0, le=1, alias="topP")
    top_k: int = Field(default=40, ge=0, alias="topK")
    repeat_penalty: float = Field(default=1.1, ge=0, alias="repeatPenalty")
    min_p: float = Field(default=0.05, ge=0, le=1, alias="minP")
    stop: StringList = Field(default_factory=list)
    nom: int = Field(default=100, ge=0)  # how many context lines to use, newest first
    filter_out: StringList = Field(default_factory=list, alias="filterOut")
    trim_after: StringList = Field(default_factory=list, alias="trimAfter")
    default_priority: int = Field(default=DEFAULT_PRIORITY, ge=0, alias="defaultPriority")
    response_chance: float = Field(default=1.0, ge=0, le=1, alias="responseChance")
    rate_limits: dict[str, Any] | None = Field(default=None, alias="rateLimits")
    context_tokens: int = Field(default=8192, ge=1, alias="contextTokens")
    region: str | None = None

    @model_validator(mode="after")
    def _check_budget_and_name(self) -> Entity:
        if self.max_tokens >= self.context_tokens:
            raise ValueError(
                f"maxTokens ({self.max_tokens}) leaves no room for a prompt "
                f"in contextTokens ({self.context_tokens})"
            )
        if not self.username:
            self.username = self.id
        return self


class EntityCatalog:
    """The loaded entities by id."""

    def __init__(self, entities: Iterable[Entity] = ()) -> None:
        self._by_id: dict[str, Entity] = {entity.id: entity for entity in entities}

    def get(self, entity_id: str) -> Entity | None:
        return self._by_id.get(entity_id)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self._by_id.values())

    @property
    def ids(self) -> list[str]:
        return sorted(self._by_id)


def load_entities(folder: Path) -> EntityCatalog:
    """Every `*.json` file of `folder`, in name order. A file holds one entity (its id defaults to
    the file's stem), a list of entities, or `{"entities": [...]}`. A file or entry that does not
    load is logged and skipped; on a repeated id the first file wins."""
    if not folder.is_dir():
        raise EntityError(f"entities folder {folder} does not exist or is not a folder")
    loaded: dict[str, Entity] = {}
    for path in sorted(folder.glob("*.json")):
        for entity in _entities_of_file(path):
            if entity.id in loaded:
                log.warning("entity file %s: id %r already loaded, skipped", path.name, entity.id)
                continue
            loaded[entity.id] = entity
    return EntityCatalog(loaded.values())


def _entities_of_file(path: Path) -> list[Entity]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("entity file %s skipped: %s", path.name, exc)
        return []
    if isinstance(document, dict) and isinstance(document.get("entities"), list):
        entries, default_id = document["entities"], None
    elif isinstance(document, list):
        entries, default_id = document, None
    else:
        entries, default_id = [document], path.stem
    entities = []
    for index, entry in enumerate(entries):
        where = path.name if default_id else f"{path.name}[{index}]"
        if not isinstance(entry, dict):
            log.warning("entity file %s skipped: not a JSON object", where)
            continue
        fields = {**entry, "id": default_id} if default_id and not entry.get("id") else entry
        try:
            entities.append(Entity.model_validate(fields))
        except ValidationError as exc:
            log.warning("entity file %s skipped: %s", where, _one_line(exc))
    return entities


def _one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'entity'}: {error['msg']}"
        for error in exc.errors()[:5]
    )
