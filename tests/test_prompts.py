"""Chat and EQ requests from an entity and a message, as the site's bot builds them: turns and
their roles, the warm-up, the budget, the options under each API's names."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.entities import Entity, GlobalSettings
from orchestrator.domain.messages import Message
from orchestrator.domain.prompts import build_chat_request, build_eq_request

ENTITY = {"id": "bot", "username": "Bot", "model": "llama3.2:3b", "systemPrompt": "Be wise."}
COMPLETION = ("assistant", "")  # the empty assistant turn that ends every reply's request


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


def turns(
    entity_: Entity,
    message_: Message,
    factor: float = 1.0,
    settings: GlobalSettings | None = None,
) -> list[tuple[str, str]]:
    request = build_chat_request(entity_, message_, settings, history_budget_factor=factor)
    return [(turn.role, turn.content) for turn in request.messages]


@pytest.mark.parametrize(
    ("context", "expected_history"),
    [
        (None, []),
        ([], []),
        (["ada: hi", "Bot: hello ada"], [("user", "hi"), ("assistant", "hello ada")]),
        (["bo: hey all"], [("user", "hey all")]),  # anyone but the reply's name is the user
        (["OtherBot: I am a bot too"], [("user", "I am a bot too")]),
        (["Bot: time: 5: 30"], [("assistant", "time: 5: 30")]),  # split at the first ": "
        (["no speaker here"], [("user", "no speaker here")]),
        (["Bot:tight"], [("user", "Bot:tight")]),  # no ": " → the whole line
        (["ada: ", "", "Bot: ok"], [("assistant", "ok")]),  # blank texts are left out
    ],
)
def test_context_roles(context: list[str] | None, expected_history: list[tuple[str, str]]) -> None:
    assert turns(entity(), message(context)) == [
        ("system", "Be wise."),
        *expected_history,
        ("user", "now?"),
        COMPLETION,
    ]


def test_the_ais_name_speaks_as_the_assistant() -> None:
    got = turns(entity(), message(["Oracle: I see", "Bot: me too"], ais="Oracle:080150227"))
    assert got[1:3] == [("assistant", "I see"), ("user", "me too")]


@pytest.mark.parametrize("system_prompt", ["", None])
def test_without_a_system_prompt_the_bot_says_who_it_is(system_prompt: str | None) -> None:
    fields = {"systemPrompt": system_prompt} if system_prompt is not None else {}
    plain = Entity.model_validate({"id": "bot", "username": "Bot", "model": "m", **fields})
    assert turns(plain, message())[0] == ("system", "You are Bot.")


@pytest.mark.parametrize(
    ("nom", "expected"),
    [
        (2, ["c", "d"]),
        (4, ["a", "b", "c", "d"]),
        (10, ["a", "b", "c", "d"]),
        (0, ["a", "b", "c", "d"]),  # 0 is the site bot's `nom || 100`
    ],
)
def test_nom_keeps_the_newest_lines(nom: int, expected: list[str]) -> None:
    context = ["bo: a", "bo: b", "bo: c", "bo: d"]
    history = turns(entity(nom=nom), message(context))[1:-2]
    assert [content for _, content in history] == expected


# A context of 510 tokens leaves a budget of 10 (510 - 500): 40 characters, 10 of them system.
SMALL = {"contextTokens": 510, "systemPrompt": "S" * 10}
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
    assert got[-2:] == [("user", text), COMPLETION]
    assert [content for _, content in got[1:-2]] == expected_history


def test_a_long_line_stops_the_history_without_gaps() -> None:
    context = ["bo: old", "bo: " + "x" * 100, "bo: new"]
    history = turns(entity(**SMALL), message(context, text="q"))[1:-2]
    assert history == [("user", "new")]


def test_the_system_prompt_warm_up_and_message_stay_even_over_budget() -> None:
    huge = entity(contextTokens=510, systemPrompt="S" * 500, initContext=True)
    settings = GlobalSettings.model_validate(
        {"initContext": {"messages": [{"role": "user", "content": "W" * 300}]}}
    )
    got = turns(huge, message(LINES, text="q" * 500), settings=settings)
    assert got == [("system", "S" * 500), ("user", "W" * 300), ("user", "q" * 500), COMPLETION]


def test_warm_up_turns_only_for_entities_that_ask() -> None:
    settings = GlobalSettings.model_validate(
        {
            "initContext": {
                "messages": [
                    {"role": "user", "content": "Who are you?"},
                    {"role": "assistant", "content": "A friend."},
                ]
            }
        }
    )
    asked = turns(entity(initContext=True), message(["ada: hi"]), settings=settings)
    assert asked == [
        ("system", "Be wise."),
        ("user", "Who are you?"),
        ("assistant", "A friend."),
        ("user", "hi"),
        ("user", "now?"),
        COMPLETION,
    ]
    plain = turns(entity(), message(["ada: hi"]), settings=settings)
    assert ("user", "Who are you?") not in plain


def test_history_budget_factor_out_of_range() -> None:
    with pytest.raises(ValueError, match="history_budget_factor"):
        build_chat_request(entity(), message(), history_budget_factor=1.5)


@pytest.mark.parametrize(
    ("user_prompt", "expected"),
    [
        (None, "now?"),
        ("Reply to: {message}", "Reply to: now?"),
        ("{text} / {message}", "now? / now?"),
        ("No placeholder {here}", "now?"),  # the site's old fixed sentences are ignored
    ],
)
def test_user_prompt_template(user_prompt: str | None, expected: str) -> None:
    assert turns(entity(userPrompt=user_prompt), message())[-2] == ("user", expected)


def test_options_under_each_apis_names() -> None:
    request = build_chat_request(
        entity(
            temperature=0.3,
            maxTokens=77,
            topP=0.8,
            topK=12,
            repeatPenalty=1.2,
            minP=0.02,
            stop=["\nUser:"],
            numCtx=4096,
        ),
        message(),
    )
    assert request.model == "llama3.2:3b"
    sampling = {"temperature": 0.3, "top_p": 0.8, "top_k": 12, "repeat_penalty": 1.2, "min_p": 0.02}
    assert request.ollama_body()["options"] == {
        **sampling,
        "num_predict": 77,
        "stop": ["\nUser:"],
        "num_ctx": 4096,
    }
    body = request.openai_body()
    assert {name: body[name] for name in sampling} == sampling
    assert (body["max_tokens"], body["stop"], body["stream"]) == (77, ["\nUser:"], False)
    assert "num_ctx" not in body and "options" not in body


def test_no_stop_and_no_num_ctx_unless_given() -> None:
    options = build_chat_request(entity(), message()).ollama_body()["options"]
    assert "stop" not in options and "num_ctx" not in options


def test_global_stop_sequences_are_unescaped_and_come_first() -> None:
    settings = GlobalSettings.model_validate(
        {"globalStopSequences": ["Human:", "\\nHuman:", "\\n", "a\\tb", "c\\\\d"]}
    )
    request = build_chat_request(entity(stop=["\nUser:"]), message(), settings)
    assert request.stop == ["Human:", "\nHuman:", "\n", "a\tb", "c\\d", "\nUser:"]


@pytest.mark.parametrize(
    ("prompt", "expected_system"),
    [
        ("Rate this: [message]. Score: [N]", "Rate this: I feel heard. Score: [N]"),
        ("[message] and [message]", "I feel heard and [message]"),  # the first one only
        ("Rate the message.", "Rate the message."),
    ],
)
def test_eq_request(prompt: str, expected_system: str) -> None:
    scorer = entity(id="eq-score", systemPrompt=prompt, maxTokens=150, temperature=0.2)
    request = build_eq_request(scorer, message(["bo: ignored context"], text="I feel heard"))
    assert [(turn.role, turn.content) for turn in request.messages] == [
        ("system", expected_system),
        ("user", "I feel heard"),
    ]
    assert request.model == "llama3.2:3b"
    assert request.openai_body() == {
        "model": "llama3.2:3b",
        "messages": [
            {"role": "system", "content": expected_system},
            {"role": "user", "content": "I feel heard"},
        ],
        "temperature": 1.0,
        "max_tokens": 20,
        "stream": False,
    }
