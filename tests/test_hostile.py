"""Malformed and hostile messages through the real bridge: every one is answered, or completed
with a recorded reason, and no process dies.

The rows go straight into the queue's SQLite, as the deployed queue (which checks nothing) could
hold them, so claim-next hands them to the bridge exactly as written. One catalogue of field
variants feeds both levels: hypothesis draws from it for the in-process bridge, a seeded
`random.Random` draws from it for the real processes.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator.bridge import Bridge
from orchestrator.celery import make_app
from orchestrator.control.sweep import queued_attempt
from orchestrator.domain.entities import EntityCatalog
from orchestrator.domain.job import Job, job_id_problem
from orchestrator.domain.messages import BotParams, Message, NewMessage, size_problem
from orchestrator.domain.replies import build_reply
from orchestrator.entity_folder import load_entities
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.state.ledger import Ledger
from standins import SAMPLE_ENTITIES_DIR
from standins.http_server import ThreadedServer
from standins.local_queue import QueueStore, build_app
from standins.stack import LocalStack
from standins.waiting import wait_for
from workers.contract.job import JobState
from workers.contract.server_record import ServerRecord
from workers.heartbeat import write_record

HUGE = 100_000
MAX_ID = 200  # the bridge's limit on a message id
HOSTED_MODEL = "llama3.2:3b"  # the in-process fleet's only model: the-critic's has no server
FAKE_SERVER = "mac-hostile"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # the field is left out of the message


class Kind(IntEnum):
    """How the message's contract sees a value; a message is as bad as its worst field."""

    GOOD = 0  # within the contract, however odd
    LAX = 1  # outside it, but a lenient reader may take it ("7" for 7): either fate is right
    BAD = 2  # must be refused as malformed


@dataclass(frozen=True)
class Pools:
    good: list[Any]
    odd: list[tuple[Any, Kind]] = field(default_factory=list)


# The catalogue ---------------------------------------------------------------------------------

ODD_TEXTS = [
    "hi",
    "",
    "x" * HUGE,
    "\U0001d518\U0001d52b\U0001d526 \U0001f9ea\U0001f0a1 \U0010fffd",  # astral planes
    "\u202eevil\u200f right-to-left \u200e\u2067marks\u2069",
    "nul\x00in\x00side",
    "e\u0301" * 500,  # combining marks
    "{message} {text} {0} %s %(x)s",
    "line\nbreak\r\n\ttab \ufeff\ufffe\uffff",
]
# The site sends up to 200 lines: far over any prompt budget, within the message limits.
HUGE_CONTEXT = [f"speaker{n}: " + "w" * 2000 for n in range(200)]
NO_SEPARATOR_CONTEXT = ["no separator here", ":", ": ", "ada:", " : x", "::::", "ada: ", "ada :x"]

FIELDS: dict[str, Pools] = {
    "text": Pools(
        good=ODD_TEXTS,
        odd=[(MISSING, Kind.BAD), (None, Kind.BAD), (42, Kind.BAD), (["hi"], Kind.BAD),
             ({"text": "hi"}, Kind.BAD), (1.5, Kind.BAD), (True, Kind.BAD)],
    ),
    "username": Pools(
        good=["ada", "", "\u202eada", "\U0001f9ea" * 3, "a" * 5000],
        odd=[(MISSING, Kind.BAD), (None, Kind.BAD), (7, Kind.BAD), (["ada"], Kind.BAD),
             ({"name": "ada"}, Kind.BAD)],
    ),
    "color": Pools(
        good=[MISSING, "080150227", "", "080150227-x", "not a color", "\U0001f308"],
        odd=[(None, Kind.BAD), (80150227, Kind.BAD), (["080", "150"], Kind.BAD)],
    ),
    "domain": Pools(
        good=[MISSING, "saywhatwant.app", "", "\U0001f9ea.example"],
        odd=[(None, Kind.BAD), (1, Kind.BAD)],
    ),
    "message-type": Pools(
        good=[MISSING, "human", "AI"],
        odd=[(None, Kind.BAD), ("bot", Kind.BAD), ("", Kind.BAD), ("HUMAN", Kind.BAD),
             (1, Kind.BAD), (["human"], Kind.BAD)],
    ),
    "replyTo": Pools(
        good=[MISSING, None, "someone-else"],
        odd=[(5, Kind.BAD), (["x"], Kind.BAD)],
    ),
    "eqScore": Pools(
        good=[MISSING, 0, 7.5, -1],
        odd=[("3", Kind.LAX), (True, Kind.LAX), ("high", Kind.BAD), (None, Kind.BAD),
             ([1], Kind.BAD)],
    ),
    "timestamp": Pools(
        good=[1, 0, -5, 2**53, 10**30],
        odd=[(MISSING, Kind.BAD), (None, Kind.BAD), ("yesterday", Kind.BAD), ("", Kind.BAD),
             (1.5, Kind.BAD), ([1], Kind.BAD), ({}, Kind.BAD), ("1700000000000", Kind.LAX),
             (12.0, Kind.LAX), (True, Kind.LAX)],
    ),
    "context": Pools(
        good=[MISSING, None, [], ["bo: hello", "ada: hi bo", "bo: how are you?"],
              NO_SEPARATOR_CONTEXT, HUGE_CONTEXT, ["\u202ertl: \U0001f9ea", "nul: \x00", ""],
              # Lines that are not text are left out; the rest of the message stands.
              ["ok: fine", 5], [None], [["nested"]], ["ok", {"a": 1}]],
        odd=[("ada: hi", Kind.BAD), (5, Kind.BAD), ({"ada": "hi"}, Kind.BAD), (True, Kind.BAD)],
    ),
}  # fmt: skip

# botParams that are not an object: the queue makes them `{}` when it claims the message.
NOT_AN_OBJECT = [MISSING, None, "the-eternal", ["the-eternal"], 5, True]

# Which entity: enabled ones (twice the-eternal, to place more), unknown, none, disabled.
ENTITIES = [
    "the-eternal",
    "the-eternal",
    "eq-score",
    "the-critic",
    "nobody",
    "THE-ETERNAL",
    " the-eternal",
    "the-eternal\x00",
    "\U0001f9ea",
    MISSING,
    None,
    "",
    "the-sleeper",
]
BAD_ENTITIES = [5, ["the-eternal"], {"id": "the-eternal"}, True]

BOT_PARAMS: dict[str, Pools] = {
    "priority": Pools(
        good=[MISSING, 0, 5, -3, 2**53 + 1, 10**30],
        odd=[("7", Kind.LAX), (7.0, Kind.LAX), (True, Kind.LAX), ("high", Kind.BAD),
             ("", Kind.BAD), (None, Kind.BAD), (2.5, Kind.BAD), ([5], Kind.BAD), ({}, Kind.BAD)],
    ),
    "ais": Pools(
        good=[MISSING, None, "NoColon", ":", "Name:random", ":080150227", "Name:", "a:b:c",
              "\U0001f9ea:\U0001f9ea", "x" * 5000 + ":1", "\u202eName:random"],
        odd=[(5, Kind.BAD), (["Name:red"], Kind.BAD), ({"name": "x"}, Kind.BAD)],
    ),
    "sessionId": Pools(good=[MISSING, None, "s-1", ""], odd=[(1, Kind.BAD), ([], Kind.BAD)]),
    "humanUsername": Pools(good=[MISSING, None, "ada", ""], odd=[(1, Kind.BAD), ([], Kind.BAD)]),
    "humanColor": Pools(good=[MISSING, None, "080150227"], odd=[(1, Kind.BAD), ({}, Kind.BAD)]),
    # The queue overwrites these three when it claims the message.
    "status": Pools(good=[MISSING, "pending", "bogus", 5, None, ["complete"]]),
    "claimedBy": Pools(good=[MISSING, "someone", 5]),
    "claimedAt": Pools(good=[MISSING, "noon", -1]),
    "completedAt": Pools(good=[MISSING, None, 5], odd=[("later", Kind.BAD), (1.5, Kind.BAD)]),
    "__proto__": Pools(good=[MISSING, {"polluted": True}, "x"]),
}  # fmt: skip

# An id is unique (a prefix) plus a suffix; an int suffix pads the id to that length.
ID_SUFFIXES = Pools(
    good=["", "/slash", " space", "-\u00e9\u4e2d\U0001f9ea", "%2F?#&", "\u202e", "\t", MAX_ID],
    odd=[(MAX_ID + 1, Kind.BAD), (500, Kind.BAD)],
)
# How hostile one message is: each field is corrupted with a chance of one in this (0: never),
# so the examples run from valid to thoroughly broken.
HOSTILITY = [0, 0, 40, 12, 4, 2]
FREE_TEXT_ONE_IN = 3  # a valid text or context made up on the spot rather than from the pool


class Source(Protocol):
    """Where a message's choices come from: hypothesis, or a seeded random generator."""

    def pick(self, pool: list[Any]) -> Any: ...
    def one_in(self, chance: int) -> bool: ...
    def text(self) -> str: ...


class DrawSource:
    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def pick(self, pool: list[Any]) -> Any:
        return self.draw(st.sampled_from(pool))

    def one_in(self, chance: int) -> bool:
        # Shrinks towards 0, that is towards False: towards the field left as it was.
        return chance > 0 and bool(self.draw(st.integers(0, chance - 1)) == chance - 1)

    def text(self) -> str:
        return str(self.draw(st.text(st.characters(codec="utf-8"), max_size=40)))


class RandomSource:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, pool: list[Any]) -> Any:
        return self.rng.choice(pool)

    def one_in(self, chance: int) -> bool:
        return chance > 0 and self.rng.randrange(chance) == 0

    def text(self) -> str:
        # Any code point but the surrogates, which no JSON text of the queue can carry.
        chars = []
        for _ in range(self.rng.randrange(40)):
            point = self.rng.randrange(0x110000 - 0x800)
            chars.append(chr(point + 0x800 if point >= 0xD800 else point))
        return "".join(chars)


@dataclass(frozen=True)
class Case:
    """A message without its id, how bad it is, and the entity the bridge will see."""

    fields: dict[str, Any]
    kind: Kind
    entity: Any
    id_suffix: str | int

    def row(self, prefix: str) -> tuple[dict[str, Any], Kind]:
        """The row with a unique id; an id too long for the bridge makes it malformed."""
        if isinstance(self.id_suffix, int):
            message_id = prefix + "z" * max(0, self.id_suffix - len(prefix))
        else:
            message_id = prefix + self.id_suffix
        kind = max(self.kind, Kind.BAD if len(message_id) > MAX_ID else Kind.GOOD)
        return {"id": message_id, **self.fields}, kind


def build_case(source: Source) -> Case:
    hostility = source.pick(HOSTILITY)

    def choose(pools: Pools) -> tuple[Any, Kind]:
        if pools.odd and source.one_in(hostility):
            value, kind = source.pick(pools.odd)
            return value, kind
        return source.pick(pools.good), Kind.GOOD

    fields: dict[str, Any] = {}
    kinds = [Kind.GOOD]
    for name, pools in FIELDS.items():
        value, kind = choose(pools)
        if name == "text" and kind is Kind.GOOD and source.one_in(FREE_TEXT_ONE_IN):
            value = source.text()
        if name == "context" and kind is Kind.GOOD and source.one_in(FREE_TEXT_ONE_IN):
            value = [f"{source.text()}: {source.text()}", source.text()]
        kinds.append(kind)
        if value is not MISSING:
            fields[name] = value
    entity: Any = MISSING
    if source.one_in(hostility):
        bot_params = source.pick(NOT_AN_OBJECT)  # the bridge sees `{}`: no entity
    else:
        bot_params = {}
        if source.one_in(hostility):
            entity = source.pick(BAD_ENTITIES)
            kinds.append(Kind.BAD)
        else:
            entity = source.pick(ENTITIES)
        if entity is not MISSING:
            bot_params["entity"] = entity
        for name, pools in BOT_PARAMS.items():
            value, kind = choose(pools)
            kinds.append(kind)
            if value is not MISSING:
                bot_params[name] = value
    if bot_params is not MISSING:
        fields["botParams"] = bot_params
    if source.one_in(hostility):
        fields["hasOwnProperty"] = {"constructor": source.text()}
    id_suffix, _ = choose(ID_SUFFIXES)  # Case.row judges the id by its length
    return Case(fields, max(kinds), entity, id_suffix)


@st.composite
def cases(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Case:
    return build_case(DrawSource(draw))


# What must become of a message ----------------------------------------------------------------


class Fate(StrEnum):
    MALFORMED = "malformed message"
    NO_ENTITY = "message names no entity"
    UNKNOWN = "unknown entity"
    DISABLED = "is disabled"
    PLACED = "placed"  # valid for an enabled entity: it goes to a server
    TOO_LARGE = "too large"  # any message past the limits, whatever else it is


def fates(kind: Kind, entity: Any, entities: EntityCatalog) -> set[Fate]:
    """Every fate the bridge may rightly give the message."""
    if kind is Kind.BAD:
        return {Fate.MALFORMED}
    if entity is MISSING or entity is None or entity == "":
        fate = Fate.NO_ENTITY
    elif (known := entities.get(entity)) is None:
        fate = Fate.UNKNOWN
    elif not known.enabled:
        fate = Fate.DISABLED
    else:
        fate = Fate.PLACED
    return {fate, Fate.MALFORMED} if kind is Kind.LAX else {fate}


def rejected_as(job: Job) -> Fate | None:
    """Which refusal the ledger recorded, if the job was rejected."""
    if job.state is not JobState.REJECTED:
        return None
    reason = job.reason or ""
    for fate in (Fate.MALFORMED, Fate.NO_ENTITY, Fate.UNKNOWN, Fate.DISABLED, Fate.TOO_LARGE):
        if fate.value in reason:
            return fate
    return None


def entities_folder(folder: Path) -> Path:
    """The sample entities and a disabled one."""
    for sample in SAMPLE_ENTITIES_DIR.glob("*.json"):
        shutil.copy(sample, folder / sample.name)
    eternal = json.loads((SAMPLE_ENTITIES_DIR / "the-eternal.json").read_text())
    (folder / "the-sleeper.json").write_text(
        json.dumps({**eternal, "id": "the-sleeper", "username": "Sleeper", "enabled": False})
    )
    return folder


# Rows straight into the queue's SQLite ----------------------------------------------------------


def insert_rows(db_path: Path, rows: list[dict[str, Any]]) -> None:
    """Pending rows as written, which the queue's API would refuse. The queue keeps its SQLite
    in WAL mode and takes a write lock per operation: a second writer only waits its turn."""
    base = time.time_ns() // 1_000_000
    with sqlite3.connect(db_path, timeout=30) as db:
        db.execute("PRAGMA synchronous=NORMAL")  # as the queue itself writes
        for order, row in enumerate(rows):
            db.execute(
                "INSERT INTO messages (id, timestamp, status, priority, body)"
                " VALUES (?, ?, 'pending', 5, ?)",
                (row["id"], base + order, json.dumps(row)),
            )
    db.close()


def queue_statuses(db_path: Path, ids: list[str]) -> dict[str, tuple[str | None, Any]]:
    """Each row's status column and its body's botParams.status."""
    found = {}
    with sqlite3.connect(db_path, timeout=30) as db:
        for message_id in ids:
            row = db.execute("SELECT status, body FROM messages WHERE id = ?", (message_id,))
            for status, body in row:
                found[message_id] = (status, json.loads(body).get("botParams", {}).get("status"))
    db.close()
    return found


# Level 1: the bridge in this process -------------------------------------------------------------


@dataclass
class Rig:
    bridge: Bridge
    db_path: Path
    entities: EntityCatalog
    ids: Iterator[int]

    def beat(self, *, full: bool) -> None:
        """The fake server's heartbeat (a record older than 3 s counts as offline), its queue
        emptied, and its one slot free or held by another job."""
        services = self.bridge.services
        record = ServerRecord(
            id=FAKE_SERVER,
            capacity=1,
            models=[HOSTED_MODEL],
            loaded=[HOSTED_MODEL],
            last_beat=time.time(),
        )
        write_record(services.redis, services.keys, record, ttl_s=60)
        services.redis.delete(
            services.keys.inflight(FAKE_SERVER), services.keys.broker_queue(FAKE_SERVER)
        )
        if full:
            busy = services.keys.inflight(FAKE_SERVER)
            services.redis.hset(busy, "another-job", "llama3.2:latest")

    def queued_generate_tasks(self) -> list[tuple[str | None, int]]:
        """(job id, attempt) of each generate task on the fake server's Celery queue."""
        raw = self.bridge.services.fleet.queued_tasks(FAKE_SERVER)
        return [queued_attempt(item) for item in raw]


@pytest.fixture
def rig(redis_url: str, tmp_path: Path) -> Iterator[Rig]:
    db_path = tmp_path / "queue.sqlite3"
    folder = entities_folder(tmp_path)
    store = QueueStore(db_path)
    with ThreadedServer(build_app(store)) as server:
        config = Settings(
            redis_url=redis_url,
            queue_url=server.url,
            entities_dir=folder,
            bridge_id="bridge-hostile",
            eq_enabled=False,  # one job per message here; scores are the processes' test's
        )
        services = Services.build(config)
        try:
            yield Rig(
                Bridge(services, make_app(config)), db_path, services.entities, iter(range(10**9))
            )
        finally:
            services.close()
    store.close()


@settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases(), server_full=st.booleans())
def test_every_hostile_message_is_placed_or_completed_with_a_reason(
    rig: Rig, case: Case, server_full: bool
) -> None:
    row, kind = case.row(f"h{next(rig.ids)}-")
    message_id = row["id"]
    allowed = fates(kind, case.entity, rig.entities)
    rig.beat(full=server_full)
    insert_rows(rig.db_path, [row])

    services = rig.bridge.services
    assert rig.bridge.claim_one(services.fleet.read()), "the bridge did not claim the row"

    problem = job_id_problem(message_id)
    if problem is not None:  # an id no job can have: refused, never written, completed
        event("refused: its id")
        assert services.ledger.refused(1)[1][0]["reason"] == problem
        assert queue_statuses(rig.db_path, [message_id])[message_id] == ("complete", "complete")
        assert rig.queued_generate_tasks() == []
        return
    if size_problem(row, len(json.dumps(row)), services.settings.message_limits()):
        allowed = {Fate.TOO_LARGE}
    job = services.ledger.get(message_id)
    assert job is not None, "claimed but not in the ledger"
    if not job.state.finished or job.state is JobState.DEAD:
        assert job.message.get("id") == message_id  # a finished job keeps only a summary
    status = queue_statuses(rig.db_path, [message_id])[message_id]
    event(f"{job.state.value}: {rejected_as(job) or ''}")
    entity = rig.entities.get(case.entity) if isinstance(case.entity, str) else None
    if job.state in {JobState.WAITING, JobState.DISPATCHED}:
        assert Fate.PLACED in allowed, (job.state, allowed)
        assert entity is not None
        assert entity.model == HOSTED_MODEL
        assert job.entity == entity.id
        # Still the bridge's to answer: not completed on the site.
        assert status == ("processing", "processing")
        if server_full:
            assert job.state is JobState.WAITING
            assert rig.queued_generate_tasks() == []
        else:
            assert (job.state, job.server_id, job.attempt) == (JobState.DISPATCHED, FAKE_SERVER, 1)
            assert rig.queued_generate_tasks() == [(message_id, 1)]
        return
    assert rig.queued_generate_tasks() == []
    assert job.reason, f"{job.state} without a reason"
    if job.state is JobState.DEAD:
        # An enabled entity whose model no server has (the-critic's, here).
        assert Fate.PLACED in allowed, (job.reason, allowed)
        assert entity is not None
        assert entity.model != HOSTED_MODEL
        assert f"no online server has model {entity.model}" in job.reason
    else:
        assert job.state is JobState.REJECTED, job.state
        assert rejected_as(job) in allowed, (job.reason, allowed)
    assert status == ("complete", "complete")


def test_the_catalogue_yields_every_fate(tmp_path: Path) -> None:
    """The generator is not degenerate: it makes valid messages, malformed ones and each
    kind of refusal, so the property above sees them all."""
    entities = load_entities(entities_folder(tmp_path))
    source = RandomSource(random.Random(7))
    seen: Counter[Fate] = Counter()
    limits = Settings().message_limits()
    for _ in range(500):
        case = build_case(source)
        row, kind = case.row("p-")
        seen.update(fates(kind, case.entity, entities))
        if size_problem(row, len(json.dumps(row)), limits):
            seen[Fate.TOO_LARGE] += 1
    assert set(seen) == set(Fate), seen
    assert seen[Fate.PLACED] >= 50, seen


def test_a_reply_to_the_longest_id_has_an_id_the_queue_takes(tmp_path: Path) -> None:
    """A message id of the longest length the bridge takes: the reply's derived id must stay
    within the same limit (else its delivery fails and the job hangs in `delivering`), and
    stay unique to its message."""
    eternal = load_entities(entities_folder(tmp_path)).get("the-eternal")
    assert eternal is not None
    ids = ["L" * (MAX_ID - 1) + "1", "L" * (MAX_ID - 1) + "2", "short"]
    reply_ids = set()
    for message_id in ids:
        message = Message.model_validate(
            {"id": message_id, "timestamp": 1, "text": "hi", "username": "ada"}
        )
        reply = build_reply(eternal, message, "hello")
        assert reply.id is not None
        assert 0 < len(reply.id) <= MAX_ID
        assert reply.reply_to == message_id
        reply_ids.add(reply.id)
    assert len(reply_ids - set(ids)) == len(ids)
    assert "short-re" in reply_ids


def test_a_lone_surrogate_from_the_deployed_queue_is_rejected(rig: Rig) -> None:
    """The local queue refuses lone surrogates, the deployed one does not: JSON.stringify
    escapes them and httpx's json() gives them back as they were."""
    raw = json.loads(
        '{"id": "lone-surrogate", "timestamp": 1, "text": "a\\ud800b", "username": "ada",'
        ' "botParams": {"entity": "the-eternal", "status": "processing"}}'
    )
    assert raw["text"] == "a\ud800b"
    services = rig.bridge.services
    rig.bridge.take(raw, services.fleet.read())
    job = services.ledger.get("lone-surrogate")
    assert job is not None
    assert job.state is JobState.REJECTED
    assert job.reason


# Level 2: the whole system as real processes --------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    row: dict[str, Any]
    fates: set[Fate]
    reply_as: tuple[str, str] | None = None  # (username, color) of a reply, where known


def hand_written(entities: EntityCatalog) -> list[Hostile]:
    def valid(message_id: str, **fields: Any) -> dict[str, Any]:
        bot_params = {"entity": "the-eternal", "priority": 5, **fields.pop("botParams", {})}
        return {
            "id": message_id,
            "timestamp": 1,
            "text": "hello there",
            "username": "ada",
            "message-type": "human",
            **fields,
            "botParams": bot_params,
        }

    eternal = entities.get("the-eternal")
    assert eternal is not None
    as_eternal = (eternal.username, eternal.color)
    placed, malformed = {Fate.PLACED}, {Fate.MALFORMED}
    return [
        # The longest id the bridge takes: its reply's id must still be one the queue takes.
        Hostile(valid("L" * (MAX_ID - 1) + "1"), placed, as_eternal),
        Hostile(valid("L" * (MAX_ID - 1) + "2", text="x" * HUGE), placed),
        Hostile(valid("odd/id %2F?#&\u202e\U0001f9ea"), placed, as_eternal),
        Hostile(valid("as-ai", **{"message-type": "AI"}), placed, as_eternal),
        Hostile(valid("ais-no-colon", botParams={"ais": "NoColon"}), placed, as_eternal),
        Hostile(valid("ais-colon-only", botParams={"ais": ":"}), placed, as_eternal),
        Hostile(valid("ais-name", botParams={"ais": "Oracle:111222033"}), placed,
                ("Oracle", "111222033")),
        Hostile(valid("huge-context", context=HUGE_CONTEXT), placed, as_eternal),
        Hostile(valid("no-separator", context=NO_SEPARATOR_CONTEXT), placed, as_eternal),
        Hostile(valid("odd-unicode", text=ODD_TEXTS[3] + ODD_TEXTS[4] + ODD_TEXTS[5]), placed),
        Hostile(valid("critic", botParams={"entity": "the-critic", "priority": 10**30}), placed),
        Hostile(valid("scorer", botParams={"entity": "eq-score", "priority": -3}), placed),
        Hostile(valid("L" * (MAX_ID + 1)), malformed),
        Hostile(valid("no-text", text=None), malformed),
        Hostile(valid("priority-word", botParams={"priority": "high"}), malformed),
        Hostile(valid("context-ints", context=["ok: fine", 5]), placed, as_eternal),
        Hostile(valid("timestamp-word", timestamp="yesterday"), malformed),
        Hostile(valid("entity-list", botParams={"entity": ["the-eternal"]}), malformed),
        Hostile({**valid("params-string"), "botParams": "the-eternal"}, {Fate.NO_ENTITY}),
        Hostile(valid("unknown", botParams={"entity": "nobody"}), {Fate.UNKNOWN}),
        Hostile(valid("sleeper", botParams={"entity": "the-sleeper"}), {Fate.DISABLED}),
    ]  # fmt: skip


def seeded(entities: EntityCatalog, count: int, seed: int = 20240611) -> list[Hostile]:
    source = RandomSource(random.Random(seed))
    out = []
    for index in range(count):
        case = build_case(source)
        row, kind = case.row(f"gen-{index}-")
        out.append(Hostile(row, fates(kind, case.entity, entities)))
    return out


def valid_messages() -> list[NewMessage]:
    return [
        NewMessage(
            id=f"valid-{index}",
            text=f"a fair question number {index}",
            username="ada",
            color="080150227",
            context=["bo: hello", "ada: hi bo"],
            botParams=BotParams(
                entity="the-critic" if index % 2 else "the-eternal", humanUsername="ada"
            ),
        )
        for index in range(4)
    ]


@pytest.mark.e2e
def test_hostile_rows_through_the_real_processes(tmp_path: Path) -> None:
    folder = entities_folder(tmp_path)
    entities = load_entities(folder)
    hostile = hand_written(entities)
    hostile += seeded(entities, 40 - len(hostile))
    by_id = {case.row["id"]: case for case in hostile}
    assert len(by_id) == len(hostile), "ids must be unique"
    valid = valid_messages()
    valid_ids = [str(message.id) for message in valid]
    refused = {message_id for message_id in by_id if job_id_problem(message_id)}
    kept_ids = [*(m for m in by_id if m not in refused), *valid_ids]
    all_ids = [*by_id, *valid_ids]
    limits = Settings().message_limits()

    with LocalStack(entities_dir=folder) as stack:
        db_path = stack.work_dir / "queue.sqlite3"
        ledger = Ledger(stack.redis, stack.keys)
        insert_rows(db_path, [case.row for case in hostile])
        with stack.queue_client() as queue:
            for message in valid:
                assert queue.post_comment(message).status == "success"

            def all_ended() -> bool:
                stack.check_alive()
                jobs = ledger.get_many(kept_ids)
                if len(jobs) < len(kept_ids) or not all(job.state.finished for job in jobs):
                    return False
                statuses = queue_statuses(db_path, all_ids)
                return len(statuses) == len(all_ids) and all(
                    status == ("complete", "complete") for status in statuses.values()
                )

            try:
                wait_for(all_ended, timeout=90, interval=0.1, what="every message ended")
            except TimeoutError:
                stuck = [
                    (job.id[:40], job.state.value, job.reason)
                    for job in ledger.get_many(kept_ids)
                    if not job.state.finished
                ]
                raise AssertionError(f"messages left unfinished: {stuck}") from None
            comments = queue.comments_after(0)
        jobs = {job.id: job for job in ledger.get_many(kept_ids)}
        refused_entries = ledger.refused(len(refused) + 1)[0]
        stack.check_alive()
        assert stack.processes.crashed() == []

    replies = [c for c in comments if c.get("message-type") == "AI" and c.get("replyTo")]
    counts = Counter(str(reply["replyTo"]) for reply in replies)
    reply_of = {str(reply["replyTo"]): reply for reply in replies}
    for message_id in valid_ids:
        job = jobs[message_id]
        assert (job.state, job.outcome, counts[message_id]) == (JobState.DONE, "answered", 1), (
            message_id, job.reason,
        )  # fmt: skip
    assert refused_entries == len(refused)
    for message_id, case in by_id.items():
        replied = counts[message_id]
        if message_id in refused:  # an id no job can have: completed (above), never answered
            assert replied == 0, message_id
            continue
        job = jobs[message_id]
        if job.state is JobState.DONE:
            # Answered (one reply) or skipped by the entity's own rules (none).
            assert Fate.PLACED in case.fates, (message_id, case.fates)
            assert replied == (1 if job.outcome == "answered" else 0), (message_id, job.outcome)
            if job.outcome == "answered" and case.reply_as is not None:
                reply = reply_of[message_id]
                assert (reply["username"], reply["color"]) == case.reply_as, message_id
            continue
        assert job.reason, (message_id, job.state)
        assert replied == 0, (message_id, job.state, job.reason)
        if job.state is JobState.DEAD:
            # Placed, then no server could answer it (a prompt over every context window).
            assert Fate.PLACED in case.fates, (message_id, job.reason)
        else:
            assert job.state is JobState.REJECTED, (message_id, job.state)
            too_large = size_problem(case.row, len(json.dumps(case.row)), limits) is not None
            allowed = {Fate.TOO_LARGE} if too_large else case.fates
            assert rejected_as(job) in allowed, (message_id, job.reason, case.fates)
    # The hand-written valid rows with a known identity were answered, not given up.
    answered = {m for m, case in by_id.items() if case.reply_as and counts[m] == 1}
    assert answered == {m for m, case in by_id.items() if case.reply_as}, answered
