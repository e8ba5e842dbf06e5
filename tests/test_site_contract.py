"""The site queue's contract (queue-api.md: the route table and "Exact behaviours a client can
see"), as a table of cases run against the local queue over real HTTP.

Each case is the requests a client makes, in order, and what it must see: the status, the
whole answer (a dict lists every key the answer has), and open CORS on every answer. Values the
queue makes up are matched by kind: `NOW` (a time in ms during the case), `FRESH_ID`, `Same`
(equal wherever the same name appears in the case).

`STRICTER_THAN_THE_SITE` lists the bodies the deployed queue takes by mistake (or fails on
with a 500) that the local queue refuses, with the deployed queue's answer, ours, and why.
Each is asserted to be refused and to change nothing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from standins.http_server import ThreadedServer
from standins.local_queue import SITE_CACHE_SIZE, QueueStore, build_app

DOMAIN = "saywhatwant.app"
WORKER = "bridge-1"

# Matching -------------------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Run:
    """One case's run: when it started, and the values `Same` has seen."""

    started_ms: int
    seen: dict[str, Any] = field(default_factory=dict)


class Matcher:
    def check(self, actual: Any, run: Run, where: str) -> None:
        raise NotImplementedError


class Anything(Matcher):
    def check(self, actual: Any, run: Run, where: str) -> None:
        pass

    def __repr__(self) -> str:
        return "ANY"


class Now(Matcher):
    """A time in ms that the queue set while the case ran."""

    def check(self, actual: Any, run: Run, where: str) -> None:
        assert isinstance(actual, int), f"{where}: {actual!r} is not a time in ms"
        assert not isinstance(actual, bool), f"{where}: {actual!r} is not a time in ms"
        assert run.started_ms <= actual <= now_ms(), f"{where}: {actual} is not now"

    def __repr__(self) -> str:
        return "NOW"


class FreshId(Matcher):
    """An id the queue made: ten characters of [a-z0-9]."""

    def check(self, actual: Any, run: Run, where: str) -> None:
        assert isinstance(actual, str), f"{where}: {actual!r} is not an id"
        assert re.fullmatch("[a-z0-9]{10}", actual), f"{where}: {actual!r} is not a made id"

    def __repr__(self) -> str:
        return "FRESH_ID"


ANY = Anything()
NOW = Now()
FRESH_ID = FreshId()


@dataclass(frozen=True)
class Same(Matcher):
    """The same value wherever this name appears in a case; the first sighting must match
    `first`."""

    name: str
    first: Any = ANY

    def check(self, actual: Any, run: Run, where: str) -> None:
        if self.name in run.seen:
            assert actual == run.seen[self.name], f"{where}: {actual!r} is not {self.name}"
            return
        check(self.first, actual, run, where)
        run.seen[self.name] = actual


@dataclass(frozen=True)
class Has(Matcher):
    """A dict with at least these keys, each matching."""

    fields: dict[str, Any]

    def check(self, actual: Any, run: Run, where: str) -> None:
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, expected in self.fields.items():
            assert key in actual, f"{where}: no {key!r} in {sorted(actual)}"
            check(expected, actual[key], run, f"{where}.{key}")


@dataclass(frozen=True)
class Ids(Matcher):
    """A list of messages with exactly these ids, in this order."""

    ids: tuple[str, ...]

    def check(self, actual: Any, run: Run, where: str) -> None:
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        got = [message.get("id") for message in actual]
        assert got == list(self.ids), f"{where}: ids {got} != {list(self.ids)}"


def ids(*message_ids: str) -> Ids:
    return Ids(message_ids)


def check(expected: Any, actual: Any, run: Run, where: str) -> None:
    if isinstance(expected, Matcher):
        expected.check(actual, run, where)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert set(actual) == set(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key, value in expected.items():
            check(value, actual[key], run, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        assert len(actual) == len(expected), f"{where}: {len(actual)} items, not {len(expected)}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            check(want, got, run, f"{where}[{index}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
        assert isinstance(actual, bool) == isinstance(expected, bool), f"{where}: {actual!r}"


# Requests -------------------------------------------------------------------------------------


class NoBody:
    def __repr__(self) -> str:
        return "NO_BODY"


NO_BODY = NoBody()


@dataclass(frozen=True)
class Raw:
    """A body sent as these bytes, not as JSON."""

    content: bytes


@dataclass(frozen=True)
class Call:
    """One request and what the client must see."""

    method: str
    path: str
    body: Any = NO_BODY
    params: dict[str, str] | None = None
    status: int = 200
    answer: Any = ANY


def send(http: httpx.Client, method: str, path: str, body: Any, params: Any) -> httpx.Response:
    if isinstance(body, NoBody):
        return http.request(method, path, params=params)
    content = body.content if isinstance(body, Raw) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    return http.request(method, path, params=params, content=content, headers=headers)


def post(body: Any, answer: Any = ANY, status: int = 200) -> Call:
    return Call("POST", "/api/comments", body, status=status, answer=answer)


def success(message_id: Any, timestamp: Any) -> dict[str, Any]:
    return {"id": message_id, "timestamp": timestamp, "status": "success"}


def comments(messages: Any, score: Any = 0, **params: str) -> Call:
    """GET /api/comments (after=0 unless the params say otherwise)."""
    answer = {"messages": messages, "version": "1.0.1", "globalScore": score}
    return Call("GET", "/api/comments", params=params or {"after": "0"}, answer=answer)


def pending(listed: Any, **params: str) -> Call:
    answer = {"pending": listed, "platformOnly": [], "kvStats": {"reads": 0, "writes": 0}}
    return Call("GET", "/api/queue/pending", params=params, answer=answer)


def claim_next(answer: Any, worker: Any = WORKER, status: int = 200) -> Call:
    return Call("POST", "/api/queue/claim-next", {"workerId": worker}, status=status, answer=answer)


def claimed(message: Any, total: int, remaining: int) -> dict[str, Any]:
    return {
        "success": True,
        "message": message,
        "totalPending": total,
        "remainingPending": remaining,
    }


def claimed_id(message_id: str, total: int, remaining: int) -> dict[str, Any]:
    return claimed(Has({"id": message_id}), total, remaining)


NOTHING_PENDING = {
    "success": False,
    "message": None,
    "reason": "no_pending_messages",
    "totalPending": 0,
    "remainingPending": 0,
}
NOT_IN_PENDING_QUEUE = {"success": False, "error": "Message not found in pending queue"}
NOT_FOUND = {"success": False, "error": ANY}


def claim(message_id: str, answer: Any, status: int = 200, worker: str = WORKER) -> Call:
    body = {"messageId": message_id, "workerId": worker}
    return Call("POST", "/api/queue/claim", body, status=status, answer=answer)


def complete(message_id: str, answer: Any = None, status: int = 200) -> Call:
    answer = {"success": True} if answer is None else answer
    body = {"messageId": message_id}
    return Call("POST", "/api/queue/complete", body, status=status, answer=answer)


def patch(message_id: str, body: Any, answer: Any, status: int = 200) -> Call:
    return Call("PATCH", f"/api/comments/{message_id}", body, status=status, answer=answer)


def stats(answer: Any) -> Call:
    return Call("GET", "/api/admin/stats", answer=answer)


def purge(count: int) -> Call:
    answer = {"success": True, "message": f"Purged {count} messages from memory"}
    return Call("POST", "/api/admin/purge", answer=answer)


def site_stats(
    cached: int, listed: int, score: Any = 0, cap: int = SITE_CACHE_SIZE
) -> dict[str, Any]:
    return {
        "mode": "sqlite",
        "recentMessages": cached,
        "pendingQueue": listed,
        "maxCacheSize": cap,
        "storageReads": 0,
        "storageWrites": 0,
        "globalScore": score,
    }


# Messages -------------------------------------------------------------------------------------


def human(message_id: str, timestamp: int, **bot_fields: Any) -> dict[str, Any]:
    """A human message naming the-eternal, as the chat site posts one."""
    return {
        **plain(message_id, timestamp),
        "botParams": {"entity": "the-eternal", **bot_fields},
    }


def plain(message_id: str, timestamp: int) -> dict[str, Any]:
    """A human message that names no entity."""
    return {
        "id": message_id,
        "timestamp": timestamp,
        "text": f"hello from {message_id}",
        "username": "Alice",
        "color": "080150227",
    }


def bot(
    *,
    status: str = "pending",
    priority: int = 5,
    entity: str | None = "the-eternal",
    ais: str | None = None,
    session_id: str | None = None,
    username: str = "Alice",
    color: str | None = "080150227",
    claimed_by: str | None = None,
    claimed_at: Any = None,
    completed_at: Any = None,
) -> dict[str, Any]:
    """botParams as the queue stores them: always all ten keys."""
    return {
        "status": status,
        "priority": priority,
        "entity": entity,
        "ais": ais,
        "sessionId": session_id,
        "humanUsername": username,
        "humanColor": color,
        "claimedBy": claimed_by,
        "claimedAt": claimed_at,
        "completedAt": completed_at,
    }


def stored(
    message_id: Any,
    timestamp: Any,
    bot_params: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A message as the queue stores it (`plain`'s fields unless given); botParams only when
    given."""
    message = {
        "id": message_id,
        "timestamp": timestamp,
        "text": f"hello from {message_id}",
        "username": "Alice",
        "color": "080150227",
        "domain": DOMAIN,
        "message-type": "human",
        "replyTo": None,
        "context": None,
        "eqScore": 0,
        **fields,
    }
    if bot_params is not None:
        message["botParams"] = bot_params
    return message


def queued(message_id: str, timestamp: int, **bot_fields: Any) -> dict[str, Any]:
    """`human(message_id, timestamp)` as stored, still pending."""
    return stored(message_id, timestamp, bot(**bot_fields))


# The cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    calls: tuple[Call, ...]
    max_messages: int = SITE_CACHE_SIZE


def case(name: str, *calls: Call, max_messages: int = SITE_CACHE_SIZE) -> Case:
    return Case(name, calls, max_messages)


ORDERED = [  # (id, timestamp, botParams.priority or None): the claim order is the list below
    ("p5-new", 500, None),
    ("p9-new", 400, 9),
    ("p0-old", 100, 0),  # 0 counts as 5
    ("p1-oldest", 50, 1),
    ("p9-old", 300, 9),
    ("p6", 600, 6),
    ("missing-old", 200, None),  # missing counts as 5
]
CLAIM_ORDER = ("p9-old", "p9-new", "p6", "p0-old", "missing-old", "p5-new", "p1-oldest")


def post_ordered() -> list[Call]:
    return [
        post(
            human(message_id, ts) if priority is None else human(message_id, ts, priority=priority)
        )
        for message_id, ts, priority in ORDERED
    ]


TIMESTAMPS_OUT_OF_ORDER = [("t0", 300), ("t1", 100), ("t2", 200), ("t3", 400)]


def post_out_of_order() -> list[Call]:
    return [post(plain(message_id, ts)) for message_id, ts in TIMESTAMPS_OUT_OF_ORDER]


EVERYTHING_POSTED = {
    "id": "x1",
    "timestamp": 1000,
    "text": "hello",
    "username": "Alice",
    "color": "080150227",
    "domain": "example.org",
    "message-type": "human",
    "replyTo": "h0",
    "context": ["bo: hi", "Alice: hello bo"],
    "eqScore": 3,
    "sparkle": {"deep": [1, 2, None]},
    "language": "en",
    "misc": "x",
    "priority": 2,
    "botParams": {
        "entity": "the-eternal",
        "priority": 8,
        "ais": "Oracle:111222033",
        "sessionId": "s-1",
        "mood": "curious",
        "status": "complete",
        "claimedBy": "someone",
        "claimedAt": 5,
        "completedAt": 6,
        "humanUsername": "Mallory",
        "humanColor": "255000000",
    },
}
EVERYTHING_STORED = stored(
    "x1",
    1000,
    bot(priority=8, ais="Oracle:111222033", session_id="s-1"),
    text="hello",
    domain="example.org",
    replyTo="h0",
    context=["bo: hi", "Alice: hello bo"],
    eqScore=3,
)
# A reply as the bridge posts one.
REPLY = {
    "id": "h1-re",
    "text": "an answer",
    "username": "TheEternal",
    "color": "200100050",
    "message-type": "AI",
    "replyTo": "h1",
    "botParams": {
        "entity": "the-eternal",
        "ais": None,
        "humanUsername": "Alice",
        "humanColor": "080150227",
        "sessionId": None,
    },
}
REPLY_STORED = stored(
    "h1-re",
    Same("reply-time", NOW),
    bot(
        status="complete",
        username="TheEternal",
        color="200100050",
        completed_at=Same("reply-time"),
    ),
    text="an answer",
    username="TheEternal",
    color="200100050",
    replyTo="h1",
    **{"message-type": "AI"},
)
SIXTY = [f"q{index:02}" for index in range(60)]
# A lone surrogate, which a JavaScript string can hold: JSON.stringify writes it as "\udc00".
LONE = "\udc00"
LONE_ID = f"h-surr-{LONE}"
LONE_FIELDS = {
    "text": f"a{LONE}b \U0001f600 \u00e9",
    "username": f"Al{LONE}ice",
    "context": [f"bo{LONE}: hi", "Alice: \ud800"],
}
LONE_POSTED = {
    **plain(LONE_ID, 1000),
    **LONE_FIELDS,
    "botParams": {"entity": f"the-{LONE}eternal", "sessionId": f"s-{LONE}"},
}
LONE_STORED = stored(
    LONE_ID,
    1000,
    bot(entity=f"the-{LONE}eternal", session_id=f"s-{LONE}", username=f"Al{LONE}ice"),
    **LONE_FIELDS,
)
LONE_CLAIMED = {
    **LONE_STORED,
    "botParams": {
        **LONE_STORED["botParams"],
        "status": "processing",
        "claimedBy": WORKER,
        "claimedAt": NOW,
    },
}

CASES = [
    # POST /api/comments ------------------------------------------------------------------
    case(
        "post answers the id and timestamp it was given",
        post(human("m1", 1000), success("m1", 1000)),
        comments([queued("m1", 1000)]),
    ),
    case(
        "post makes an id and timestamp when none is given",
        post({"text": "hi", "username": "Bob"}, success(Same("id", FRESH_ID), Same("ts", NOW))),
        comments(
            [
                {
                    "id": Same("id"),
                    "timestamp": Same("ts"),
                    "text": "hi",
                    "username": "Bob",
                    "domain": DOMAIN,
                    "message-type": "human",
                    "replyTo": None,
                    "context": None,
                    "eqScore": 0,
                }
            ]
        ),
    ),
    case(
        "a second post with the same id is a duplicate and changes nothing",
        post(human("m1", 1000), success("m1", 1000)),
        post(
            {**human("m1", 2000, entity="the-critic", priority=9), "text": "changed"},
            {"id": "m1", "timestamp": 1000, "status": "duplicate"},
        ),
        comments([queued("m1", 1000)]),
        pending([queued("m1", 1000)]),
    ),
    case(
        "a duplicate answers the timestamp the queue gave the first post",
        post({"id": "m2", "text": "t", "username": "u"}, success("m2", Same("ts", NOW))),
        post(
            {"id": "m2", "timestamp": 5, "text": "t", "username": "u"},
            {"id": "m2", "timestamp": Same("ts"), "status": "duplicate"},
        ),
    ),
    # What is stored ----------------------------------------------------------------------
    case(
        "stored: a fixed set of fields, any other dropped",
        post(EVERYTHING_POSTED, success("x1", 1000)),
        comments([EVERYTHING_STORED]),
        pending([EVERYTHING_STORED]),
    ),
    case(
        "stored: a timestamp of 0 becomes now",
        post(plain("zero", 0), success("zero", Same("ts", NOW))),
        comments([stored("zero", Same("ts"))]),
    ),
    case(
        "stored: a missing timestamp becomes now",
        post(
            {"id": "none", "text": "hello from none", "username": "Alice", "color": "080150227"},
            success("none", Same("ts", NOW)),
        ),
        comments([stored("none", Same("ts"))]),
    ),
    case(
        "stored: messageType is an alias of message-type",
        post(
            {
                "id": "ai1",
                "timestamp": 1000,
                "text": "an answer",
                "username": "Oracle",
                "color": "111222033",
                "messageType": "AI",
                "replyTo": "h1",
            },
            success("ai1", 1000),
        ),
        comments(
            [
                stored(
                    "ai1",
                    1000,
                    bot(
                        status="complete",
                        entity=None,
                        username="Oracle",
                        color="111222033",
                        completed_at=1000,
                    ),
                    text="an answer",
                    username="Oracle",
                    color="111222033",
                    replyTo="h1",
                    **{"message-type": "AI"},
                ),
            ]
        ),
        pending([]),
    ),
    case(
        "stored: replyTo and context are null when absent, no botParams without an entity",
        post(plain("plain", 1000), success("plain", 1000)),
        comments([stored("plain", 1000)]),
        pending([]),
    ),
    case(
        "stored: botParams with all ten keys when the message names an entity",
        post(human("q1", 1000), success("q1", 1000)),
        comments([stored("q1", 1000, bot())]),
    ),
    case(
        "stored: botParams without an entity, or with an empty one, is not kept",
        post({**plain("no-entity", 1), "botParams": {"priority": 9, "ais": "Oracle:1"}}),
        post(human("empty-entity", 2, entity="")),
        comments([stored("empty-entity", 2), stored("no-entity", 1)]),
        pending([]),
    ),
    case(
        "stored: humanUsername and humanColor are the poster's own",
        post(human("h1", 1000, humanUsername="Mallory", humanColor="255000000")),
        post(REPLY, success("h1-re", Same("reply-time", NOW))),
        comments([REPLY_STORED, queued("h1", 1000)]),
    ),
    case(
        "stored: an AI reply is complete, with completedAt set, and never queued",
        post(REPLY, success("h1-re", Same("reply-time", NOW))),
        comments([REPLY_STORED]),
        pending([]),
        claim_next(NOTHING_PENDING),
        claim("h1-re", NOT_IN_PENDING_QUEUE, status=404),
    ),
    case(
        "stored: a lone surrogate in any string, and sent back as it came",
        post(LONE_POSTED, success(LONE_ID, 1000)),
        comments([LONE_STORED]),
        pending([LONE_STORED]),
        claim_next(claimed(LONE_CLAIMED, 1, 0)),
        complete(LONE_ID),
        comments([Has({"id": LONE_ID, "botParams": Has({"status": "complete"})})]),
        post(human("h-next", 2000)),
        claim(LONE_ID, NOT_IN_PENDING_QUEUE, status=404),
        claim("h-next", {"success": True, "message": Has({"id": "h-next"})}),
    ),
    # Priority ----------------------------------------------------------------------------
    case(
        "priority: botParams.priority, else a top-level priority, else 5; 0 is stored as 5",
        post(human("bp7", 1, priority=7)),
        post({**human("top9", 2), "priority": 9}),
        post({**human("bp0-top3", 3, priority=0), "priority": 3}),
        post(human("bp0", 4, priority=0)),
        post(human("none", 5)),
        pending(
            [
                queued("top9", 2, priority=9),
                queued("bp7", 1, priority=7),
                queued("bp0", 4, priority=5),
                queued("none", 5, priority=5),
                queued("bp0-top3", 3, priority=3),
            ]
        ),
    ),
    case(
        "pending and claim-next: highest priority first (missing or 0 as 5), then oldest",
        *post_ordered(),
        pending(ids(*CLAIM_ORDER)),
        *[
            claim_next(
                claimed_id(message_id, len(CLAIM_ORDER) - index, len(CLAIM_ORDER) - index - 1)
            )
            for index, message_id in enumerate(CLAIM_ORDER)
        ],
        claim_next(NOTHING_PENDING),
    ),
    # GET /api/comments -------------------------------------------------------------------
    case(
        "comments: every message after MS, newest posted first, whatever the timestamps",
        *post_out_of_order(),
        comments(ids("t3", "t2", "t1", "t0")),
        comments(ids("t3", "t2", "t0"), after="150"),
        comments(ids(), after="400"),
        comments(ids("t3", "t2", "t1", "t0"), after="-5"),
    ),
    case(
        "comments: limit is ignored",
        *post_out_of_order(),
        comments(ids("t3", "t2", "t1", "t0"), after="0", limit="1"),
    ),
    case(
        "comments: since is an alias of after",
        *post_out_of_order(),
        comments(ids("t3", "t0"), since="250"),
    ),
    case(
        "comments: after is read as an integer prefix",
        post(plain("at-1", 1_700_000_000_001)),
        post(plain("at-2", 1_700_000_000_002)),
        comments(ids("at-2"), after="1700000000001.5"),
        comments(ids("at-2", "at-1"), after="1700000000000.9"),
        comments(ids("at-2"), after="1700000000001abc"),
    ),
    case(
        "comments: after= is 0, everything",
        *post_out_of_order(),
        comments(ids("t3", "t2", "t1", "t0"), after=""),
        comments(ids("t3", "t2", "t1", "t0")),
    ),
    case(
        "comments: after=abc matches nothing",
        *post_out_of_order(),
        comments([], after="abc"),
        comments([], since="abc"),
    ),
    # GET /api/queue/pending --------------------------------------------------------------
    case(
        "pending without limit is the whole pending list",
        *[post(human(message_id, index + 1)) for index, message_id in enumerate(SIXTY)],
        pending(ids(*SIXTY)),
    ),
    case(
        "pending?limit=N is the first N",
        *post_ordered(),
        pending(ids(*CLAIM_ORDER[:2]), limit="2"),
        pending(ids(*CLAIM_ORDER), limit="50"),
    ),
    case(
        "pending?limit=x (not a number) is an empty list",
        *post_ordered(),
        pending([], limit="x"),
    ),
    case(
        "pending claims nothing",
        post(human("a", 1)),
        post(human("b", 2)),
        pending([queued("a", 1), queued("b", 2)]),
        pending([queued("a", 1), queued("b", 2)]),
        claim_next(claimed_id("a", 2, 1)),
    ),
    case(
        "only a human message naming an entity is pending",
        post(human("queued", 1)),
        post(plain("no-bot", 2)),
        post({**human("reply", 3), "message-type": "AI", "replyTo": "queued"}),
        pending(ids("queued")),
    ),
    # POST /api/queue/claim ---------------------------------------------------------------
    case(
        "claim takes a pending message; once claimed it has left the pending list: 404",
        post(human("target", 1)),
        claim(
            "target",
            {
                "success": True,
                "message": queued(
                    "target", 1, status="processing", claimed_by=WORKER, claimed_at=Same("at", NOW)
                ),
            },
        ),
        pending([]),
        comments(
            [queued("target", 1, status="processing", claimed_by=WORKER, claimed_at=Same("at"))]
        ),
        claim("target", NOT_IN_PENDING_QUEUE, status=404, worker="bridge-2"),
        claim("target", NOT_IN_PENDING_QUEUE, status=404),
    ),
    case(
        "claim: 404 for a message never queued, an unknown one, one completed after its claim",
        post(plain("not-queued", 1)),
        post(human("done", 2)),
        claim("not-queued", NOT_IN_PENDING_QUEUE, status=404),
        claim("unknown", NOT_IN_PENDING_QUEUE, status=404),
        claim("done", Has({"success": True})),
        complete("done"),
        claim("done", NOT_IN_PENDING_QUEUE, status=404),
    ),
    # POST /api/queue/claim-next ----------------------------------------------------------
    case(
        "claim-next takes the first pending message, processing under the worker's id",
        post(human("a", 1)),
        post(human("b", 2)),
        claim_next(
            claimed(
                queued("a", 1, status="processing", claimed_by=WORKER, claimed_at=Same("at", NOW)),
                total=2,
                remaining=1,
            )
        ),
        comments(
            [
                queued("b", 2),
                queued("a", 1, status="processing", claimed_by=WORKER, claimed_at=Same("at")),
            ]
        ),
        pending([queued("b", 2)]),
        claim_next(claimed_id("b", 1, 0), worker="bridge-2"),
        claim_next(NOTHING_PENDING),
    ),
    case(
        "claim-next on an empty queue",
        claim_next(NOTHING_PENDING),
        post(plain("not-queued", 1)),
        claim_next(NOTHING_PENDING),
    ),
    # POST /api/queue/complete ------------------------------------------------------------
    case(
        "complete marks a claimed message complete",
        post(human("done", 1)),
        claim_next(claimed_id("done", 1, 0)),
        complete("done"),
        comments(
            [
                queued(
                    "done",
                    1,
                    status="complete",
                    claimed_by=WORKER,
                    claimed_at=NOW,
                    completed_at=NOW,
                )
            ]
        ),
        pending([]),
    ),
    case(
        "complete does not check the status",
        post(human("twice", 1)),
        post(REPLY),
        claim_next(claimed_id("twice", 1, 0)),
        complete("twice"),
        complete("twice"),
        complete("h1-re"),
        comments(ids("h1-re", "twice")),
    ),
    case(
        "complete: 404 for an unknown message",
        complete("unknown", NOT_FOUND, status=404),
    ),
    case(
        "complete on a message still pending: complete, yet left in the pending list; the next "
        "claim-next answers 500, the one after goes on",
        post(human("early", 1)),
        post(human("later", 2)),
        complete("early"),
        comments(
            [
                queued("later", 2),
                queued("early", 1, status="complete", completed_at=Same("done", NOW)),
            ]
        ),
        pending(
            [queued("early", 1, status="complete", completed_at=Same("done")), queued("later", 2)]
        ),
        stats(site_stats(cached=2, listed=2)),
        claim("early", {"success": False, "error": ANY}, status=409),
        claim_next({"error": ANY}, status=500),
        pending([queued("later", 2)]),
        claim_next(claimed_id("later", 1, 0)),
        claim_next(NOTHING_PENDING),
        comments(ids("later", "early")),
    ),
    case(
        "the claim-next after a pending message was completed answers 500, whatever the order",
        post(human("first", 1, priority=9)),
        post(human("last", 2, priority=1)),
        complete("last"),
        claim_next({"error": ANY}, status=500),
        claim_next(claimed_id("first", 1, 0)),
        claim_next(NOTHING_PENDING),
    ),
    case(
        "complete on a message without botParams changes nothing",
        post(plain("plain", 1)),
        complete("plain"),
        comments([stored("plain", 1)]),
    ),
    # PATCH /api/comments/{id} ------------------------------------------------------------
    case(
        "patch sets eqScore and adds a positive score to globalScore on every call",
        post(human("scored", 1)),
        patch(
            "scored",
            {"eqScore": 40},
            {"success": True, "message": stored("scored", 1, bot(), eqScore=40), "globalScore": 40},
        ),
        patch("scored", {"eqScore": 40}, Has({"globalScore": 80})),
        patch("scored", {"eqScore": 0}, Has({"message": Has({"eqScore": 0}), "globalScore": 80})),
        patch("scored", {"eqScore": -3}, Has({"message": Has({"eqScore": -3}), "globalScore": 80})),
        patch("scored", {"eqScore": 7.5}, Has({"globalScore": 87.5})),
        comments([stored("scored", 1, bot(), eqScore=7.5)], score=87.5),
        stats(site_stats(cached=1, listed=1, score=87.5)),
    ),
    case(
        "patch: 404 for an unknown message, and the global score is unchanged",
        post(human("scored", 1)),
        patch("scored", {"eqScore": 5}, Has({"globalScore": 5})),
        patch("unknown", {"eqScore": 7}, NOT_FOUND, status=404),
        stats(Has({"globalScore": 5})),
    ),
    case(
        "patch reaches an id that needs quoting",
        post(human("odd id/with?chars#", 1)),
        patch("odd%20id%2Fwith%3Fchars%23", {"eqScore": 3}, Has({"globalScore": 3})),
        comments([Has({"id": "odd id/with?chars#", "eqScore": 3})], score=3),
    ),
    # Bad bodies --------------------------------------------------------------------------
    case(
        "claim-next without a workerId: 400 with message null",
        post(human("a", 1)),
        Call(
            "POST",
            "/api/queue/claim-next",
            {},
            status=400,
            answer={"success": False, "message": None, "error": ANY},
        ),
        Call(
            "POST",
            "/api/queue/claim-next",
            {"workerId": ""},
            status=400,
            answer=Has({"success": False, "message": None}),
        ),
        Call(
            "POST",
            "/api/queue/claim-next",
            {"workerId": None},
            status=400,
            answer=Has({"success": False, "message": None}),
        ),
        pending([queued("a", 1)]),
    ),
    case(
        "claim without messageId or workerId: 404",
        post(human("a", 1)),
        Call(
            "POST",
            "/api/queue/claim",
            {"workerId": WORKER},
            status=404,
            answer=NOT_IN_PENDING_QUEUE,
        ),
        Call(
            "POST", "/api/queue/claim", {"messageId": "a"}, status=404, answer=NOT_IN_PENDING_QUEUE
        ),
        Call("POST", "/api/queue/claim", {}, status=404, answer=NOT_IN_PENDING_QUEUE),
        pending([queued("a", 1)]),
    ),
    case(
        "complete {}: 404",
        post(human("a", 1)),
        Call("POST", "/api/queue/complete", {}, status=404, answer=NOT_FOUND),
        pending([queued("a", 1)]),
    ),
    case(
        "patch {}: 200, and nothing changes",
        post(human("a", 1)),
        patch("a", {"eqScore": 5}, Has({"globalScore": 5})),
        patch(
            "a",
            {},
            {"success": True, "message": stored("a", 1, bot(), eqScore=5), "globalScore": 5},
        ),
        comments([stored("a", 1, bot(), eqScore=5)], score=5),
    ),
    # Admin -------------------------------------------------------------------------------
    case(
        "stats: the deployed queue's fields",
        stats(site_stats(cached=0, listed=0)),
        post(human("a", 1)),
        post(human("b", 2)),
        post(plain("plain", 3)),
        claim_next(claimed_id("a", 2, 1)),
        patch("plain", {"eqScore": 4}, ANY),
        stats(site_stats(cached=3, listed=1, score=4)),
    ),
    case(
        "purge empties the queue and keeps the global score",
        post(human("a", 1)),
        post(human("b", 2)),
        post(plain("plain", 3)),
        claim_next(claimed_id("a", 2, 1)),
        patch("plain", {"eqScore": 12}, ANY),
        purge(3),
        comments([], score=12),
        pending([]),
        claim_next(NOTHING_PENDING),
        stats(site_stats(cached=0, listed=0, score=12)),
        purge(0),
        post(human("a", 4), success("a", 4)),
    ),
    # Unknown routes ----------------------------------------------------------------------
    case(
        "unknown routes (no lease, fail or requeue), and known paths with another method: 404",
        *[
            Call(method, path, status=404, answer={"error": "Not found"})
            for method, path in [
                ("GET", "/nowhere"),
                ("POST", "/api/queue/claim-next/extra"),
                ("DELETE", "/api/comments"),
                ("PUT", "/api/comments/x"),
                ("GET", "/api/comments/x"),
                ("GET", "/api/queue/claim-next"),
                ("POST", "/api/queue/pending"),
                ("GET", "/api/admin/purge"),
                # No lease, fail or requeue: a claimed message is the client's to finish.
                ("POST", "/api/queue/requeue"),
                ("POST", "/api/queue/fail"),
                ("POST", "/api/queue/release"),
            ]
        ],
    ),
    case(
        "CORS is open: a preflight is answered on any route",
        Call("OPTIONS", "/api/queue/claim-next", status=204, answer=NO_BODY),
        Call("OPTIONS", "/api/comments/x", status=204, answer=NO_BODY),
    ),
    # The cache: the deployed queue keeps the last 50,000 messages ------------------------
    case(
        "past the cap the oldest posted messages are dropped, never one in the pending list",
        post(human("queued-old", 1)),
        post(plain("a", 2)),
        post(plain("b", 3)),
        post(plain("c", 4)),
        comments(ids("c", "b", "queued-old")),
        post(plain("d", 5)),
        comments(ids("d", "c", "queued-old")),
        claim_next(claimed_id("queued-old", 1, 0)),
        post(plain("e", 6)),
        comments(ids("e", "d", "c")),
        complete("queued-old", NOT_FOUND, status=404),
        post(plain("a", 7), success("a", 7)),
        comments(ids("a", "e", "d")),
        stats(site_stats(cached=3, listed=0, cap=3)),
        max_messages=3,
    ),
    case(
        "past the cap a pending list larger than the cap is kept whole",
        post(human("p1", 1)),
        post(human("p2", 2)),
        post(human("p3", 3)),
        post(REPLY),
        comments(ids("h1-re", "p3", "p2", "p1")),
        stats(site_stats(cached=4, listed=3, cap=2)),
        max_messages=2,
    ),
]


@dataclass(frozen=True)
class Stricter:
    """A body the deployed queue takes by mistake (or fails on), refused here."""

    name: str
    method: str
    path: str
    body: Any
    site: str  # what the deployed queue answers
    ours: int  # what the local queue answers
    why: str


NOT_JSON = "a body that is not JSON is the client's fault: a 4xx says so, and is not retried"
NOT_JSON_BODIES = {
    "broken": Raw(b"{not json"),
    "empty": Raw(b""),
    "NaN": Raw(b'{"eqScore": NaN}'),
    "binary": Raw(b"\xff\xfe"),
}
ROUTES_WITH_BODIES = [
    ("POST", "/api/comments"),
    ("PATCH", "/api/comments/seed"),
    ("POST", "/api/queue/claim"),
    ("POST", "/api/queue/claim-next"),
    ("POST", "/api/queue/complete"),
]
MESSAGE = {"text": "t", "username": "u"}
STORED_AS_SENT = "200, stored as sent"
WRONG_TYPE = "a field of the wrong type would reach every reader of the message: refused"

STRICTER_THAN_THE_SITE = [
    *[
        Stricter(f"not JSON ({label}): {method} {path}", method, path, body,
                 "500 {error}", 400, NOT_JSON)
        for method, path in ROUTES_WITH_BODIES
        for label, body in NOT_JSON_BODIES.items()
    ],
    *[
        Stricter(f"out-of-range number: {method} {path}", method, path,
                 Raw(b'{"eqScore": 1e999, "text": "t", "username": "u"}'),
                 "200, read as Infinity, sent back as null", 400,
                 "a number JSON cannot carry back is not JSON we can keep")
        for method, path in ROUTES_WITH_BODIES
    ],
    Stricter("a surrogate encoded in the bytes (not UTF-8)", "POST", "/api/comments",
             Raw('{"text": "a\udc00b", "username": "u"}'.encode("utf-8", "surrogatepass")),
             "200, stored with U+FFFD (a Worker reads bodies as UTF-8 with replacement)", 400,
             "a body that is not UTF-8 is not JSON text; escaped (\\udc00), one is stored"),
    Stricter("a message without username", "POST", "/api/comments", {"text": "t"},
             STORED_AS_SENT, 422, "every reader of a message needs who said it"),
    Stricter("a message without text", "POST", "/api/comments", {"username": "u"},
             STORED_AS_SENT, 422, "every reader of a message needs what was said"),
    Stricter("a message of null text", "POST", "/api/comments", {"text": None, "username": "u"},
             STORED_AS_SENT, 422, "every reader of a message needs what was said"),
    Stricter("a message that is a list", "POST", "/api/comments", [],
             "200, a message without text or username", 422, "a message is an object"),
    Stricter("a message that is a string", "POST", "/api/comments", "text",
             "200, a message without text or username", 422, "a message is an object"),
    Stricter("text that is a number", "POST", "/api/comments", {"text": 5, "username": "u"},
             STORED_AS_SENT, 422, WRONG_TYPE),
    Stricter("a timestamp that is a string", "POST", "/api/comments",
             {**MESSAGE, "timestamp": "soon"}, STORED_AS_SENT, 422,
             "a string timestamp never compares after any `after`: the message would be lost"),
    Stricter("a timestamp with a fraction", "POST", "/api/comments",
             {**MESSAGE, "timestamp": 1.5}, STORED_AS_SENT, 422, "timestamps are whole ms"),
    Stricter("a timestamp past 2^53", "POST", "/api/comments",
             {**MESSAGE, "timestamp": 10**30}, "200, stored rounded", 422,
             "not exact in JavaScript, not storable in SQLite"),
    Stricter("a message-type other than human or AI", "POST", "/api/comments",
             {**MESSAGE, "message-type": "robot"}, "200, stored, neither queued nor a reply",
             422, "a message is human or AI"),
    Stricter("botParams that is not an object", "POST", "/api/comments",
             {**MESSAGE, "botParams": "the-eternal"}, "200, botParams ignored", 422, WRONG_TYPE),
    Stricter("an entity that is not a string", "POST", "/api/comments",
             {**MESSAGE, "botParams": {"entity": ["the-eternal"]}}, "200, queued for it", 422,
             WRONG_TYPE),
    Stricter("a priority that is a word", "POST", "/api/comments",
             {**MESSAGE, "botParams": {"entity": "e", "priority": "hi"}},
             "200, queued with it, ordered arbitrarily", 422, WRONG_TYPE),
    Stricter("a top-level priority that is a word", "POST", "/api/comments",
             {**MESSAGE, "botParams": {"entity": "e"}, "priority": "hi"},
             "200, queued with it, ordered arbitrarily", 422, WRONG_TYPE),
    Stricter("a priority past 2^53", "POST", "/api/comments",
             {**MESSAGE, "botParams": {"entity": "e", "priority": 2**70}},
             "200, stored rounded", 422, "not exact in JavaScript, not storable in SQLite"),
    Stricter("an eqScore that is a string", "POST", "/api/comments",
             {**MESSAGE, "eqScore": "3"}, STORED_AS_SENT, 422, WRONG_TYPE),
    Stricter("an eqScore past 2^53", "POST", "/api/comments",
             {**MESSAGE, "eqScore": 10**310}, "200, stored as Infinity", 422,
             "not a number JSON can carry back"),
    Stricter("context that is not a list", "POST", "/api/comments",
             {**MESSAGE, "context": "ada: hi"}, STORED_AS_SENT, 422,
             "the bot reads context as lines"),
    Stricter("context with a line that is not a string", "POST", "/api/comments",
             {**MESSAGE, "context": ["ada: hi", 5]}, STORED_AS_SENT, 422,
             "the bot reads context as lines"),
    Stricter("an id longer than 200 characters", "POST", "/api/comments",
             {**MESSAGE, "id": "x" * 201}, STORED_AS_SENT, 422,
             "the bridge takes ids up to 200 characters: it could not answer this one"),
    Stricter("an id that is not a string", "POST", "/api/comments",
             {**MESSAGE, "id": 5}, STORED_AS_SENT, 422, WRONG_TYPE),
    Stricter("a color that is not a string", "POST", "/api/comments",
             {**MESSAGE, "color": 80150227}, STORED_AS_SENT, 422, WRONG_TYPE),
    Stricter("a replyTo that is not a string", "POST", "/api/comments",
             {**MESSAGE, "replyTo": 5}, STORED_AS_SENT, 422, WRONG_TYPE),
    Stricter("an eqScore patched as a string", "PATCH", "/api/comments/seed", {"eqScore": "5"},
             "200, and globalScore becomes a string by concatenation", 422,
             "the global score must stay a number"),
    Stricter("an eqScore patched as true", "PATCH", "/api/comments/seed", {"eqScore": True},
             "200, true added as 1", 422, "a score is a number"),
    Stricter("an eqScore patched past 2^53", "PATCH", "/api/comments/seed",
             {"eqScore": 10**20}, "200, added rounded", 422,
             "not exact in JavaScript: the global score would drift"),
    Stricter("a patch body that is a list", "PATCH", "/api/comments/seed", [],
             "200, nothing changes", 422, "a patch is an object"),
    Stricter("claim-next with a workerId that is not a string", "POST",
             "/api/queue/claim-next", {"workerId": 7}, "200, claimed by 7", 422,
             "claimedBy names a client: recovery looks for it as a string"),
    Stricter("claim with a workerId that is not a string", "POST", "/api/queue/claim",
             {"messageId": "seed", "workerId": ["w"]}, "200, claimed by [\"w\"]", 422,
             "claimedBy names a client: recovery looks for it as a string"),
]  # fmt: skip
SEED = human("seed", 1)


# Running them ---------------------------------------------------------------------------------


@pytest.fixture
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    max_messages = getattr(request, "param", SITE_CACHE_SIZE)
    store = QueueStore(tmp_path / "queue.sqlite3", max_messages=max_messages)
    try:
        with ThreadedServer(build_app(store)) as server:
            yield server.url
    finally:
        store.close()


def run_case(url: str, calls: tuple[Call, ...], name: str) -> None:
    run = Run(started_ms=now_ms())
    with httpx.Client(base_url=url, timeout=10) as http:
        for step, call in enumerate(calls):
            where = f"{name} / step {step}: {call.method} {call.path} {call.params or ''}"
            response = send(http, call.method, call.path, call.body, call.params)
            assert response.status_code == call.status, f"{where}: {response.text[:500]}"
            assert response.headers.get("access-control-allow-origin") == "*", where
            if isinstance(call.answer, NoBody):
                assert response.content == b"", where
            else:
                check(call.answer, response.json(), run, where)


@pytest.mark.parametrize(
    ("queue_url", "contract"),
    [pytest.param(case.max_messages, case, id=case.name) for case in CASES],
    indirect=["queue_url"],
)
def test_the_local_queue_keeps_the_site_contract(queue_url: str, contract: Case) -> None:
    run_case(queue_url, contract.calls, contract.name)


def snapshot(http: httpx.Client) -> list[Any]:
    return [
        http.get("/api/comments", params={"after": "0"}).json(),
        http.get("/api/queue/pending").json(),
        http.get("/api/admin/stats").json(),
    ]


@pytest.mark.parametrize("refused", STRICTER_THAN_THE_SITE, ids=lambda refused: refused.name)
def test_the_local_queue_refuses_what_the_site_takes_by_mistake(
    queue_url: str, refused: Stricter
) -> None:
    with httpx.Client(base_url=queue_url, timeout=10) as http:
        assert http.post("/api/comments", json=SEED).status_code == 200
        before = snapshot(http)
        response = send(http, refused.method, refused.path, refused.body, None)
        assert response.status_code == refused.ours, (refused.site, response.text[:500])
        assert response.headers.get("access-control-allow-origin") == "*"
        answer = response.json()
        assert isinstance(answer.get("error"), str)
        if refused.ours == 422:
            assert set(answer) == {"error", "detail"}
        assert snapshot(http) == before


def test_the_tables_name_every_case_once() -> None:
    names = [case.name for case in CASES] + [refused.name for refused in STRICTER_THAN_THE_SITE]
    assert len(names) == len(set(names))
    assert all(refused.why and refused.site for refused in STRICTER_THAN_THE_SITE)
