"""`ollama-cloud status`: the fleet as an operator wants to see it, one row per server."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
from rich.table import Table

from orchestrator.state.fleet import Fleet
from orchestrator.state.ledger import Ledger
from orchestrator.state.redis_codec import text
from workers.contract.keys import Keys


@dataclass(frozen=True)
class ServerRow:
    id: str
    online: bool
    healthy: bool
    location: str
    region: str
    inflight: int
    capacity: int
    queued: int
    latency_ms: float | None
    loaded: list[str]
    models: list[str]
    last_beat_age_s: float | None
    failures: int = 0  # failed in a row (the circuit breaker)
    cooling_s: float = 0.0  # left out of routing this much longer


@dataclass(frozen=True)
class FleetStatus:
    servers: list[ServerRow]
    outcomes: dict[str, int]
    active_jobs: int
    dead_letters: int

    def as_json(self) -> dict[str, Any]:
        return {
            "servers": [asdict(row) for row in self.servers],
            "totals": {
                "online": sum(row.online for row in self.servers),
                "cooling": sum(row.online and row.cooling_s > 0 for row in self.servers),
                "servers": len(self.servers),
                "inflight": sum(row.inflight for row in self.servers),
                "capacity": sum(row.capacity for row in self.servers if row.online),
                "queued": sum(row.queued for row in self.servers),
                "active_jobs": self.active_jobs,
                "dead_letters": self.dead_letters,
                "outcomes": self.outcomes,
            },
        }


def read_status(client: redis.Redis, keys: Keys, lost_after_s: float = 3.0) -> FleetStatus:
    """The fleet, its queues and the ledger's counts, in a few round trips."""
    servers = Fleet(client, keys, lost_after_s=lost_after_s).read()
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for server in servers:
        pipe.llen(server.id)  # the server's Celery queue
        pipe.hgetall(keys.latency(server.id))
        pipe.zscore(keys.last_seen, server.id)
    pipe.zcard(keys.active_jobs)
    pipe.llen(keys.dead_letters)
    replies = pipe.execute()
    rows = []
    for index, server in enumerate(servers):
        queued, latencies, last_seen = replies[3 * index : 3 * index + 3]
        averages = [float(value) for name, value in latencies.items() if text(name).endswith(":ms")]
        last_beat = server.last_beat if server.online else last_seen
        rows.append(
            ServerRow(
                id=server.id,
                online=server.online,
                healthy=server.healthy,
                location=server.location,
                region=server.region,
                inflight=server.inflight,
                capacity=server.capacity,
                queued=int(queued),
                latency_ms=sum(averages) / len(averages) if averages else None,
                loaded=sorted(server.loaded),
                models=sorted(server.models),
                last_beat_age_s=max(0.0, now - float(last_beat)) if last_beat else None,
                failures=server.failures,
                cooling_s=round(server.cooling_s, 1),
            )
        )
    return FleetStatus(
        servers=rows,
        outcomes=Ledger(client, keys).counters(),
        active_jobs=int(replies[-2]),
        dead_letters=int(replies[-1]),
    )


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def status_table(status: FleetStatus) -> Table:
    table = Table(title="ollama-cloud fleet", title_justify="left")
    for column in (
        "",
        "server",
        "location",
        "load",
        "latency",
        "loaded models",
        "heartbeat",
        "queue",
    ):
        table.add_column(column, no_wrap=column in {"", "server", "load"})
    for row in status.servers:
        if not row.online:
            mark, beat = "[red]○[/red]", f"[red]OFFLINE {age(row.last_beat_age_s)}[/red]"
        elif not row.healthy:
            mark, beat = "[yellow]●[/yellow]", f"ollama down, {age(row.last_beat_age_s)}"
        elif row.cooling_s > 0:
            mark = "[yellow]◐[/yellow]"
            beat = (
                f"COOLING {row.cooling_s:.0f}s ({row.failures} failed), {age(row.last_beat_age_s)}"
            )
        elif row.failures:
            mark = "[yellow]◐[/yellow]"
            beat = f"probing after {row.failures} failed, {age(row.last_beat_age_s)}"
        else:
            mark, beat = "[green]●[/green]", age(row.last_beat_age_s)
        table.add_row(
            mark,
            row.id,
            row.location or "-",
            f"{row.inflight}/{row.capacity}" if row.online else f"{row.inflight}/-",
            f"{row.latency_ms:.0f} ms" if row.latency_ms is not None else "-",
            ", ".join(row.loaded) or "-",
            beat,
            str(row.queued),
        )
    totals = status.as_json()["totals"]
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(status.outcomes.items()))
    table.caption = (
        f"{totals['online']}/{totals['servers']} online · "
        + (f"{totals['cooling']} cooling · " if totals["cooling"] else "")
        + f"{totals['inflight']}/{totals['capacity']} slots busy · {totals['queued']} queued · "
        f"{totals['active_jobs']} active jobs · {totals['dead_letters']} dead letters"
        + (f" · {outcomes}" if outcomes else "")
    )
    return table
