"""Entity files: the fields, their validation, and a loader that skips what it cannot load."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.domain.entities import Entity, EntityCatalog, load_entities
from orchestrator.errors import EntityError
from standins import SAMPLE_ENTITIES_DIR

MINIMAL = {"id": "bot", "model": "llama3.2:3b"}


def write(folder: Path, name: str, content: Any) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / name).write_text(text, encoding="utf-8")


def test_samples_load() -> None:
    catalog = load_entities(SAMPLE_ENTITIES_DIR)
    assert catalog.ids == ["eq-score", "the-critic", "the-eternal"]
    eternal = catalog.get("the-eternal")
    assert eternal is not None
    assert (eternal.username, eternal.color, eternal.model) == (
        "TheEternal",
        "210080195",
        "llama3.2:3b",
    )
    assert (eternal.temperature, eternal.max_tokens, eternal.nom) == (0.7, 100, 50)
    assert eternal.filter_out and eternal.trim_after
    critic = catalog.get("the-critic")
    assert critic is not None
    assert critic.username == "TheCritic"
    assert critic.model != eternal.model
    assert critic.color != eternal.color
    scorer = catalog.get("eq-score")
    assert scorer is not None
    assert (scorer.temperature, scorer.max_tokens) == (1.0, 20)
    assert "Score: N" in scorer.system_prompt


def test_reply_entities_do_not_look_like_the_scorer() -> None:
    # The simulator answers `Score: N` to any system prompt that mentions "score".
    catalog = load_entities(SAMPLE_ENTITIES_DIR)
    for entity_id in ("the-eternal", "the-critic"):
        entity = catalog.get(entity_id)
        assert entity is not None
        assert "score" not in entity.system_prompt.lower()


def test_camel_case_fields_and_defaults() -> None:
    entity = Entity.model_validate(
        {
            **MINIMAL,
            "systemPrompt": "be kind",
            "userPrompt": "Say: {message}",
            "maxTokens": 99,
            "topP": 0.5,
            "topK": 7,
            "repeatPenalty": 1.3,
            "minP": 0.1,
            "filterOut": ["x"],
            "trimAfter": "END",
            "defaultPriority": 9,
            "responseChance": 0.5,
            "rateLimits": {"perMinute": 3},
            "contextTokens": 4096,
            "region": "eu",
            "someFutureField": True,
        }
    )
    assert entity.system_prompt == "be kind"
    assert entity.user_prompt == "Say: {message}"
    assert (entity.max_tokens, entity.top_p, entity.top_k) == (99, 0.5, 7)
    assert (entity.repeat_penalty, entity.min_p) == (1.3, 0.1)
    assert (entity.filter_out, entity.trim_after) == (["x"], ["END"])
    assert (entity.default_priority, entity.response_chance) == (9, 0.5)
    assert entity.rate_limits == {"perMinute": 3}
    assert (entity.context_tokens, entity.region) == (4096, "eu")
    assert entity.model_extra == {"someFutureField": True}

    plain = Entity.model_validate(MINIMAL)
    assert plain.enabled is True
    assert plain.username == "bot"  # no username: the id
    assert (plain.temperature, plain.max_tokens, plain.top_p, plain.top_k) == (0.7, 150, 0.9, 40)
    assert (plain.repeat_penalty, plain.min_p, plain.stop) == (1.1, 0.05, [])
    assert (plain.default_priority, plain.context_tokens) == (5, 8192)


def test_snake_case_names_are_accepted() -> None:
    entity = Entity(id="bot", model="m", system_prompt="hi", max_tokens=10)  # type: ignore[call-arg]
    assert (entity.system_prompt, entity.max_tokens) == ("hi", 10)


@pytest.mark.parametrize(
    "overrides",
    [
        {"temperature": -0.1},
        {"maxTokens": 0},
        {"nom": -1},
        {"topP": 1.5},
        {"responseChance": 2},
        {"maxTokens": 8192},  # no room left for a prompt in the default context
        {"model": ""},
        {"id": ""},
        {"stop": 5},
        {"filterOut": [1, 2]},
    ],
)
def test_invalid_values_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Entity.model_validate({**MINIMAL, **overrides})


@pytest.mark.parametrize(
    ("field", "given", "expected"),
    [
        ("trimAfter", "END", ["END"]),
        ("trimAfter", ["a", "", "b"], ["a", "b"]),
        ("stop", "\n", ["\n"]),
        ("filterOut", [], []),
    ],
)
def test_string_lists(field: str, given: Any, expected: list[str]) -> None:
    entity = Entity.model_validate({**MINIMAL, field: given})
    assert entity.model_dump(by_alias=True)[field] == expected


def test_id_defaults_to_the_file_stem(tmp_path: Path) -> None:
    write(tmp_path, "stem-name.json", {"model": "m"})
    write(tmp_path, "other.json", {"id": "explicit", "model": "m"})
    write(tmp_path, "notes.txt", "not an entity")
    catalog = load_entities(tmp_path)
    assert catalog.ids == ["explicit", "stem-name"]
    assert "stem-name" in catalog
    assert "other" not in catalog
    assert catalog.get("missing") is None


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("broken.json", '{"id": "broken", "model": ', "Expecting value"),
        ("wrong-type.json", {"id": "wrong", "model": "m", "maxTokens": "many"}, "maxTokens"),
        ("no-model.json", {"id": "no-model"}, "model"),
        ("scalar.json", "42", "not a JSON object"),
    ],
)
def test_a_bad_file_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, content: Any, reason: str
) -> None:
    write(tmp_path, "good.json", MINIMAL)
    write(tmp_path, name, content)
    with caplog.at_level(logging.WARNING, logger="orchestrator.domain.entities"):
        catalog = load_entities(tmp_path)
    assert catalog.ids == ["bot"]
    [record] = caplog.records
    assert name in record.getMessage()
    assert reason in record.getMessage()
    assert "\n" not in record.getMessage()


def test_list_files_and_repeated_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "a-list.json", [{"id": "one", "model": "m"}, {"model": "no id"}])
    write(tmp_path, "b-wrapped.json", {"entities": [{"id": "two", "model": "m"}]})
    write(tmp_path, "c-repeat.json", {"id": "one", "model": "other"})
    with caplog.at_level(logging.WARNING, logger="orchestrator.domain.entities"):
        catalog = load_entities(tmp_path)
    assert catalog.ids == ["one", "two"]
    first = catalog.get("one")
    assert first is not None
    assert first.model == "m"
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "a-list.json[1]" in messages[0]
    assert "c-repeat.json" in messages[1]


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(EntityError):
        load_entities(tmp_path / "nowhere")


def test_catalog_from_entities() -> None:
    catalog = EntityCatalog([Entity.model_validate(MINIMAL)])
    assert len(catalog) == 1
    assert [entity.id for entity in catalog] == ["bot"]
    assert len(EntityCatalog()) == 0
