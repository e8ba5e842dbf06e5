"""Prometheus metrics for the fleet page's `/metrics`.

The bridge, control, beat and the workers run on several hosts and share only Redis, so every
count lives there (orchestrator.state.metrics, the ledger's `finish` step, the fleet records)
and this collector reads it all at scrape time, in a few pipelined round trips: no registry of
this process's own, no SCAN over jobs.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from orchestrator.domain.job import JobKind, Outcome
from orchestrator.ops.status import FleetStatus, read_status
from orchestrator.services import State
from orchestrator.site_queue import ERROR_KINDS
from orchestrator.state.metrics import (
    CLAIMED,
    FINISHED,
    GENERATION_SECONDS_BUCKETS,
    REROUTED,
    SCORES_APPLIED,
    SITE_ERRORS,
    TOKENS_PER_SECOND_BUCKETS,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
NAMESPACE = "ollama_cloud"

# A reply's job that ended on purpose without a reply, by the reason the metrics give; and
# messages refused before they became jobs (an id that cannot be kept), counted by the bridge.
SKIPPED = {
    Outcome.SKIPPED: "entity_rules",
    Outcome.REJECTED: "rejected",
    Outcome.DROPPED: "dropped",
}
REFUSED = "refused"

Series = tuple[str, str]  # (server, model)


@dataclass
class Histogram:
    """One series of a histogram as kept in Redis: per-bucket counts by upper bound, and sum."""

    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        """The `le` buckets, each counting everything at or below it, +Inf last: the `bounds`
        configured now, and any other a count was kept under."""
        total = 0.0
        rows = []
        for bound in sorted({*bounds, *self.buckets}):
            total += self.buckets.get(bound, 0.0)
            rows.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        if not rows or rows[-1][0] != "+Inf":
            rows.append(("+Inf", total))
        return rows


@dataclass
class Snapshot:
    """Everything a scrape shows, as read from Redis."""

    status: FleetStatus
    counts: dict[str, float]
    generation_seconds: dict[Series, Histogram]
    tokens_per_second: dict[Series, Histogram]
    cold_loads: dict[Series, float]
    bridge_waiting: dict[str, int]
    retrying: int

    def count(self, *parts: str) -> float:
        return self.counts.get(":".join(parts), 0.0)

    def labelled(self, name: str, width: int) -> dict[tuple[str, ...], float]:
        """The counts of `name` by their labels (`width` of them)."""
        found = {}
        for key, value in self.counts.items():
            head, *labels = key.split(":")
            if head == name and len(labels) == width:
                found[tuple(labels)] = value
        return found


def _number(value: str | None) -> float:
    try:
        number = float(value or 0)
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _histograms(raw: dict[str, str]) -> dict[Series, Histogram]:
    """A histogram's hash (fields JSON `[server, model, part]`) by series; a field that does
    not read is left out."""
    series: dict[Series, Histogram] = defaultdict(Histogram)
    for name, value in raw.items():
        try:
            server_id, model, part = json.loads(name)
            bound = None if part in ("sum", "count") else float(part)
        except (ValueError, TypeError):
            log.debug("metrics: histogram field %.100r left out", name)
            continue
        if not isinstance(server_id, str) or not isinstance(model, str):
            continue
        histogram = series[(server_id, model)]
        if part == "sum":
            histogram.sum = _number(value)
        elif bound is not None:
            histogram.buckets[bound] = _number(value)
    return dict(series)


def _by_series(raw: dict[str, str]) -> dict[Series, float]:
    counts: dict[Series, float] = {}
    for name, value in raw.items():
        try:
            server_id, model = json.loads(name)
        except (ValueError, TypeError):
            continue
        if isinstance(server_id, str) and isinstance(model, str):
            counts[(server_id, model)] = _number(value)
    return counts


def read_snapshot(state: State) -> Snapshot:
    """The fleet as `status` reads it, then the counts, histograms and bridges' waiting jobs
    in one pipeline; bridges no longer alive are pruned from the waiting counts."""
    status = read_status(state)
    keys = state.keys
    pipe = state.redis.pipeline(transaction=False)
    pipe.hgetall(keys.metric_counts)
    pipe.hgetall(keys.generation_seconds)
    pipe.hgetall(keys.tokens_per_second)
    pipe.hgetall(keys.cold_loads)
    pipe.hgetall(keys.bridge_waiting)
    counts, generation, speeds, cold, waiting = pipe.execute()
    bridge_ids = sorted(waiting)
    alive = state.ledger.bridges_alive(bridge_ids)
    gone = [bridge_id for bridge_id, up in zip(bridge_ids, alive, strict=True) if not up]
    if gone:
        state.redis.hdel(keys.bridge_waiting, *gone)
    return Snapshot(
        status=status,
        counts={name: _number(value) for name, value in counts.items()},
        generation_seconds=_histograms(generation),
        tokens_per_second=_histograms(speeds),
        cold_loads=_by_series(cold),
        bridge_waiting={
            bridge_id: int(_number(waiting[bridge_id]))
            for bridge_id, up in zip(bridge_ids, alive, strict=True)
            if up
        },
        retrying=state.ledger.retrying_count(),
    )


def _name(name: str) -> str:
    return f"{NAMESPACE}_{name}"


def counter_families(snapshot: Snapshot) -> Iterator[Metric]:
    finished = snapshot.labelled(FINISHED, 2)
    reply = JobKind.REPLY.value

    def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(_name(name), documentation, value=value)

    yield counter(
        "messages_claimed",
        "Messages the site queue handed to a bridge.",
        snapshot.count(CLAIMED),
    )
    yield counter(
        "messages_answered",
        "Messages whose reply was posted and that were completed on the site.",
        finished.get((reply, Outcome.ANSWERED.value), 0.0),
    )
    skipped = CounterMetricFamily(
        _name("messages_skipped"),
        "Messages completed without a reply on purpose, by reason: entity_rules (the "
        "entity's [SKIP] or filters), rejected (a bad message, an unknown or disabled entity, "
        "too large), dropped (by an operator), refused (an id that cannot be kept).",
        labels=["reason"],
    )
    for outcome, reason in SKIPPED.items():
        skipped.add_metric([reason], finished.get((reply, outcome.value), 0.0))
    skipped.add_metric([REFUSED], float(snapshot.status.outcomes.get(REFUSED, 0)))
    yield skipped
    yield counter(
        "messages_dead_lettered",
        "Messages no server could answer: completed without a reply (or with the operator's "
        "apology) and kept as dead letters.",
        finished.get((reply, Outcome.DEAD.value), 0.0),
    )
    yield counter(
        "scores_applied",
        "EQ scores the site queue took (one PATCH per message at most).",
        snapshot.count(SCORES_APPLIED),
    )
    yield counter(
        "scores_lost",
        "Messages whose EQ score could not be had: kept with their reason.",
        finished.get((JobKind.SCORE.value, Outcome.SCORE_LOST.value), 0.0),
    )
    jobs = CounterMetricFamily(
        _name("jobs_finished"),
        "Jobs (a message's reply, its score) that ended, by kind and outcome.",
        labels=["kind", "outcome"],
    )
    for (kind, ended), value in sorted(finished.items()):
        jobs.add_metric([kind, ended], value)
    yield jobs
    rerouted = CounterMetricFamily(
        _name("jobs_rerouted"),
        "Jobs queued to be placed again after a failed attempt (failover, a lost server or "
        "task, a context cut), by kind and the attempt's error kind.",
        labels=["kind", "reason"],
    )
    for (kind, reason), value in sorted(snapshot.labelled(REROUTED, 2).items()):
        rerouted.add_metric([kind, reason], value)
    yield rerouted
    site = CounterMetricFamily(
        _name("site_queue_errors"),
        "Calls to the site queue that failed, by kind: connect, timeout, network, gone (404), "
        "client_error (4xx), server_error (5xx), too_large, bad_answer.",
        labels=["kind"],
    )
    errors = {labels[0]: value for labels, value in snapshot.labelled(SITE_ERRORS, 1).items()}
    for kind in sorted({*ERROR_KINDS, *errors}):
        site.add_metric([kind], errors.get(kind, 0.0))
    yield site
    cold = CounterMetricFamily(
        _name("cold_loads"),
        "Generations that had to load their model first, by server and model.",
        labels=["server", "model"],
    )
    for (server_id, model), value in sorted(snapshot.cold_loads.items()):
        cold.add_metric([server_id, model], value)
    yield cold


def gauge_families(snapshot: Snapshot) -> Iterator[Metric]:
    rows = snapshot.status.servers

    def per_server(name: str, documentation: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(_name(name), documentation, labels=["server"])

    inflight = per_server("server_inflight", "Jobs running on the server now.")
    capacity = per_server("server_capacity", "The server's parallel slots.")
    online = per_server("server_online", "1 while the server beats, 0 once it is silent.")
    age = per_server("server_heartbeat_age_seconds", "Seconds since the server's last beat.")
    queued = per_server("server_queued_tasks", "Tasks waiting in the server's Celery queue.")
    for row in rows:
        inflight.add_metric([row.id], row.inflight)
        capacity.add_metric([row.id], row.capacity)
        online.add_metric([row.id], 1.0 if row.online else 0.0)
        queued.add_metric([row.id], row.queued)
        if row.last_beat_age_s is not None:
            age.add_metric([row.id], row.last_beat_age_s)
    yield from (inflight, capacity, online, age, queued)
    waiting = GaugeMetricFamily(
        _name("bridge_waiting_jobs"),
        "Jobs claimed and waiting in a bridge for a slot, by bridge.",
        labels=["bridge"],
    )
    for bridge_id, count in sorted(snapshot.bridge_waiting.items()):
        waiting.add_metric([bridge_id], count)
    yield waiting
    yield GaugeMetricFamily(
        _name("jobs_retrying"),
        "Jobs queued to be placed again by any bridge.",
        value=snapshot.retrying,
    )
    yield GaugeMetricFamily(
        _name("jobs_active"),
        "Jobs claimed and not yet ended.",
        value=snapshot.status.active_jobs,
    )


def histogram_families(snapshot: Snapshot) -> Iterator[Metric]:
    for name, documentation, series, bounds in (
        (
            "generation_seconds",
            "Wall time of a delivered generation (reply or score) on its server, by server "
            "and model.",
            snapshot.generation_seconds,
            GENERATION_SECONDS_BUCKETS,
        ),
        (
            "generation_tokens_per_second",
            "Generation speed of a delivered generation, where its server told its tokens, by "
            "server and model.",
            snapshot.tokens_per_second,
            TOKENS_PER_SECOND_BUCKETS,
        ),
    ):
        family = HistogramMetricFamily(_name(name), documentation, labels=["server", "model"])
        for (server_id, model), histogram in sorted(series.items()):
            family.add_metric([server_id, model], histogram.cumulative(bounds), histogram.sum)
        yield family


class FleetCollector(Collector):
    """Reads the system's counts, histograms and fleet records from Redis at each scrape."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        snapshot = read_snapshot(self._state)
        yield from counter_families(snapshot)
        yield from gauge_families(snapshot)
        yield from histogram_families(snapshot)


def exposition(state: State) -> bytes:
    """The text exposition format of everything the system counts, read from Redis now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(state))
    return generate_latest(registry)
