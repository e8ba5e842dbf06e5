"""Every Redis key of the system, built in one place (the table in the architecture page)."""

from __future__ import annotations

DEFAULT_PREFIX = "ollama-cloud"


class Keys:
    """Builds the key names under one prefix, so several fleets can share a Redis."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    # Fleet: written by each worker's heartbeat.
    @property
    def servers(self) -> str:
        """Set of server ids that have beaten at least once (records expire; ids are pruned)."""
        return f"{self.prefix}:servers"

    def server(self, server_id: str) -> str:
        """Hash with TTL: the server record."""
        return f"{self.prefix}:server:{server_id}"

    @property
    def last_seen(self) -> str:
        """Sorted set: each server's last heartbeat time, kept after its record expires."""
        return f"{self.prefix}:servers:last-seen"

    def worker_client(self, server_id: str) -> str:
        """The name a server's worker gives its Redis connections (CLIENT SETNAME): while any
        is open the worker process lives; all closed at once means it died."""
        return f"{self.prefix}:worker:{''.join(server_id.split())}"

    def inflight(self, server_id: str) -> str:
        """Set of job ids running on a server: a set, not a counter, so it cannot drift."""
        return f"{self.prefix}:inflight:{server_id}"

    def breaker(self, server_id: str) -> str:
        """Hash: a server's failures in a row and when its cooldown ends (circuit breaker)."""
        return f"{self.prefix}:breaker:{server_id}"

    @property
    def lost_servers(self) -> str:
        """Set of servers whose jobs were moved away when they stopped beating: their queues
        are purged of stale attempts when they come back."""
        return f"{self.prefix}:servers:lost"

    def latency(self, server_id: str) -> str:
        """Hash of per-model moving averages for a server (generation ms, tokens per second)."""
        return f"{self.prefix}:latency:{server_id}"

    # Ledger: written by the bridge and control.
    def job(self, job_id: str) -> str:
        """Hash: the claimed message, its state, attempt, server and history."""
        return f"{self.prefix}:job:{job_id}"

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
        """List of job ids that ended without a reply for a reason an operator should see."""
        return f"{self.prefix}:jobs:dead"

    @property
    def finished_jobs(self) -> str:
        """Sorted set of finished job ids by finish time, trimmed by the sweep."""
        return f"{self.prefix}:jobs:finished"

    def once_reply(self, job_id: str) -> str:
        """Once-guard: the reply to this message was posted."""
        return f"{self.prefix}:once:reply:{job_id}"

    def once_eq(self, job_id: str) -> str:
        """Once-guard: the EQ score of this message was applied."""
        return f"{self.prefix}:once:eq:{job_id}"

    # Coordination.
    @property
    def slot_events(self) -> str:
        """Pub/sub channel: a slot was freed or a server appeared; the bridge wakes on it."""
        return f"{self.prefix}:events:slots"

    def bridge(self, bridge_id: str) -> str:
        """String with TTL: this bridge is alive (it holds waiting jobs in memory)."""
        return f"{self.prefix}:bridge:{bridge_id}"

    @property
    def bridges(self) -> str:
        """Set of bridge ids ever seen, so recovery knows whose claims on the site are ours."""
        return f"{self.prefix}:bridges"

    @property
    def beat_lock(self) -> str:
        return f"{self.prefix}:lock:beat"

    @property
    def beat_process_lock(self) -> str:
        """String with TTL: the one beat process allowed to send the schedule."""
        return f"{self.prefix}:lock:beat-process"

    @property
    def recover_lock(self) -> str:
        return f"{self.prefix}:lock:recover"

    @property
    def counters(self) -> str:
        """Hash of fleet-wide counters (answered, skipped, rejected, dead) for status and demo."""
        return f"{self.prefix}:counters"
