"""Entity files: the operator's own files load as they are (tests/operator_entities, written
from the site's documents), our simpler files too; the requests built from them are the ones
the site's bot sends; edits take effect without a restart."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.domain.entities import Entity, EntityCatalog, as_the_site_bot_reads
from orchestrator.domain.messages import Message
from orchestrator.domain.prompts import build_chat_request, build_eq_request
from orchestrator.entity_folder import EntityFolder, load_entities
from orchestrator.errors import EntityError
from standins import SAMPLE_ENTITIES_DIR

OPERATOR_ENTITIES = Path(__file__).parent / "operator_entities"
MINIMAL = {"id": "bot", "model": "llama3.2:3b"}
GLOBAL_STOP = ["Human:", "\nHuman:", "User:", "Message ID:", "https:", "\n", "\nUser:"]


def write(folder: Path, name: str, content: Any) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / name).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def operator() -> EntityCatalog:
    return load_entities(OPERATOR_ENTITIES)


def test_every_operator_file_loads(operator: EntityCatalog) -> None:
    assert operator.ids == sorted(
        path.stem for path in OPERATOR_ENTITIES.glob("*.json") if path.name != "global.json"
    )
    assert len(operator) >= 10
    assert "global" not in operator


@pytest.mark.parametrize(
    ("entity_id", "model"),
    [
        ("the-eternal", "the-eternal-f16"),  # baseModel + defaultQuantization
        ("emotional-support-therapist", "emotional-intelligence-f16"),  # the model is not the id
        ("alcohol-addiction", "alcohol-addiction-q8_0"),
        ("the-skeptic", "the-skeptic-f32"),  # the default quantization's modelPath
        ("plain-model", "llama3.2:3b"),  # our own plain `model`
        ("the-archivist", "the-archivist-f16"),  # a legacy `model` is only the last fallback
        ("eq-score", "eq-score-f16"),
    ],
)
def test_the_model_as_the_site_bot_names_it(
    operator: EntityCatalog, entity_id: str, model: str
) -> None:
    entity = operator.get(entity_id)
    assert entity is not None
    assert entity.model == model


def test_both_spellings_and_the_bots_fallbacks(operator: EntityCatalog) -> None:
    therapist = operator.get("emotional-support-therapist")  # camelCase
    assert therapist is not None
    assert (therapist.max_tokens, therapist.top_p, therapist.top_k) == (180, 0.95, 50)
    assert (therapist.repeat_penalty, therapist.min_p) == (1.05, 0.02)
    eternal = operator.get("the-eternal")  # snake_case
    assert eternal is not None
    assert (eternal.max_tokens, eternal.top_p, eternal.temperature) == (200, 0.9, 1.0)
    both = operator.get("alcohol-addiction")  # both: snake_case, the newer, wins
    assert both is not None
    assert (both.max_tokens, both.top_p) == (120, 0.85)
    cold = operator.get("cold-logic")  # `value || default`: 0 takes the default
    assert cold is not None
    assert (cold.temperature, cold.max_tokens, cold.top_k, cold.min_p, cold.nom) == (
        0.7,
        150,
        40,
        0.05,
        100,
    )


def test_fields_we_do_not_use_are_kept(operator: EntityCatalog) -> None:
    archivist = operator.get("the-archivist")
    assert archivist is not None
    extra = archivist.model_extra or {}
    for name in ("modelServer", "systemRole", "messagesToRead", "greeting", "amazon-link"):
        assert name in extra, name
    assert (extra["defaultPriority"], extra["responseChance"]) == (50, 0.4)
    assert extra["rateLimits"] == {
        "minSecondsBetweenPosts": 10,
        "maxPostsPerMinute": 3,
        "maxPostsPerHour": 40,
    }


def test_who_is_answered(operator: EntityCatalog) -> None:
    for entity_id, refusal in (
        ("the-sleeper", "disabled"),
        ("god-mode", "specialHandler"),
    ):
        entity = operator.get(entity_id)
        assert entity is not None and not entity.answers
        assert refusal in (entity.refusal() or "")
    eternal = operator.get("the-eternal")
    assert eternal is not None and eternal.answers and eternal.refusal() is None
    assert "god-mode-f16" not in operator.answered_models


def test_global_json_is_settings_not_an_entity(operator: EntityCatalog) -> None:
    settings = operator.global_settings
    assert settings.stop == GLOBAL_STOP
    assert settings.trim_after == ["Human:", "*", "\\", "|", "User:"]
    assert settings.filter_out == ["Me:", "AI:"]
    assert len(settings.init_context.messages) == 4
    assert (settings.model_extra or {})["maxMessagesPerMinute"] == 100


def human(text: str, context: list[str] | None = None, **params: Any) -> Message:
    return Message.model_validate(
        {
            "id": "m1",
            "timestamp": 1,
            "text": text,
            "username": "ada",
            "context": context,
            "botParams": {"entity": "x", **params},
        }
    )


THERAPIST_PROMPT = "You are a gentle listener. Reflect feelings back before you advise."
CONTEXT = ["ada: I lost my job today", "TheEternal: That is heavy.", "bo: same here"]
WARM_UP = [
    {"role": "user", "content": "Before we begin: who are you?"},
    {"role": "assistant", "content": "Someone who listens first."},
    {"role": "user", "content": "And how do you answer?"},
    {"role": "assistant", "content": "Briefly, and kindly."},
]

# What the site's bot sends for each entity (its OpenAI-compatible payload), per the operator's
# documents: system, warm-up when asked, the context with roles, the message, an empty
# assistant turn; every option at the top level; the global stop list unescaped.
SENT: list[tuple[str, Message, dict[str, Any]]] = [
    (
        "the-eternal",
        human("what now?", CONTEXT),
        {
            "model": "the-eternal-f16",
            "messages": [
                {"role": "system", "content": "Be free."},
                {"role": "user", "content": "I lost my job today"},
                {"role": "assistant", "content": "That is heavy."},
                {"role": "user", "content": "same here"},
                {"role": "user", "content": "what now?"},
                {"role": "assistant", "content": ""},
            ],
            "temperature": 1.0,
            "max_tokens": 200,
            "top_p": 0.9,
            "top_k": 40,
            "repeat_penalty": 1.1,
            "min_p": 0.05,
            "stop": GLOBAL_STOP,
            "stream": False,
        },
    ),
    (
        "emotional-support-therapist",
        human("I can't sleep", ["Therapist: How are you?", "ada: tired"]),
        {
            "model": "emotional-intelligence-f16",
            "messages": [
                {"role": "system", "content": THERAPIST_PROMPT},
                *WARM_UP,
                {"role": "assistant", "content": "How are you?"},
                {"role": "user", "content": "tired"},
                {"role": "user", "content": "I can't sleep"},
                {"role": "assistant", "content": ""},
            ],
            "temperature": 0.8,
            "max_tokens": 180,
            "top_p": 0.95,
            "top_k": 50,
            "repeat_penalty": 1.05,
            "min_p": 0.02,
            "stop": GLOBAL_STOP,
            "stream": False,
        },
    ),
    (
        "cold-logic",
        human("2+2?", ["Oracle: four", "ColdLogic: four"], ais="Oracle:111222033"),
        {
            "model": "cold-logic-f16",
            "messages": [
                {"role": "system", "content": "Only facts."},
                {"role": "assistant", "content": "four"},  # the `ais` name is the assistant
                {"role": "user", "content": "four"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": ""},
            ],
            "temperature": 0.7,
            "max_tokens": 150,
            "top_p": 0.9,
            "top_k": 40,
            "repeat_penalty": 1.1,
            "min_p": 0.05,
            "stop": GLOBAL_STOP,
            "stream": False,
        },
    ),
    (
        "the-empty-one",
        human("hello?"),
        {
            "model": "the-empty-one-f16",
            "messages": [
                {"role": "system", "content": "You are Nobody."},
                {"role": "user", "content": "hello?"},
                {"role": "assistant", "content": ""},
            ],
            "temperature": 0.7,
            "max_tokens": 150,
            "top_p": 0.9,
            "top_k": 40,
            "repeat_penalty": 1.1,
            "min_p": 0.05,
            "stop": GLOBAL_STOP,
            "stream": False,
        },
    ),
]


@pytest.mark.parametrize(("entity_id", "message", "sent"), SENT, ids=[row[0] for row in SENT])
def test_the_request_is_the_one_the_site_bot_sends(
    operator: EntityCatalog, entity_id: str, message: Message, sent: dict[str, Any]
) -> None:
    entity = operator.get(entity_id)
    assert entity is not None
    request = build_chat_request(entity, message, operator.global_settings)
    assert request.openai_body() == sent
    ollama = request.ollama_body()
    assert ollama["messages"] == sent["messages"]
    assert ollama["options"]["num_predict"] == sent["max_tokens"]
    assert "num_ctx" not in ollama["options"]


def test_the_scorers_request(operator: EntityCatalog) -> None:
    scorer = operator.get("eq-score")
    assert scorer is not None
    body = build_eq_request(scorer, human("You made my day!", CONTEXT)).openai_body()
    assert body["model"] == "eq-score-f16"
    system, user = body["messages"]
    assert "Message: You made my day!\nAnswer" in system["content"]
    assert "[message]" not in system["content"]
    assert user == {"role": "user", "content": "You made my day!"}
    assert (body["temperature"], body["max_tokens"], body["stream"]) == (1.0, 20, False)
    assert "stop" not in body


# Our own files -------------------------------------------------------------------------------


def test_our_samples_load() -> None:
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
    scorer = catalog.get("eq-score")
    assert scorer is not None
    assert "Score: N" in scorer.system_prompt


def test_reply_entities_do_not_look_like_the_scorer() -> None:
    # The simulator answers `Score: N` to any system prompt that mentions "score".
    catalog = load_entities(SAMPLE_ENTITIES_DIR)
    for entity_id in ("the-eternal", "the-critic"):
        entity = catalog.get(entity_id)
        assert entity is not None
        assert "score" not in entity.system_text.lower()


def test_defaults_and_names() -> None:
    plain = Entity.model_validate(MINIMAL)
    assert plain.enabled is True
    assert plain.username == "bot"  # no username: the id
    assert (plain.temperature, plain.max_tokens, plain.top_p, plain.top_k) == (0.7, 150, 0.9, 40)
    assert (plain.repeat_penalty, plain.min_p, plain.stop) == (1.1, 0.05, [])
    assert (plain.context_tokens, plain.num_ctx) == (8192, None)
    assert plain.system_text == "You are bot."


@pytest.mark.parametrize(
    "overrides",
    [
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
    ("overrides", "field", "used"),
    [
        ({"temperature": -0.1}, "temperature", 0.7),
        ({"temperature": float("inf")}, "temperature", 0.7),
        ({"temperature": "hot"}, "temperature", 0.7),
        ({"temperature": "0.3"}, "temperature", 0.3),
        ({"nom": -1}, "nom", 100),
        ({"topP": 1.5}, "top_p", 0.9),
        ({"maxTokens": "many"}, "max_tokens", 150),
        ({"max_tokens": 1e23}, "max_tokens", 150),
        ({"max_tokens": 120.5}, "max_tokens", 150),
        ({"top_k": True}, "top_k", 40),
        ({"num_ctx": 0}, "num_ctx", None),
        ({"numCtx": 4096}, "num_ctx", 4096),
        ({"contextTokens": 400}, "context_tokens", 8192),  # no room once the reserve is taken
    ],
)
def test_a_value_no_server_takes_is_not_sent_and_the_entity_still_answers(
    overrides: dict[str, Any], field: str, used: Any
) -> None:
    fields, notes = as_the_site_bot_reads({**MINIMAL, **overrides})
    entity = Entity.model_validate(fields)
    assert getattr(entity, field) == used
    if used in (0.7, 150, 0.9, 40, 100, None, 8192):
        assert notes, "a value replaced is said in the log"


def test_the_files_name_is_the_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "stem-name.json", {"model": "m"})
    write(tmp_path, "other.json", {"id": "explicit", "model": "m"})
    write(tmp_path, "notes.txt", "not an entity")
    with caplog.at_level(logging.INFO, logger="orchestrator.entity_folder"):
        catalog = load_entities(tmp_path)
    assert catalog.ids == ["other", "stem-name"]
    assert any("'explicit' is not the file's name" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("broken.json", '{"id": "broken", "model": ', "Expecting value"),
        ("wrong-type.json", {"model": "m", "stop": {"a": 1}}, "stop"),
        ("huge-number.json", '{"model": "m", "nom": ' + "9" * 5000 + "}", "digits"),
        ("too-deep.json", '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}", "recursion"),
        ("no-model.json", {"username": "x"}, "no model"),
        ("scalar.json", "42", "not a JSON object"),
    ],
)
def test_a_file_that_cannot_be_used_is_skipped_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, content: Any, reason: str
) -> None:
    write(tmp_path, "bot.json", MINIMAL)
    write(tmp_path, name, content)
    with caplog.at_level(logging.WARNING, logger="orchestrator.entity_folder"):
        catalog = load_entities(tmp_path)
    assert catalog.ids == ["bot"]
    [record] = caplog.records
    assert name in record.getMessage()
    assert reason in record.getMessage()
    assert "\n" not in record.getMessage()


def test_list_files_and_repeated_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "a-list.json", [{"id": "one", "model": "m"}, {"model": "no id"}])
    write(tmp_path, "b-wrapped.json", {"entities": [{"id": "two", "model": "m"}]})
    write(tmp_path, "c-repeat.json", {"entities": [{"id": "one", "model": "other"}]})
    with caplog.at_level(logging.WARNING, logger="orchestrator.entity_folder"):
        catalog = load_entities(tmp_path)
    assert catalog.ids == ["one", "two"]
    first = catalog.get("one")
    assert first is not None
    assert first.model == "m"
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "a-list.json" in messages[0] and "[1]" in messages[0]
    assert "c-repeat.json" in messages[1]


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(EntityError):
        load_entities(tmp_path / "nowhere")


# Live edits ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_edits_take_effect_at_the_next_look_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    write(tmp_path, "bot.json", MINIMAL)
    folder = EntityFolder(tmp_path, clock=clock)
    write(tmp_path, "new.json", {"model": "m", "systemPrompt": "hello"})
    assert folder.catalog().get("new") is None  # the folder is looked at once a second
    added = folder.get("new")  # but a message naming a file just added finds it at once
    assert added is not None and added.system_prompt == "hello"
    assert folder.get("nobody") is None  # a name with no file is no cause to look again
    write(tmp_path, "new.json", {"model": "m", "systemPrompt": "changed, and longer"})
    write(tmp_path, "global.json", {"globalStopSequences": ["\\n"]})
    (tmp_path / "bot.json").unlink()
    clock.now += 1.0
    changed = folder.get("new")
    assert changed is not None and changed.system_prompt == "changed, and longer"
    assert folder.global_settings.stop == ["\n"]
    assert folder.get("bot") is None
    # An edit that breaks a file keeps its last good version, and says so once.
    write(tmp_path, "new.json", '{"model": "m", "systemPrompt": ')
    with caplog.at_level(logging.WARNING, logger="orchestrator.entity_folder"):
        for _ in range(3):
            clock.now += 1.0
            kept = folder.get("new")
            assert kept is not None and kept.system_prompt == "changed, and longer"
    assert len([r for r in caplog.records if "last good version" in r.getMessage()]) == 1
    write(tmp_path, "new.json", {"model": "m", "systemPrompt": "mended"})
    clock.now += 1.0
    mended = folder.get("new")
    assert mended is not None and mended.system_prompt == "mended"


def test_the_choices_left_open_are_logged_once_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(SAMPLE_ENTITIES_DIR / "the-eternal.json", tmp_path)
    with caplog.at_level(logging.INFO, logger="orchestrator.entity_folder"):
        folder = EntityFolder(tmp_path, clock=Clock())
        folder.catalog()
    choices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("entities:")]
    assert any("systemPrompt" in choice for choice in choices)
    assert len(choices) == len(set(choices))
