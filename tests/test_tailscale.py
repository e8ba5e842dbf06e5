"""The worker on a tailnet: its Tailscale address and name in its record and in `status`, from a
stand-in `tailscale` command on PATH; nothing, and no error, without one; and the same id and
queue when the address changes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from orchestrator.ops.status import read_status, status_table
from orchestrator.services import State
from orchestrator.settings import Settings
from standins import tailscale_cli
from standins.simulator import SimServerSpec, SimulatorFleet
from workers.contract.server_record import ServerRecord
from workers.heartbeat import HeartbeatThread
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings
from workers.tailscale import (
    NOT_ON_TAILNET,
    TailnetAddress,
    TailscaleProbe,
    address_from_status,
    find_cli,
)

MODEL = "llama3.2:3b"
CONNECTED = TailnetAddress(ip="100.101.102.103", name="mac-studio.tail1a2b3c.ts.net")


class Clock:
    """Time that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A folder holding the stand-in `tailscale`, answering as a connected Mac."""
    folder = tmp_path / "bin"
    tailscale_cli.install(folder)
    return folder


@pytest.fixture
def ollama() -> Iterator[str]:
    with SimulatorFleet([SimServerSpec(name="mac-1", models=[MODEL], loaded=[MODEL])]) as fleet:
        yield fleet.urls["mac-1"]


@pytest.fixture
def runtime(
    redis_url: str, ollama: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkerRuntime]:
    monkeypatch.setenv("OLLAMA_CLOUD_REDIS_URL", redis_url)
    monkeypatch.setenv("OLLAMA_CLOUD_OLLAMA_URL", ollama)
    rt = WorkerRuntime.build(WorkerSettings(), "mac-1")
    yield rt
    rt.close()


def probe(folder: Path, clock: Clock | None = None) -> TailscaleProbe:
    return TailscaleProbe("mac-1", search_path=str(folder), clock=clock or Clock())


def status_rows(redis_url: str) -> list[dict[str, Any]]:
    """`ollama-cloud status --json`'s rows."""
    state = State.from_settings(Settings(redis_url=redis_url))
    try:
        rows: list[dict[str, Any]] = read_status(state).as_json()["servers"]
    finally:
        state.close()
    return rows


def status_text(redis_url: str) -> str:
    """`ollama-cloud status` as a wide terminal shows it."""
    state = State.from_settings(Settings(redis_url=redis_url))
    try:
        console = Console(width=200, record=True)
        console.print(status_table(read_status(state)))
    finally:
        state.close()
    return console.export_text()


# What `tailscale status --json` says ---------------------------------------------------------


def test_a_connected_mac_reports_its_first_ipv4_and_magicdns_name(bin_dir: Path) -> None:
    assert find_cli(str(bin_dir)) == str(bin_dir / "tailscale")
    assert probe(bin_dir).address() == CONNECTED


def test_without_magicdns_the_host_name_is_the_name_and_without_ipv4_the_first_address() -> None:
    status = tailscale_cli.status(dns_name="", ips=["fd7a:115c:a1e0::6a01:6667"])
    assert address_from_status(status) == (
        TailnetAddress(ip="fd7a:115c:a1e0::6a01:6667", name="mac-studio"),
        "",
    )


@pytest.mark.parametrize("state", ["Stopped", "NeedsLogin", "Starting", "NoState"])
def test_only_a_running_tailscale_counts(bin_dir: Path, state: str) -> None:
    # A stopped Tailscale still lists its addresses: they do not reach this Mac.
    tailscale_cli.set_answer(bin_dir, backend_state=state)
    assert probe(bin_dir).address() == NOT_ON_TAILNET


def test_an_odd_status_gives_no_address() -> None:
    odd: list[object] = [[], {"BackendState": "Running"}, {"BackendState": "Running", "Self": {}}]
    for status in odd:
        address, why = address_from_status(status)
        assert address == NOT_ON_TAILNET and why
    running = tailscale_cli.status(ips=["not an address", "100.1.2.3"])
    assert address_from_status(running)[0].ip == "100.1.2.3"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"exit_code": 1}, "exited 1: failed to connect to local tailscaled"),
        ({"stdout": "Tailscale is stopped."}, "printed no JSON"),
        ({"hang": True}, "did not answer in 0.5s"),
    ],
)
def test_a_failing_tailscale_gives_no_address_and_one_log_line(
    bin_dir: Path, answer: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    tailscale_cli.set_answer(bin_dir, **answer)
    caplog.set_level(logging.DEBUG, logger="workers.tailscale")
    tailscale = TailscaleProbe("mac-1", search_path=str(bin_dir), timeout_s=0.5, clock=Clock())
    assert tailscale.address() == NOT_ON_TAILNET
    [line] = caplog.records
    assert "server=mac-1 not on a tailnet" in line.getMessage()
    assert reason in line.getMessage()


def test_no_tailscale_command_gives_no_address_and_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="workers.tailscale")
    assert find_cli(str(tmp_path)) is None
    assert probe(tmp_path).address() == NOT_ON_TAILNET
    [line] = caplog.records
    assert line.levelno == logging.DEBUG and "no tailscale command" in line.getMessage()


def test_tailscale_is_asked_at_most_every_30_s(bin_dir: Path) -> None:
    clock = Clock()
    tailscale = probe(bin_dir, clock)
    assert tailscale.address() == CONNECTED
    tailscale_cli.set_answer(bin_dir, backend_state="Stopped")
    clock.now += 29.9
    assert tailscale.address() == CONNECTED  # remembered, not asked again
    clock.now += 0.1
    assert tailscale.address() == NOT_ON_TAILNET


# The record and `status` ----------------------------------------------------------------------


def test_the_record_keeps_its_tailnet_fields_and_an_older_one_reads_without_them() -> None:
    record = ServerRecord(id="mac-1", tailscale_ip=CONNECTED.ip, tailscale_name=CONNECTED.name)
    fields = record.to_hash()
    assert (fields["tailscale_ip"], fields["tailscale_name"]) == (CONNECTED.ip, CONNECTED.name)
    assert ServerRecord.from_hash("mac-1", fields) == record
    del fields["tailscale_ip"], fields["tailscale_name"]
    older = ServerRecord.from_hash("mac-1", fields)
    assert (older.tailscale_ip, older.tailscale_name) == ("", "")


def test_status_shows_each_macs_tailnet_name_and_address(
    runtime: WorkerRuntime, redis_url: str, bin_dir: Path
) -> None:
    HeartbeatThread(runtime, 2, booted_at=0.0, tailnet=probe(bin_dir).address).beat()
    [row] = status_rows(redis_url)
    assert (row["id"], row["online"], row["loaded"]) == ("mac-1", True, [MODEL])
    assert (row["tailscale_ip"], row["tailscale_name"]) == (CONNECTED.ip, CONNECTED.name)

    text = status_text(redis_url)
    assert "tailnet" in text
    assert f"{CONNECTED.name} ({CONNECTED.ip})" in text


def test_a_mac_off_any_tailnet_has_empty_fields_and_no_tailnet_column(
    runtime: WorkerRuntime, redis_url: str, tmp_path: Path
) -> None:
    HeartbeatThread(runtime, 2, booted_at=0.0, tailnet=probe(tmp_path).address).beat()
    [row] = status_rows(redis_url)
    assert (row["tailscale_ip"], row["tailscale_name"]) == ("", "")
    assert "tailnet" not in status_text(redis_url)


def test_a_mac_that_changes_network_keeps_its_id_and_queue(
    runtime: WorkerRuntime, redis_url: str, bin_dir: Path
) -> None:
    clock = Clock()
    heartbeat = HeartbeatThread(runtime, 2, booted_at=0.0, tailnet=probe(bin_dir, clock).address)
    heartbeat.beat()
    before = runtime.redis.hgetall(runtime.keys.server("mac-1"))

    # Another network, and (its node key renewed) another address: seen at the next ask.
    tailscale_cli.set_answer(bin_dir, ips=["100.88.1.2", "fd7a:115c:a1e0::88"])
    heartbeat.beat()
    assert runtime.redis.hget(runtime.keys.server("mac-1"), "tailscale_ip") == CONNECTED.ip
    clock.now += 30
    heartbeat.beat()

    after = runtime.redis.hgetall(runtime.keys.server("mac-1"))
    assert after["tailscale_ip"] == "100.88.1.2"
    assert (before["id"], after["id"]) == ("mac-1", "mac-1")
    assert after["client_name"] == before["client_name"]
    assert runtime.redis.smembers(runtime.keys.servers) == {"mac-1"}
    [row] = status_rows(redis_url)
    assert (row["id"], row["online"], row["tailscale_ip"]) == ("mac-1", True, "100.88.1.2")
    assert json.loads(after["models"]) == [MODEL]
