"""Every Redis key of the system, built in one place (the table in the README), the broker's
included: Celery's queues and bookkeeping sit under the same prefix, so several fleets can
share one Redis without taking each other's work."""

from __future__ import annotations

DEFAULT_PREFIX = "ollama-cloud"


class Keys:
    """Builds the key names under one prefix, so several fleets can share a Redis."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    # The broker: kombu puts this before every key and channel of Celery's.
    @property
    def broker_prefix(self) -> str:
        """What kombu's `global_keyprefix` is set to: Celery's queues (one list per server,
        `control`), its unacknowledged-task bookkeeping and its channels live under it."""
        return f"{self.prefix}:broker:"

    def broker_queue(self, queue: str) -> str:
        """The list of tasks waiting in a Celery queue (a server's id, or `control`)."""
        return f"{self.broker_prefix}{queue}"

    @property
    def broker_dead_letters(self) -> str:
        """List, newest first and bounded: items taken from a queue that were not a task this
        system runs (not JSON, a bad envelope, an unknown task, a wrong argument, too large),
        each with its reason, an excerpt and a hash (workers.contract.broker)."""
        return f"{self.broker_prefix}dead-letters"

    # Fleet: written by each worker's heartbeat.
    @property
    def servers(self) -> str:
        """Set of server ids that have beaten at least once (records expire; ids are pruned)."""
        return f"{self.prefix}:servers"

    def server(self, server_id: str) -> str:
        """Hash with TTL: the server record."""
        return f"{self.server_prefix}{server_id}"

    @property
    def server_prefix(self) -> str:
        return f"{self.prefix}:server:"

    @property
    def last_seen(self) -> str:
        """Sorted set: each server's last heartbeat time, kept after its record expires."""
        return f"{self.prefix}:servers:last-seen"

    def worker_client(self, server_id: str) -> str:
        """The name a server's worker gives its Redis connections (CLIENT SETNAME): while any
        is open the worker process lives; all closed at once means it died."""
        return f"{self.prefix}:worker:{''.join(server_id.split())}"

    def inflight(self, server_id: str) -> str:
        """Hash of the jobs running on a server, job id to model: entries, not a counter, so it
        cannot drift, and each model's own slots can be counted."""
        return f"{self.inflight_prefix}{server_id}"

    @property
    def inflight_prefix(self) -> str:
        return f"{self.prefix}:inflight:"

    def breaker(self, server_id: str) -> str:
        """Hash: a server's failures in a row and when its cooldown ends (circuit breaker)."""
        return f"{self.breaker_prefix}{server_id}"

    @property
    def breaker_prefix(self) -> str:
        return f"{self.prefix}:breaker:"

    @property
    def lost_servers(self) -> str:
        """Set of servers whose jobs were moved away when they stopped beating: their queues
        are purged of stale attempts when they come back."""
        return f"{self.prefix}:servers:lost"

    def latency(self, server_id: str) -> str:
        """Hash of per-model moving averages for a server (generation ms, tokens per second)."""
        return f"{self.latency_prefix}{server_id}"

    @property
    def latency_prefix(self) -> str:
        return f"{self.prefix}:latency:"

    # Ledger: written by the bridge and control.
    def job(self, job_id: str) -> str:
        """Hash: the claimed message, its state, attempt, server and history."""
        return f"{self.job_prefix}{job_id}"

    @property
    def job_prefix(self) -> str:
        """What a job's id follows in its key, for scripts that walk many jobs."""
        return f"{self.prefix}:job:"

    @property
    def active_jobs(self) -> str:
        """Sorted set of job ids by deadline: what the sweep walks."""
        return f"{self.prefix}:jobs:active"

    @property
    def retry_jobs(self) -> str:
        """Sorted set of job ids by the time they may be placed again (failover, recovery)."""
        return f"{self.prefix}:jobs:retry"

    @property
    def dead_letters(self) -> str:
        """Sorted set of job ids that ended without a reply for a reason an operator should
        see, by when: kept for the dead-letter retention (a week by default)."""
        return f"{self.prefix}:jobs:dead-letters"

    @property
    def lost_scores(self) -> str:
        """Sorted set of score jobs that got no score, by when: kept for a retry, expiring
        after the retention like finished jobs (dead letters of replies stay)."""
        return f"{self.prefix}:jobs:scores-lost"

    @property
    def refused_messages(self) -> str:
        """List, newest first and bounded: messages the site sent that could not be taken as
        jobs at all (an id that cannot be kept, an answer too large to read), each with its
        reason; completed on the site where it allows."""
        return f"{self.prefix}:site:refused"

    @property
    def recent_replies(self) -> str:
        """List, newest first and bounded: the latest delivered jobs (replies and scores), each
        a JSON line with its server, entity, outcome and latencies, for the fleet page."""
        return f"{self.prefix}:delivered:recent"

    def minute_totals(self, minute: int) -> str:
        """Hash with TTL: delivered jobs by outcome in one minute (`minute` is Unix seconds
        divided by 60), for the fleet page's totals per minute."""
        return f"{self.prefix}:delivered:per-minute:{minute}"

    @property
    def finished_jobs(self) -> str:
        """String: how many jobs have finished. A finished job's hash expires by itself."""
        return f"{self.prefix}:jobs:finished"

    def once_eq(self, job_id: str) -> str:
        """Once-guard: the EQ score of this message was applied (or is being applied)."""
        return f"{self.once_eq_prefix}{job_id}"

    @property
    def once_eq_prefix(self) -> str:
        return f"{self.prefix}:once:eq:"

    # Coordination.
    @property
    def slot_events(self) -> str:
        """Pub/sub channel: a slot was freed or a server appeared; the bridge wakes on it."""
        return f"{self.prefix}:events:slots"

    def bridge(self, bridge_id: str) -> str:
        """String with TTL: this bridge is alive (it holds waiting jobs in memory)."""
        return f"{self.prefix}:bridge:{bridge_id}"

    @property
    def site_seen_empty(self) -> str:
        """Sorted set of one member: the latest time any bridge saw the site with nothing
        pending (a message claimed after it was posted after it). Kept only ever growing."""
        return f"{self.prefix}:claims:site-empty"

    @property
    def claim_notes(self) -> str:
        """Hash: a claim a bridge is making (noted before it asks the site, taken away when its
        jobs are written). One left behind marks a claim that may be lost: recovery looks for
        it on the site, and only then."""
        return f"{self.prefix}:claims:noted"

    @property
    def sweep_lock(self) -> str:
        """String with TTL: one sweep at a time, whatever the number of beats or controls."""
        return f"{self.prefix}:lock:beat"

    @property
    def beat_process_lock(self) -> str:
        """String with TTL: the one beat process allowed to send the schedule."""
        return f"{self.prefix}:lock:beat-process"

    @property
    def recover_lock(self) -> str:
        """String with TTL: one recovery pass at a time."""
        return f"{self.prefix}:lock:recover"

    @property
    def counters(self) -> str:
        """Hash of fleet-wide counters (answered, skipped, rejected, dead) for status and demo."""
        return f"{self.prefix}:counters"

    # Metrics: counted where each event happens, in any process; read by `/metrics`.
    @property
    def metric_counts(self) -> str:
        """Hash of event counts since the fleet began, field `name` or `name:label:...`:
        messages claimed, jobs finished by kind and outcome, jobs rerouted by kind and reason,
        scores applied, site queue errors by kind."""
        return f"{self.prefix}:metrics:counts"

    @property
    def generation_seconds(self) -> str:
        """Hash: the histogram of generations' wall time by server and model; fields are JSON
        `[server, model, bucket]`, a bucket being its upper bound's count (not cumulative),
        `sum` or `count`."""
        return f"{self.prefix}:metrics:generation-seconds"

    @property
    def tokens_per_second(self) -> str:
        """Hash: the histogram of generations' speed by server and model (same fields)."""
        return f"{self.prefix}:metrics:tokens-per-second"

    @property
    def cold_loads(self) -> str:
        """Hash: generations that loaded their model first, JSON `[server, model]` to a count."""
        return f"{self.prefix}:metrics:cold-loads"

    @property
    def bridge_waiting(self) -> str:
        """Hash: each bridge's jobs waiting for a slot, by bridge id, renewed every second;
        a bridge whose liveness key is gone is pruned when read."""
        return f"{self.prefix}:metrics:bridge-waiting"
