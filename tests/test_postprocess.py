"""Post-processing, EQ score parsing and the reply as it goes on the wire."""

from __future__ import annotations

import re
from typing import Any

import pytest

from orchestrator.domain.entities import Entity, GlobalSettings
from orchestrator.domain.messages import Message
from orchestrator.domain.replies import build_reply, parse_eq_score, post_process, reply_identity

ENTITY = Entity.model_validate(
    {
        "id": "the-eternal",
        "username": "TheEternal",
        "color": "210080195",
        "model": "llama3.2:3b",
        "filterOut": ["TheEternal:", "As an AI, "],
        "trimAfter": ["\nUser:", "###"],
    }
)


def message(**params: Any) -> Message:
    fields: dict[str, Any] = {
        "id": "abc123",
        "timestamp": 1,
        "text": "hello",
        "username": "ada",
        "color": "080150227",
        "domain": "example.org",
    }
    if params:
        fields["botParams"] = params
    return Message.model_validate(fields)


TRIMMED = ENTITY.model_copy(update={"trim_whitespace": True})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A calm answer.", "A calm answer."),
        ("  padded \n", "padded"),
        ("[SKIP]", None),
        ("Well... [SKIP] maybe", None),
        ("nothing to say [skip]", "nothing to say [skip]"),  # the bot posts it: case counts
        ("TheEternal: As an AI, be still.", "be still."),
        ("Be still.\nUser: and then?", "Be still."),
        ("One ### two\nUser: three", "One"),  # the earliest marker wins
        ("Two\nUser: x ### y", "Two"),
        ("TheEternal:", None),  # nothing left
        ("   ", None),
        ("", None),
        ("### all cut", None),
    ],
)
def test_post_process(text: str, expected: str | None) -> None:
    assert post_process(text, TRIMMED) == expected


def test_whitespace_stays_unless_the_entity_trims_it() -> None:
    assert post_process("  padded \n", ENTITY) == "  padded \n"
    assert post_process(" One ### two", ENTITY) == " One "
    assert post_process(" \n ", ENTITY) is None  # nothing visible: not posted


def test_global_filters_and_markers_apply_after_the_entitys() -> None:
    settings = GlobalSettings.model_validate(
        {"globalFilterOut": ["Me:", "AI:"], "globalTrimAfter": ["Human:", "*"]}
    )
    assert post_process("AI: Me: calm *waves* Human: x", TRIMMED, settings) == "calm"
    assert post_process("TheEternal: hi ### Human:", TRIMMED, settings) == "hi"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Score: 87", 87),
        ("score:42", 42),
        ("**Score:** 64", 64),
        ("The score is 42.", 42),
        ("I give it a score of 7", 7),
        ("I'd say 55/100", 55),
        ("Score: [85]", 85),
        ("SCORE: [ 9 ]", 9),
        ("Score: 150", 0),  # out of range: not trusted
        ("Score: -5", 5),  # a sign is not read: the first number of one to three digits
        ("-5 or maybe 30", 5),  # the first number of one to three digits
        ("about 250, no, 80", 0),  # the first number is over 100: it scores 0
        ("in 2024 I'd say 44", 44),  # four digits are not a score
        ("Score: 72.6", 72),  # the digits before the point, as the site's bot reads them
        ("score of 12 but Score: 90", 90),  # `Score: N` comes first
        ("Score: 0", 0),
        ("no number here", 0),
        ("", 0),
    ],
)
def test_parse_eq_score(answer: str, expected: int) -> None:
    assert parse_eq_score(answer) == expected


@pytest.mark.parametrize(
    ("ais", "expected"),
    [
        (None, ("TheEternal", "210080195")),
        ("Oracle:111222033", ("Oracle", "111222033")),
        (" Oracle : 111222033 ", ("Oracle", "111222033")),
        ("Oracle", ("TheEternal", "210080195")),  # no colon
        (":111222033", ("TheEternal", "210080195")),  # no name
        ("Oracle:", ("TheEternal", "210080195")),  # no color
        ("", ("TheEternal", "210080195")),
    ],
)
def test_reply_identity(ais: str | None, expected: tuple[str, str]) -> None:
    assert reply_identity(ENTITY, message(entity="the-eternal", ais=ais)) == expected


def test_random_identity_is_deterministic_and_well_formed() -> None:
    name, color = reply_identity(ENTITY, message(ais="Oracle:random"))
    assert name == "Oracle"
    assert re.fullmatch(r"\d{9}", color)
    assert all(int(color[i : i + 3]) <= 255 for i in (0, 3, 6))
    assert reply_identity(ENTITY, message(ais="Oracle:RANDOM")) == (name, color)
    other = message(ais="Oracle:random").model_copy(update={"id": "zzz999"})
    assert reply_identity(ENTITY, other)[1] != color


def test_build_reply_wire() -> None:
    human = message(
        status="processing",
        priority=9,
        entity="the-eternal",
        ais="Oracle:111222033",
        humanUsername="ada",
        humanColor="080150227",
        sessionId="s-1",
        claimedBy="bridge-1",
    )
    assert build_reply(ENTITY, human, "Be still.").wire() == {
        "id": "abc123-re",
        "text": "Be still.",
        "username": "Oracle",
        "color": "111222033",
        "domain": "example.org",
        "message-type": "AI",
        "replyTo": "abc123",
        "eqScore": 0,
        "botParams": {
            "entity": "the-eternal",
            "ais": "Oracle:111222033",
            "sessionId": "s-1",
            "humanUsername": "ada",
            "humanColor": "080150227",
        },
    }


def test_build_reply_fills_the_human_from_the_message() -> None:
    wire = build_reply(ENTITY, message(entity="the-eternal"), "ok").wire()
    assert (wire["username"], wire["color"]) == ("TheEternal", "210080195")
    assert wire["botParams"] == {
        "entity": "the-eternal",
        "humanUsername": "ada",
        "humanColor": "080150227",
    }
    assert "status" not in wire["botParams"]
    assert "priority" not in wire["botParams"]
