"""Chat and EQ requests from an entity and a message: roles, limits, budget, options."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.entities import Entity
from orchestrator.domain.messages import Message
from orchestrator.domain.prompts import build_chat_request, build_eq_request

ENTITY = {"id": "bot", "username": "Bot", "model": "llama3.2:3b", "systemPrompt": "Be wise."}


def entity(**overrides: Any) -> Entity:
    return Entity.model_validate({**ENTITY, **overrides})


def message(context: list[str] | None = None, text: str = "now?", **params: Any) -> Message:
    fields: dict[str, Any] = {
        "id": "m1",
        "timestamp": 1,
        "text": text,
        "username": "ada",
        "context": context,
    }
    if params:
        fields["botParams"] = params
    return Message.model_validate(fields)


def turns(entity_: Entity, message_: Message, factor: float = 1.0) -> list[tuple[str, str]]:
    request = build_chat_request(entity_, message_, history_budget_factor=factor)
    return [(turn.role, turn.content) for turn in request.messages]


@pytest.mark.parametrize(
    ("context", "expected_history"),
    [
        (None, []),
        ([], []),
        (["ada: hi", "Bot: hello ada"], [("user", "hi"), ("assistant", "hello ada")]),
        (["bo: hey all"], [("assistant", "hey all")]),  # other people speak as assistant
        (["ada: time: 5: 30"], [("user", "time: 5: 30")]),  # split at the first ": " only
        (["no speaker here"], [("user", "no speaker here")]),
        (["ada:tight"], [("user", "ada:tight")]),  # no ": " → whole line
        (["ada: ", "", "bo: ok"], [("assistant", "ok")]),  # empty texts are dropped
    ],
)
def test_context_roles(context: list[str] | None, expected_history: list[tuple[str, str]]) -> None:
    assert turns(entity(), message(context)) == [
        ("system", "Be wise."),
        *expected_history,
        ("user", "now?"),
    ]


def test_bot_params_human_username_is_the_human_too() -> None:
    got = turns(entity(), message(["ada2: me again", "bo: hi"], humanUsername="ada2"))
    assert got[1:3] == [("user", "me again"), ("assistant", "hi")]


def test_no_system_turn_without_a_system_prompt() -> None:
    assert turns(entity(systemPrompt=""), message()) == [("user", "now?")]


@pytest.mark.parametrize(
    ("nom", "expected"),
    [
        (0, []),
        (2, ["c", "d"]),
        (4, ["a", "b", "c", "d"]),
        (10, ["a", "b", "c", "d"]),
    ],
)
def test_nom_keeps_the_newest_lines(nom: int, expected: list[str]) -> None:
    context = ["bo: a", "bo: b", "bo: c", "bo: d"]
    history = turns(entity(nom=nom), message(context))[1:-1]
    assert [content for _, content in history] == expected


# maxTokens 10 of contextTokens 20: a 10-token prompt budget, 40 characters, 10 of them system.
SMALL = {"contextTokens": 20, "maxTokens": 10, "systemPrompt": "S" * 10}
LINES = ["bo: " + letter * 10 for letter in "abcd"]  # 10 characters each once split


@pytest.mark.parametrize(
    ("text", "factor", "expected_history"),
    [
        ("q" * 5, 1.0, ["c" * 10, "d" * 10]),  # 25 characters left: two lines
        ("q" * 10, 1.0, ["c" * 10, "d" * 10]),  # exactly 20 left: two lines still fit
        ("q" * 15, 1.0, ["d" * 10]),
        ("q" * 5, 0.5, ["d" * 10]),  # half of 25
        ("q" * 5, 0.0, []),
        ("q" * 30, 1.0, []),  # the message fills the budget
    ],
)
def test_budget_drops_the_oldest_history_first(
    text: str, factor: float, expected_history: list[str]
) -> None:
    got = turns(entity(**SMALL), message(LINES, text=text), factor)
    assert got[0] == ("system", "S" * 10)
    assert got[-1] == ("user", text)
    assert [content for _, content in got[1:-1]] == expected_history


def test_a_long_line_stops_the_history_without_gaps() -> None:
    context = ["bo: old", "bo: " + "x" * 100, "bo: new"]
    history = turns(entity(**SMALL), message(context, text="q"))[1:-1]
    assert history == [("assistant", "new")]


def test_system_prompt_and_message_stay_even_over_budget() -> None:
    huge = entity(contextTokens=20, maxTokens=10, systemPrompt="S" * 500)
    got = turns(huge, message(LINES, text="q" * 500))
    assert got == [("system", "S" * 500), ("user", "q" * 500)]


def test_history_budget_factor_out_of_range() -> None:
    with pytest.raises(ValueError, match="history_budget_factor"):
        build_chat_request(entity(), message(), history_budget_factor=1.5)


@pytest.mark.parametrize(
    ("user_prompt", "expected"),
    [
        (None, "now?"),
        ("Reply to: {message}", "Reply to: now?"),
        ("{text} / {message}", "now? / now?"),
        ("No placeholder {here}", "now?"),
    ],
)
def test_user_prompt_template(user_prompt: str | None, expected: str) -> None:
    assert turns(entity(userPrompt=user_prompt), message())[-1] == ("user", expected)


def test_options_use_ollama_names() -> None:
    request = build_chat_request(
        entity(
            temperature=0.3,
            maxTokens=77,
            topP=0.8,
            topK=12,
            repeatPenalty=1.2,
            minP=0.02,
            stop=["\nUser:"],
            contextTokens=4096,
        ),
        message(),
    )
    assert request.model == "llama3.2:3b"
    assert request.options == {
        "temperature": 0.3,
        "num_predict": 77,
        "top_p": 0.8,
        "top_k": 12,
        "repeat_penalty": 1.2,
        "min_p": 0.02,
        "stop": ["\nUser:"],
        "num_ctx": 4096,
    }


def test_no_stop_option_when_empty() -> None:
    assert "stop" not in build_chat_request(entity(), message()).options


@pytest.mark.parametrize(("scorer_max", "expected_predict"), [(150, 20), (20, 20), (8, 8)])
def test_eq_request(scorer_max: int, expected_predict: int) -> None:
    scorer = entity(id="eq-score", systemPrompt="Rate it. Score: N", maxTokens=scorer_max)
    request = build_eq_request(scorer, message(["bo: ignored context"], text="I feel heard"))
    assert [(turn.role, turn.content) for turn in request.messages] == [
        ("system", "Rate it. Score: N"),
        ("user", "I feel heard"),
    ]
    assert request.model == "llama3.2:3b"
    assert request.options == {
        "temperature": 1.0,
        "num_predict": expected_predict,
        "num_ctx": 8192,
    }
