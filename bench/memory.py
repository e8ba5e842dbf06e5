"""Redis memory of the ledger: what a finished job costs, what a message costs over the
retention, beside an active job and a dead letter.

    python bench/memory.py [--messages 2000] [--context-lines 200] [--retention-s 86400]

The system runs with three zero-latency simulated servers (4 slots each, both models) and the
sample entities (the-eternal, the-critic, the scorer eq-score), plus one entity whose model no
server has, so that one message dead-letters at once. Every message is posted as the site's
front end sends it: a line of text and `--context-lines` lines of history (`"username: text"`,
60-120 characters each), its id given by the site queue. Warm-up messages go through first
(scripts loaded, latencies and counters written, every connection open); then the memory is
read, the measured messages are posted, and, once they are all finished and the system is
quiet (no job active or queued for a retry, every Celery queue empty, nothing unacknowledged),
read again.

Two measures of a finished job:
  bytes_per_finished_job        per key: the `MEMORY USAGE ... SAMPLES 0` of every key that
                                names a finished job's id (the reply's `job:{id}` and the
                                score's `job:{id}#eq`, and any other there might be: the keys
                                are found by SCAN, not named by the bench), which counts its
                                name, its object and value, and its entry in the keyspace; plus
                                what each adds elsewhere: the keyspace's entry past the size
                                Redis counts for it (the allocator gives a 24-byte entry its size
                                class), its share of the keyspace's buckets, its entry and share
                                of the buckets in the table of expiring keys (`MEMORY STATS`
                                `overhead.hashtable.main` and `.expires` as they stand after the
                                run; an entry's allocated size measured in a throwaway Redis:
                                `used_memory`'s growth when 20,000 keys get an expiry), and the
                                growth over the run of every other key (the ledger's indexes and
                                counters among them). The ledger is asked whether each finished
                                job is in a finished state and out of the active jobs, the retry
                                set and the dead letters; each key is checked to expire.
  used_memory_per_finished_job  the growth of `INFO memory` `used_memory` over the run, divided
                                by the jobs finished in it, each read once the system is quiet
                                and `used_memory` has held still for 5 s (an idle client's
                                buffers shrink a few seconds after its last big command) with no
                                table being rehashed; `used_memory_less_buffers_per_finished_job`
                                leaves out the clients' buffers and the AOF buffer.
The target is judged by the per-key measure: it is what each finished job holds for as long as
it is kept, and all that grows with the number of jobs kept, so it is what the projection
multiplies; it does not depend on what else Redis did during the run. The INFO delta is its
cross-check: it holds the same, plus what is no job's and does not scale with the jobs kept
(the keyspace's tables double in steps, clients' buffers, the AOF buffer, the script cache);
should it run well past the per-key figure, the per-key measure missed something, and
`used_memory_breakdown` and `key_families_growth` say where.

Prints one JSON object as its last line:
  bytes_per_finished_job (target <= 1024), used_memory_per_finished_job,
                        used_memory_less_buffers_per_finished_job, memory_steady (false when
                        `used_memory` never held still: the INFO figures are then rough), and
                        the parts of the first (`finished_job_parts`)
  bytes_per_message     a message's two finished jobs (reply and score)
  projected_mb_10k_per_hour (target <= 256)   the finished jobs held at 10,000 messages an hour
                        over the default retention (`OLLAMA_CLOUD_FINISHED_RETENTION_S`):
                        each key family's bytes per message * 10,000 * the hours its keys
                        are kept (`finished_job_parts.held_s`: a finished job's hash the
                        retention, a done score's once-guard the few minutes it lingers for a
                        delivery still on its way); MB = 2**20 bytes, as
                        Redis's `used_memory_human` counts (`projected_decimal_mb_10k_per_hour`
                        in 10**6 bytes)
  projected_mb_for_retention, retention_s   the same over `--retention-s`
  bytes_per_active_job  a reply's job as claimed, holding its message and context (written with
                        `Ledger.record_claim` in a throwaway Redis, from the message as the site
                        queue handed it over), and `bytes_per_active_score_job` its score's
  bytes_per_dead_letter a dead letter's hash (it keeps its message, so that `ollama-cloud jobs
                        retry` can place it again) and what else grew when it died (its entry in
                        the dead letters, which the first dead letter creates; its outcome's
                        counter); dead letters are kept until an operator acts, past the
                        retention
  encodings             how many finished hashes Redis keeps compact (listpack) and how many as a
                        table; a hash stays compact only while every value is <= 64 bytes and it
                        has <= 128 fields
  largest_fields        the fields of a finished reply's, score's, active and dead job's hash,
                        by their size, largest first; `fields_over_listpack_value` those of a
                        finished job's that keep it out of the compact encoding
  checks, used_memory_breakdown, key_families_growth   what the figures rest on
  meets_targets         both targets met
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import redis

from bench.common import CRITIC, ETERNAL, LLAMA, QWEN, bench_parser, kept_dir
from orchestrator.domain.job import score_job_id
from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.settings import Settings
from orchestrator.state.ledger import ONCE_GUARD_LINGER_S, Ledger
from standins import SAMPLE_ENTITIES_DIR
from standins.embedded_redis import EmbeddedRedis
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm, wait_quiet
from standins.waiting import wait_for
from workers.contract.job import JobState
from workers.contract.keys import Keys

DEFAULT_RETENTION_S: float = Settings.model_fields["finished_retention_s"].default
MESSAGES_PER_HOUR = 10_000
TARGET_BYTES_PER_FINISHED_JOB = 1024
TARGET_PROJECTED_MB = 256
MB = 2**20
WARM_UP_MESSAGES = 24
ACTIVE_SAMPLE = 100
# An entry of one of Redis's tables (key and value pointers, next pointer) on a 64-bit Redis,
# as Redis counts it: `MEMORY USAGE` counts a key's entry in the keyspace and its object header,
# `MEMORY STATS` counts both again in `overhead.hashtable.main`, and an entry alone for each
# key in `overhead.hashtable.expires`. The allocator gives an entry more (its size class):
# measured in a throwaway Redis with `PROBE_KEYS` keys.
TABLE_ENTRY = 24
OBJECT_HEADER = 16
BUCKET = 8
PROBE_KEYS = 20_000
PROBE_BATCH = 1000
# The memory is read once it has held still this long, within this much.
STEADY_S = 5.0
STEADY_BYTES = 8192
# An entity whose model no server has: its reply's job is a dead letter at once.
ABSENT = "the-absent"
ABSENT_MODEL = "mistral-nemo:12b"
# Compact (listpack) while every value is at most this long and the hash has at most
# `LISTPACK_FIELDS` fields (Redis's hash-max-listpack-value and -entries defaults).
LISTPACK_VALUE = 64
LISTPACK_FIELDS = 128

USERNAMES = [
    "moonfish", "Kestrel", "tallpine", "juniper_k", "gravelroad", "Osei", "bluetide", "marguerite",
    "nightowl42", "Ravi", "quietstorm", "Lotte", "driftwood", "hazel.m", "TheEternal",
    "TheCritic", "sundog", "pebble", "Anouk", "wanderer",
]  # fmt: skip
VOCABULARY = (
    "i think that the honestly what about we just maybe really never always because when you "
    "it was is are today tomorrow yesterday feel feeling felt good bad strange quiet loud work "
    "home friend friends family mother father sister brother music song book movie game coffee "
    "tea rain sun morning evening night week weekend city train walk talk listen hear said say "
    "know knew think thought remember forget again still already yet soon later here there "
    "people someone everyone nobody something nothing everything lol haha yeah no yes okay sure "
    "right wrong hard easy long short little big new old first last best worst love hate miss"
)
WORDS = VOCABULARY.split()


# Messages as the site's front end sends them -----------------------------------------------------


def chat_line(rng: random.Random, low: int, high: int) -> str:
    """Words until the line is `low`..`high` characters long, with a little punctuation."""
    goal = rng.randint(low, high)
    words: list[str] = []
    length = 0
    while length < goal:
        word = rng.choice(WORDS)
        if rng.random() < 0.08:
            word += rng.choice([",", ".", "?", "!", "..."])
        words.append(word)
        length += len(word) + 1
    text = " ".join(words)[:high].rstrip()
    return text[0].upper() + text[1:]


def context_lines(rng: random.Random, count: int) -> list[str]:
    """`count` lines of history, `"username: text"`, 60-120 characters each."""
    lines = []
    for _ in range(count):
        name = rng.choice(USERNAMES)
        lines.append(f"{name}: {chat_line(rng, 60 - len(name) - 2, 120 - len(name) - 2)}")
    return lines


def site_message(index: int, entity: str, context_count: int) -> NewMessage:
    """A human message for `entity`, with its history; the site queue gives its id."""
    rng = random.Random(index)
    username = rng.choice(USERNAMES[:14])
    return NewMessage(
        text=chat_line(rng, 20, 180),
        username=username,
        color=f"{rng.randrange(256):03d}{rng.randrange(256):03d}{rng.randrange(256):03d}",
        context=context_lines(rng, context_count),
        botParams=BotParams(entity=entity, humanUsername=username, priority=5),
    )


def entity_for(index: int) -> str:
    return ETERNAL if index % 2 else CRITIC


def zero_latency_fleet() -> list[SimServerSpec]:
    models = [LLAMA, QWEN]
    return [
        SimServerSpec(
            name=f"zero-{index}", models=models, loaded=models, tokens_per_second=0, parallel=4
        )
        for index in range(3)
    ]


def entities_with_absent(folder: Path) -> Path:
    """The sample entities, and one whose model no server has."""
    for path in SAMPLE_ENTITIES_DIR.glob("*.json"):
        shutil.copy(path, folder / path.name)
    absent = json.loads((SAMPLE_ENTITIES_DIR / f"{ETERNAL}.json").read_text())
    absent.update({"id": ABSENT, "username": "TheAbsent", "model": ABSENT_MODEL})
    (folder / f"{ABSENT}.json").write_text(json.dumps(absent))
    return folder


def progress(text: str) -> None:
    print(f"[memory] {text}", file=sys.stderr, flush=True)


# Reading Redis's memory ------------------------------------------------------------------------
#
# The bench builds no key name of the ledger's: it reads every key Redis holds (SCAN, then
# MEMORY USAGE, OBJECT ENCODING, PTTL) and groups the keys that name a measured job's id, whatever
# they are; what it knows of jobs it asks the ledger.


def labels_for(message_ids: list[str]) -> dict[str, str]:
    """For each message's id and its score's job id, the label its keys are grouped under."""
    labels = {}
    for message_id in message_ids:
        labels[message_id] = "{id}"
        labels[score_job_id(message_id)] = score_job_id("{id}")
    return labels


def family(key: str, labels: dict[str, str]) -> str:
    """The key's name with the measured id it names replaced by its label; a key that names
    none is a family of its own."""
    parts = key.split(":")
    for index, part in enumerate(parts):
        if part in labels:
            return ":".join([*parts[:index], labels[part], *parts[index + 1 :]])
    return key


def labelled(name: str, labels: dict[str, str]) -> bool:
    """Is this family one of the measured jobs' keys?"""
    return not set(name.split(":")).isdisjoint(labels.values())


def naming(sizes: dict[str, int], job_id: str) -> list[str]:
    """The keys that name this job's id."""
    return sorted(key for key in sizes if job_id in key.split(":"))


@dataclass(frozen=True)
class Tables:
    """The keyspace's table and the table of expiring keys (`MEMORY STATS`, db 0)."""

    main: int  # overhead.hashtable.main: entries, object headers and buckets
    expires: int  # overhead.hashtable.expires: entries and buckets
    keys: int
    expiring: int

    @property
    def main_buckets(self) -> int:
        """Bytes of the keyspace's buckets."""
        return self.main - (TABLE_ENTRY + OBJECT_HEADER) * self.keys

    @property
    def expires_buckets(self) -> int:
        return self.expires - TABLE_ENTRY * self.expiring

    @property
    def whole(self) -> bool:
        """No table is being rehashed (each holds one array of buckets, a power of two)."""
        counts = [self.main_buckets // BUCKET]
        if self.expiring:
            counts.append(self.expires_buckets // BUCKET)
        return all(count > 0 and count & (count - 1) == 0 for count in counts)


@dataclass(frozen=True)
class Snapshot:
    info: dict[str, int]
    tables: Tables
    finished: int
    sizes: dict[str, int]  # every key Redis holds: its MEMORY USAGE

    def families(self, labels: dict[str, str]) -> dict[str, tuple[int, int]]:
        """Each family's keys and bytes."""
        found: dict[str, tuple[int, int]] = {}
        for key, size in self.sizes.items():
            count, total = found.get(family(key, labels), (0, 0))
            found[family(key, labels)] = (count + 1, total + size)
        return found


INFO_FIELDS = (
    "used_memory", "used_memory_dataset", "used_memory_overhead", "mem_clients_normal",
    "mem_clients_slaves", "mem_aof_buffer", "used_memory_scripts", "used_memory_startup",
)  # fmt: skip


def usages(client: redis.Redis, keys: list[str]) -> list[int]:
    """`MEMORY USAGE key SAMPLES 0` of each key (every element counted); 0 for one gone."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return [int(value or 0) for value in pipe.execute()]


def every_key(client: redis.Redis) -> dict[str, int]:
    names = [str(key) for key in client.scan_iter(count=1000)]
    return dict(zip(names, usages(client, names), strict=True))


def tables(client: redis.Redis) -> Tables:
    pipe = client.pipeline(transaction=False)
    pipe.memory_stats()
    pipe.info("keyspace")
    stats, keyspace = pipe.execute()
    db0 = stats.get("db.0") or {}
    counts = keyspace.get("db0", {"keys": 0, "expires": 0})
    return Tables(
        main=int(db0.get("overhead.hashtable.main", 0)),
        expires=int(db0.get("overhead.hashtable.expires", 0)),
        keys=int(counts["keys"]),
        expiring=int(counts["expires"]),
    )


def used_less_buffers(client: redis.Redis) -> int:
    """`used_memory` less what clients' buffers and the AOF buffer hold for the moment."""
    memory = client.info("memory")
    return (
        int(memory["used_memory"])
        - int(memory["mem_clients_normal"])
        - int(memory["mem_aof_buffer"])
    )


def wait_steady(client: redis.Redis, timeout: float = 120.0) -> bool:
    """Wait until `used_memory` has held still for `STEADY_S` (idle clients' buffers shrink a
    few seconds after their last big command) and no table is being rehashed. False if it
    never did within `timeout`: the figures are then read as they stand."""
    readings: list[tuple[float, int]] = []

    def steady() -> bool:
        now = time.monotonic()
        readings.append((now, int(client.info("memory")["used_memory"])))
        while len(readings) > 1 and now - readings[1][0] >= STEADY_S:
            readings.pop(0)
        values = [value for _, value in readings]
        held = now - readings[0][0] >= STEADY_S and max(values) - min(values) <= STEADY_BYTES
        return held and tables(client).whole

    try:
        wait_for(steady, timeout, interval=0.25, what="Redis's memory steady")
    except TimeoutError:
        return False
    return True


def snapshot(client: redis.Redis, finished: int) -> Snapshot:
    memory = client.info("memory")
    return Snapshot(
        info={name: int(memory.get(name, 0)) for name in INFO_FIELDS},
        tables=tables(client),
        finished=finished,
        sizes=every_key(client),
    )


def families_growth(
    before: Snapshot, after: Snapshot, labels: dict[str, str]
) -> dict[str, dict[str, int]]:
    """Each family whose keys or bytes changed between the snapshots."""
    old, new = before.families(labels), after.families(labels)
    grown = {}
    for name in sorted(set(old) | set(new)):
        keys_before, bytes_before = old.get(name, (0, 0))
        keys_after, bytes_after = new.get(name, (0, 0))
        if (keys_before, bytes_before) != (keys_after, bytes_after):
            grown[name] = {"keys": keys_after - keys_before, "bytes": bytes_after - bytes_before}
    return grown


def field_sizes(client: redis.Redis, key: str) -> dict[str, int]:
    """Each field's value length in bytes, largest first ({} for a key not a hash)."""
    if client.type(key) != "hash":
        return {}
    fields: dict[str, str] = client.hgetall(key)  # type: ignore[assignment]
    sizes = {name: len(value.encode("utf-8", "surrogatepass")) for name, value in fields.items()}
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def oversized(sizes: dict[str, int]) -> dict[str, int]:
    """What keeps a hash out of its compact encoding: each value too long, and the number of
    fields (as `(fields)`) when there are too many."""
    found = {name: size for name, size in sizes.items() if size > LISTPACK_VALUE}
    if len(sizes) > LISTPACK_FIELDS:
        found["(fields)"] = len(sizes)
    return found


# The run ---------------------------------------------------------------------------------------


def post(stack: LocalStack, first: int, count: int, context_count: int) -> list[str]:
    """Post `count` messages; the ids the site queue gave them."""
    ids = []
    with stack.queue_client() as queue, ProgressReport("posted", total=count) as posted:
        for index in range(first, first + count):
            ids.append(queue.post_comment(site_message(index, entity_for(index), context_count)).id)
            posted.advance()
    return ids


def settle(stack: LocalStack, timeout: float = 120.0) -> None:
    """Wait until no job is active or queued for a retry, every Celery queue is empty and no
    task is unacknowledged."""
    client, keys, ledger = stack.redis, stack.keys, stack.ledger
    queues = [keys.broker_queue(spec.name) for spec in stack.specs]
    queues.append(keys.broker_queue("control"))

    def quiet() -> bool:
        stack.check_alive()
        if ledger.totals()[0] or ledger.next_retry_at() is not None:
            return False
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        pipe.hlen(f"{keys.broker_prefix}unacked")
        pipe.zcard(f"{keys.broker_prefix}unacked_index")
        return not any(pipe.execute())

    wait_for(quiet, timeout, interval=0.1, what="the system quiet")


@dataclass(frozen=True)
class KeyGroup:
    """The keys that name a set of jobs' ids, by family."""

    families: dict[str, list[int]]  # family: each key's MEMORY USAGE
    encodings: dict[str, dict[str, int]]  # family: encoding: keys
    expiring: dict[str, int]  # family: keys with a TTL
    ttl_s: dict[str, float]  # family: the longest TTL left on one of its keys (-1: none)
    fields: dict[str, dict[str, int]]  # family: the field sizes of its first key

    @property
    def keys(self) -> int:
        return sum(len(sizes) for sizes in self.families.values())

    @property
    def not_expiring(self) -> int:
        return self.keys - sum(self.expiring.values())

    def held_s(self, name: str, retention_s: float) -> float:
        """How long a family's key is kept: a once-guard lingers a few minutes after its job
        ends; the rest of a finished job, the retention."""
        return ONCE_GUARD_LINGER_S if 0 <= self.ttl_s[name] <= ONCE_GUARD_LINGER_S else retention_s

    @property
    def bytes(self) -> int:
        return sum(sum(sizes) for sizes in self.families.values())


def key_group(client: redis.Redis, sizes: dict[str, int], labels: dict[str, str]) -> KeyGroup:
    keys = sorted(key for key in sizes if family(key, labels) != key)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.object("encoding", key)
        pipe.pttl(key)
    answers = pipe.execute()
    families: dict[str, list[int]] = {}
    encodings: dict[str, dict[str, int]] = {}
    first: dict[str, str] = {}
    expiring: dict[str, int] = {}
    ttl_s: dict[str, float] = {}
    for key, encoding, ttl in zip(keys, answers[::2], answers[1::2], strict=True):
        name = family(key, labels)
        families.setdefault(name, []).append(sizes[key])
        counts = encodings.setdefault(name, {})
        counts[str(encoding)] = counts.get(str(encoding), 0) + 1
        left = int(ttl) if ttl is not None else -1
        expiring[name] = expiring.get(name, 0) + int(left >= 0)
        ttl_s[name] = max(ttl_s.get(name, -1.0), left / 1000 if left >= 0 else -1.0)
        first.setdefault(name, key)
    return KeyGroup(
        families=families,
        encodings=encodings,
        expiring=expiring,
        ttl_s=ttl_s,
        fields={name: field_sizes(client, key) for name, key in first.items()},
    )


@dataclass(frozen=True)
class FinishedJobs:
    group: KeyGroup
    jobs: int
    not_finished: int  # per the ledger
    still_active: int  # per the ledger
    dead: int  # per the ledger
    retry_set_empty: bool


def read_finished(stack: LocalStack, after: Snapshot, message_ids: list[str]) -> FinishedJobs:
    ledger = stack.ledger
    job_ids = [*message_ids, *(score_job_id(message_id) for message_id in message_ids)]
    states = ledger.states(job_ids)
    active = set(ledger.active_job_ids())
    _, dead_count = ledger.totals()
    dead = set(ledger.dead_job_ids(limit=max(dead_count, 1)))
    return FinishedJobs(
        group=key_group(stack.redis, after.sizes, labels_for(message_ids)),
        jobs=len(message_ids) * stack.jobs_per_message,
        not_finished=sum(state is None or not state.finished for state in states),
        still_active=len(active.intersection(job_ids)),
        dead=len(dead.intersection(job_ids)),
        retry_set_empty=ledger.next_retry_at() is None,
    )


@dataclass(frozen=True)
class DeadLetter:
    hash_bytes: int
    other_growth: dict[str, dict[str, int]]  # what else grew when it died (its index entry)
    encoding: str
    fields: dict[str, int]
    message: dict[str, Any]  # the message as the site queue handed it to the bridge

    @property
    def bytes(self) -> int:
        return self.hash_bytes + sum(grown["bytes"] for grown in self.other_growth.values())


def dead_letter(stack: LocalStack, index: int, context_count: int) -> DeadLetter:
    """One message for an entity whose model no server has: its reply's job dies at once, and
    stays. Its score's job is answered as any other."""
    client, ledger = stack.redis, stack.ledger
    settle(stack)
    before = snapshot(client, ledger.finished_count())
    with stack.queue_client() as queue:
        message_id = queue.post_comment(site_message(index, ABSENT, context_count)).id
    wait_for(
        lambda: ledger.finished_count() >= before.finished + stack.jobs_per_message,
        60,
        interval=0.05,
        what="the dead letter's jobs finished",
    )
    settle(stack)
    after = snapshot(client, ledger.finished_count())
    job = ledger.get(message_id)
    if job is None or job.state is not JobState.DEAD or message_id not in ledger.dead_job_ids():
        raise RuntimeError(f"the message for {ABSENT} is no dead letter: {job}")
    labels = labels_for([message_id])
    own = naming(after.sizes, message_id)
    growth = families_growth(before, after, labels)
    return DeadLetter(
        hash_bytes=sum(after.sizes[key] for key in own),
        other_growth={name: grown for name, grown in growth.items() if not labelled(name, labels)},
        encoding=",".join(str(client.object("encoding", key)) for key in own),
        fields=field_sizes(client, own[0]) if own else {},
        message=job.message,
    )


@dataclass(frozen=True)
class ActiveJobs:
    reply_bytes: float
    score_bytes: float
    encoding: str
    fields: dict[str, int]
    entry_bytes: float  # a table entry as allocated


def allocated_entry_bytes(client: redis.Redis) -> float:
    """What one table entry takes as allocated: the growth of `used_memory` (less buffers)
    when `PROBE_KEYS` keys get an expiry, less the buckets the table of expiring keys grew by,
    per key."""

    def each(command: str) -> None:
        for start in range(0, PROBE_KEYS, PROBE_BATCH):
            pipe = client.pipeline(transaction=False)
            for index in range(start, start + PROBE_BATCH):
                if command == "set":
                    pipe.set(f"probe:{index}", "1")
                else:
                    pipe.pexpire(f"probe:{index}", 3_600_000)
            pipe.execute()

    def whole() -> bool:
        return tables(client).whole

    # Nothing else writes to this Redis: its tables stay as they are once rehashed.
    each("set")
    wait_for(whole, 60, interval=0.05, what="the probe's keyspace rehashed")
    before_tables, before = tables(client), used_less_buffers(client)
    each("pexpire")
    wait_for(whole, 60, interval=0.05, what="the probe's expiries rehashed")
    after_tables, after = tables(client), used_less_buffers(client)
    buckets = after_tables.expires_buckets - before_tables.expires_buckets
    client.delete(*[f"probe:{index}" for index in range(PROBE_KEYS)])
    return (after - before - buckets) / PROBE_KEYS


def active_jobs(template: dict[str, Any], context_count: int) -> ActiveJobs:
    """Jobs as claimed, written with `Ledger.record_claim` in a throwaway Redis, from messages
    shaped as the site queue hands them over (`template`) with each its own text and history;
    and, in the same Redis, the allocated size of a table entry."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            ledger = Ledger(client, Keys())
            ids = [f"active{index:04d}" for index in range(ACTIVE_SAMPLE)]
            for index, message_id in enumerate(ids):
                made = site_message(index, ETERNAL, context_count)
                params = {**template.get("botParams", {}), "entity": ETERNAL}
                message = {
                    **template,
                    "id": message_id,
                    "text": made.text,
                    "username": made.username,
                    "context": made.context,
                    "botParams": params,
                }
                ledger.record_claim(message_id, message, "bridge", 900.0, scored=True)
            sizes = every_key(client)
            replies = [key for job_id in ids for key in naming(sizes, job_id)]
            scores = [key for job_id in ids for key in naming(sizes, score_job_id(job_id))]
            return ActiveJobs(
                reply_bytes=sum(sizes[key] for key in replies) / len(ids),
                score_bytes=sum(sizes[key] for key in scores) / len(ids),
                encoding=str(client.object("encoding", replies[0])),
                fields=field_sizes(client, replies[0]),
                entry_bytes=allocated_entry_bytes(client),
            )
        finally:
            client.close()


def measure(
    messages: int, context_count: int, retention_s: float, work_dir: Path | None
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="ollama-cloud-memory-entities-"))
    try:
        entities = entities_with_absent(folder)
        with LocalStack(zero_latency_fleet(), entities_dir=entities, work_dir=work_dir) as stack:
            progress(f"stack up; warm-up: {WARM_UP_MESSAGES} messages")
            post(stack, 0, WARM_UP_MESSAGES, context_count)
            wait_quiet(stack, WARM_UP_MESSAGES, timeout=120)
            settle(stack)
            steady_before = wait_steady(stack.redis)
            before = snapshot(stack.redis, stack.ledger.finished_count())
            progress(f"used_memory {before.info['used_memory']}; posting {messages} messages")
            started = time.monotonic()
            ids = post(stack, WARM_UP_MESSAGES, messages, context_count)
            progress(f"posted in {time.monotonic() - started:.1f}s; waiting for their jobs")
            with ProgressReport("jobs finished") as finished_jobs:
                wait_quiet(stack, WARM_UP_MESSAGES + messages, timeout=600, progress=finished_jobs)
            settle(stack)
            progress("quiet; waiting for Redis's memory to hold still")
            steady_after = wait_steady(stack.redis)
            after = snapshot(stack.redis, stack.ledger.finished_count())
            progress(f"all finished and quiet in {time.monotonic() - started:.1f}s")
            finished = read_finished(stack, after, ids)
            growth = families_growth(before, after, labels_for(ids))
            dead = dead_letter(stack, WARM_UP_MESSAGES + messages, context_count)
            progress("dead letter measured")
        active = active_jobs(dead.message, context_count)
        progress("active jobs measured")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    run = Run(before, after, growth, steady_before and steady_after)
    return figures(messages, retention_s, run, finished, dead, active)


@dataclass(frozen=True)
class Run:
    before: Snapshot
    after: Snapshot
    growth: dict[str, dict[str, int]]  # each family that changed over the run
    steady: bool  # used_memory held still before each snapshot


def figures(
    messages: int,
    retention_s: float,
    run: Run,
    finished: FinishedJobs,
    dead: DeadLetter,
    active: ActiveJobs,
) -> dict[str, Any]:
    group, jobs = finished.group, finished.jobs
    jobs_finished = run.after.finished - run.before.finished
    # Each key's entry past the size Redis counts for it, its share of the keyspace's buckets,
    # and (for a key with a TTL) its entry and share of the buckets in the table of expiring
    # keys, as the tables stand after the run.
    table = run.after.tables
    entry_rounding = active.entry_bytes - TABLE_ENTRY
    bucket = table.main_buckets / table.keys
    expiry = active.entry_bytes + table.expires_buckets / max(table.expiring, 1)
    others = {name: grown for name, grown in run.growth.items() if name not in group.families}
    other_bytes = sum(grown["bytes"] for grown in others.values())
    # Each family's keys, with their entries in the tables.
    family_bytes = {
        name: sum(sizes) + len(sizes) * (entry_rounding + bucket) + group.expiring[name] * expiry
        for name, sizes in group.families.items()
    }
    per_job = (sum(family_bytes.values()) + other_bytes) / jobs
    per_message = per_job * jobs / messages  # a reply's job and a score's

    def projected_mb(retention: float) -> float:
        """What is held at 10,000 messages an hour: each family's bytes for as long as its
        keys are kept, the rest (indexes, counters) for the retention."""
        held = sum(size * group.held_s(name, retention) for name, size in family_bytes.items())
        held += other_bytes * retention
        return held / messages * MESSAGES_PER_HOUR / 3600 / MB

    parts = {
        "keys_per_job": round(group.keys / jobs, 3),
        "key_bytes": {
            name: round(sum(sizes) / len(sizes), 1) for name, sizes in group.families.items()
        },
        "keyspace_entry_past_its_size": round(entry_rounding, 1),
        "keyspace_bucket": round(bucket, 1),
        "expiry_entry": round(expiry, 1),
        "other_keys_growth": round(other_bytes / jobs, 2),
        "held_s": {name: group.held_s(name, DEFAULT_RETENTION_S) for name in group.families},
    }
    delta = {name: run.after.info[name] - run.before.info[name] for name in INFO_FIELDS}
    less_buffers = delta["used_memory"] - delta["mem_clients_normal"] - delta["mem_aof_buffer"]
    default_mb = projected_mb(DEFAULT_RETENTION_S)
    retention_mb = projected_mb(retention_s)
    return {
        "messages": messages,
        "context_lines": len(dead.message.get("context") or []),
        "jobs_finished": jobs_finished,
        "bytes_per_finished_job": round(per_job, 1),
        "used_memory_per_finished_job": round(delta["used_memory"] / jobs_finished, 1),
        "used_memory_less_buffers_per_finished_job": round(less_buffers / jobs_finished, 1),
        "memory_steady": run.steady,
        "finished_job_parts": parts,
        "bytes_per_message": round(per_message, 1),
        "projected_mb_10k_per_hour": round(default_mb, 1),
        "projected_decimal_mb_10k_per_hour": round(default_mb * MB / 1e6, 1),
        "default_retention_s": DEFAULT_RETENTION_S,
        "retention_s": retention_s,
        "projected_mb_for_retention": round(retention_mb, 1),
        "bytes_per_active_job": round(active.reply_bytes, 1),
        "bytes_per_active_score_job": round(active.score_bytes, 1),
        "bytes_per_dead_letter": dead.bytes,
        "dead_letter_parts": {"hash": dead.hash_bytes, "other_keys_growth": dead.other_growth},
        "encodings": {
            "finished": group.encodings,
            "active_reply": active.encoding,
            "dead_letter": dead.encoding,
        },
        "checks": {
            "finished_keys_not_expiring": group.not_expiring,
            "finished_jobs_not_in_a_finished_state": finished.not_finished,
            "finished_jobs_still_active": finished.still_active,
            "finished_jobs_in_dead_letters": finished.dead,
            "retry_set_empty": finished.retry_set_empty,
        },
        "largest_fields": {
            **{f"finished {name}": sizes for name, sizes in group.fields.items()},
            "active_reply": dict(list(active.fields.items())[:4]),
            "dead_letter": dict(list(dead.fields.items())[:4]),
        },
        "fields_over_listpack_value": {
            name: oversized(sizes) for name, sizes in group.fields.items()
        },
        "used_memory_breakdown": delta,
        "key_families_growth": run.growth,
        "meets_targets": per_job <= TARGET_BYTES_PER_FINISHED_JOB
        and default_mb <= TARGET_PROJECTED_MB,
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--messages", type=int, default=2000, help="messages measured")
    parser.add_argument(
        "--context-lines", type=int, default=200, help="lines of history on each message"
    )
    parser.add_argument(
        "--retention-s",
        type=float,
        default=DEFAULT_RETENTION_S,
        help="retention for projected_mb_for_retention (default: the setting's default)",
    )
    parser.add_argument("--keep-dir", type=kept_dir, help="keep the stack's logs and data here")
    args = parser.parse_args()
    stop_on_sigterm()
    result = measure(args.messages, args.context_lines, args.retention_s, args.keep_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
