"""`ollama-cloud status`: the fleet as an operator wants to see it, one row per server."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from orchestrator.domain.servers import ServerView
from orchestrator.ops.durations import ago
from orchestrator.services import State
from orchestrator.settings import Settings


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
    backend: str = "ollama"
    loading: list[str] = field(default_factory=list)
    model_slots: dict[str, int] = field(default_factory=dict)  # a model's own, where it has
    fault: str = ""  # why its model server does not answer
    tailscale_ip: str = ""  # where its worker's machine is on the tailnet, when it is on one
    tailscale_name: str = ""
    tokens_per_s: float | None = None  # mean of its per-model moving averages
    inflight_models: dict[str, int] = field(default_factory=dict)  # its jobs' models, counted


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


def read_status(state: State) -> FleetStatus:
    """The fleet, its queues and the ledger's counts, in a few round trips."""
    servers = state.fleet.read()
    now = time.time()
    reports = state.fleet.reports([server.id for server in servers])
    rows = []
    for server, report in zip(servers, reports, strict=True):
        last_beat = server.last_beat if server.online else report.last_seen
        rows.append(
            ServerRow(
                id=server.id,
                online=server.online,
                healthy=server.healthy,
                location=server.location,
                region=server.region,
                inflight=server.inflight,
                capacity=server.capacity,
                queued=report.queued,
                latency_ms=report.latency_ms,
                loaded=sorted(server.loaded),
                models=sorted(server.models),
                last_beat_age_s=max(0.0, now - float(last_beat)) if last_beat else None,
                failures=server.failures,
                cooling_s=round(server.cooling_s, 1),
                backend=server.backend,
                fault=server.fault,
                loading=sorted(server.loading),
                model_slots=dict(sorted(server.model_slots.items())),
                tailscale_ip=server.tailscale_ip,
                tailscale_name=server.tailscale_name,
                tokens_per_s=mean_tokens_per_s(server),
                inflight_models=dict(sorted(server.inflight_models.items())),
            )
        )
    active_jobs, dead_letters = state.ledger.totals()
    return FleetStatus(
        servers=rows,
        outcomes=state.ledger.counters(),
        active_jobs=active_jobs,
        dead_letters=dead_letters,
    )


def mean_tokens_per_s(server: ServerView) -> float | None:
    """The server's generation speed over the models it has run, as control measured it."""
    speeds = [speed.tokens_per_s for speed in server.speeds.values() if speed.tokens_per_s]
    return round(sum(speeds) / len(speeds), 1) if speeds else None


def loaded_text(row: ServerRow) -> str:
    loaded = ", ".join(row.loaded) or "-"
    return f"{loaded} (loading {', '.join(row.loading)})" if row.loading else loaded


def tailnet_text(row: ServerRow) -> str:
    """Its tailnet name and address, as the worker's `tailscale` told them ("-" off one)."""
    if row.tailscale_name and row.tailscale_ip:
        return f"{row.tailscale_name} ({row.tailscale_ip})"
    return row.tailscale_name or row.tailscale_ip or "-"


def status_table(status: FleetStatus) -> Table:
    table = Table(title="ollama-cloud fleet", title_justify="left")
    # A fleet without Tailscale gets no column for it.
    on_tailnet = any(row.tailscale_ip or row.tailscale_name for row in status.servers)
    for column in (
        "",
        "server",
        "location",
        *(["tailnet"] if on_tailnet else []),
        "load",
        "latency",
        "loaded models",
        "heartbeat",
        "queue",
    ):
        table.add_column(column, no_wrap=column in {"", "server", "load"})
    for row in status.servers:
        if not row.online:
            mark, beat = "[red]○[/red]", f"[red]OFFLINE {ago(row.last_beat_age_s)}[/red]"
        elif not row.healthy:
            down = escape(row.fault) if row.fault else f"{row.backend} down"
            mark, beat = "[yellow]●[/yellow]", f"{down}, {ago(row.last_beat_age_s)}"
        elif row.cooling_s > 0:
            mark = "[yellow]◐[/yellow]"
            beat = (
                f"COOLING {row.cooling_s:.0f}s ({row.failures} failed), {ago(row.last_beat_age_s)}"
            )
        elif row.failures:
            mark = "[yellow]◐[/yellow]"
            beat = f"probing after {row.failures} failed, {ago(row.last_beat_age_s)}"
        else:
            mark, beat = "[green]●[/green]", ago(row.last_beat_age_s)
        table.add_row(
            mark,
            row.id,
            row.location or "-",
            *([escape(tailnet_text(row))] if on_tailnet else []),
            f"{row.inflight}/{row.capacity}" if row.online else f"{row.inflight}/-",
            f"{row.latency_ms:.0f} ms" if row.latency_ms is not None else "-",
            loaded_text(row),
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


def status_command(
    settings: Settings, *, as_json: bool, watch: threading.Event | None = None
) -> int:
    """Print the fleet once (a table, or JSON), or, given `watch`, refresh it every second
    until that is set."""
    state = State.from_settings(settings)
    try:
        if as_json:
            print(json.dumps(read_status(state).as_json()))
        elif watch is None:
            Console().print(status_table(read_status(state)))
        else:
            with Live(status_table(read_status(state)), auto_refresh=False) as live:
                while not watch.wait(1.0):
                    live.update(status_table(read_status(state)), refresh=True)
    finally:
        state.close()
    return 0
