from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from hypothesis import settings

from standins.embedded_redis import EmbeddedRedis
from standins.simulator import SimServerSpec, SimulatorFleet
from tests.fleet_checks import StartFleet

# Property tests try 150 examples each; the edit loop (`make quick`) tries fewer.
settings.register_profile("full", max_examples=150)
settings.register_profile("quick", max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without our settings in the environment."""
    for name in list(os.environ):
        if name.startswith("OLLAMA_CLOUD_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server on a free port for the whole session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The private Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def start_fleet() -> Iterator[StartFleet]:
    """Starts a private fleet for a test that counts or changes state; stops it afterwards."""
    fleets: list[SimulatorFleet] = []

    def start(*specs: SimServerSpec) -> SimulatorFleet:
        fleet = SimulatorFleet(list(specs)).start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()
