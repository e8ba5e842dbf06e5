"""What the processes count for `/metrics`, kept in Redis: the bridge, control and beat run on
several hosts and share only Redis, so every count is an increment there, made where its event
happens, and the fleet page reads them all at scrape time (orchestrator.ops.metrics).

A job's own figures (its generation's time and speed, a cold load) are added with the job's end,
in the ledger's `finish` step, so that a result delivered twice counts once.
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple

import redis

from orchestrator.state.fleet import cold_load_ms
from workers.contract.keys import Keys
from workers.contract.protocol import ChatTimings

log = logging.getLogger(__name__)

# Upper bounds of the histograms' buckets (a +Inf bucket follows): a generation's wall time
# runs from a short warm reply to a cold load of minutes; a speed, from a large model on a
# small Mac to a small one on a fast GPU.
GENERATION_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TOKENS_PER_SECOND_BUCKETS = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0)
INF = "+Inf"

# Fields of the counts hash (`Keys.metric_counts`); labelled ones take `:label` after them.
CLAIMED = "claimed"  # a message the site queue handed to a bridge
FINISHED = "finished"  # :kind:outcome, counted by the ledger's `finish` script
REROUTED = "rerouted"  # :kind:reason, a job queued to be placed again after a failed attempt
SCORES_APPLIED = "scores_applied"  # an EQ PATCH the site queue took
SITE_ERRORS = "site_errors"  # :kind, a call to the site queue that failed


class Figure(NamedTuple):
    """An amount to add to one field of one hash."""

    key: str
    field: str
    amount: float


def bucket_of(value: float, bounds: tuple[float, ...]) -> str:
    """The bucket a value falls in, named by its upper bound (`0.25`, `+Inf`)."""
    for bound in bounds:
        if value <= bound:
            return repr(bound)
    return INF


def series_field(server_id: str, model: str, part: str = "") -> str:
    """A field of the by-server-and-model hashes: JSON, so any id or name reads back whole."""
    return json.dumps([server_id, model, part] if part else [server_id, model])


def _observation(
    key: str, server_id: str, model: str, value: float, bounds: tuple[float, ...]
) -> list[Figure]:
    """One value of a histogram: its bucket's count, the sum and the count."""
    bucket = bucket_of(value, bounds)
    return [
        Figure(key, series_field(server_id, model, bucket), 1),
        Figure(key, series_field(server_id, model, "sum"), value),
        Figure(key, series_field(server_id, model, "count"), 1),
    ]


def generation_figures(
    keys: Keys, server_id: str, model: str, timings: ChatTimings
) -> list[Figure]:
    """What one delivered generation adds: its wall time, its speed when the server told its
    tokens and their time, and a cold load when its timing shows one."""
    figures = _observation(
        keys.generation_seconds,
        server_id,
        model,
        timings.wall_ms / 1000,
        GENERATION_SECONDS_BUCKETS,
    )
    eval_s = timings.eval_ms / 1000
    if eval_s > 0 and timings.eval_count > 0:
        tokens_per_s = timings.eval_count / eval_s
        figures += _observation(
            keys.tokens_per_second, server_id, model, tokens_per_s, TOKENS_PER_SECOND_BUCKETS
        )
    if cold_load_ms(timings) > 0:
        figures.append(Figure(keys.cold_loads, series_field(server_id, model), 1))
    return figures


class Metrics:
    """Counts made outside a job's steps. A count that fails (Redis away) is logged and lost:
    it never stops the work it counts."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def count(self, name: str, *labels: str) -> None:
        field = ":".join([name, *labels])
        try:
            self.redis.hincrby(self.keys.metric_counts, field, 1)
        except redis.RedisError as exc:
            log.debug("metric %s not counted: %s", field, exc)

    def note_site_error(self, kind: str) -> None:
        """A call to the site queue failed, of this kind (`timeout`, `server_error`, ...)."""
        self.count(SITE_ERRORS, kind)

    def note_waiting(self, bridge_id: str, waiting: int) -> None:
        """How many jobs wait in this bridge for a slot now."""
        try:
            self.redis.hset(self.keys.bridge_waiting, bridge_id, waiting)
        except redis.RedisError as exc:
            log.debug("bridge=%s waiting count not kept: %s", bridge_id, exc)
