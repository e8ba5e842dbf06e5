"""What control delivered lately, for the fleet page: the newest finished jobs with their
latencies (a bounded list), and finished jobs by outcome in each recent minute (a hash a
minute, expiring). Written only after a job's finish took effect, so a repeated delivery of one
result counts once."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import redis

from workers.contract.keys import Keys

log = logging.getLogger(__name__)

RECENT_KEPT = 200  # newest deliveries kept
MINUTES_KEPT = 60  # a minute's totals are kept this many minutes


@dataclass(frozen=True)
class Delivered:
    """One job that ended in control: a reply or score delivered, or given up."""

    at: float
    job_id: str
    kind: str  # reply or score
    outcome: str
    server_id: str
    entity: str | None
    model: str | None
    attempt: int
    latency_ms: float  # from its claim to its end
    generation_ms: float | None = None  # the server's whole request, as its worker timed it
    tokens_per_s: float | None = None

    @classmethod
    def read(cls, line: str) -> Delivered | None:
        try:
            fields = json.loads(line)
            return cls(**fields)
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True)
class MinuteTotals:
    minute_start: float  # Unix seconds
    outcomes: dict[str, int]


def minute_of(at: float) -> int:
    return int(at // 60)


class DeliveredRecord:
    def __init__(self, client: redis.Redis, keys: Keys, kept: int = RECENT_KEPT) -> None:
        self.redis = client
        self.keys = keys
        self.kept = kept

    def note(self, entry: Delivered) -> None:
        """One more finished job, in one round trip. A failure is logged, never raised: the
        record is for people, the job is done either way."""
        minute = self.keys.minute_totals(minute_of(entry.at))
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.keys.recent_replies, json.dumps(asdict(entry)))
        pipe.ltrim(self.keys.recent_replies, 0, self.kept - 1)
        pipe.hincrby(minute, entry.outcome, 1)
        pipe.expire(minute, (MINUTES_KEPT + 1) * 60)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("job=%s not noted among the recent deliveries: %s", entry.job_id, exc)

    def read(
        self, limit: int = 50, minutes: int = 10, now: float | None = None
    ) -> tuple[list[Delivered], list[MinuteTotals]]:
        """The newest `limit` deliveries, and the totals of the last `minutes` minutes (this
        one included, oldest first), in one round trip."""
        at = time.time() if now is None else now
        current = minute_of(at)
        first = current - minutes + 1
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(self.keys.recent_replies, 0, limit - 1)
        for minute in range(first, current + 1):
            pipe.hgetall(self.keys.minute_totals(minute))
        lines, *counts = pipe.execute()
        recent = [entry for line in lines if (entry := Delivered.read(line)) is not None]
        totals = [
            MinuteTotals((first + offset) * 60.0, whole_counts(raw))
            for offset, raw in enumerate(counts)
        ]
        return recent, totals


def whole_counts(raw: dict[str, str]) -> dict[str, int]:
    counts = {}
    for name, value in raw.items():
        try:
            counts[name] = int(value)
        except ValueError:
            continue
    return counts
