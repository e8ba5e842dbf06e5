"""The Mac's side: the Ollama client's error mapping, and a real worker's heartbeat record and
liveness."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from orchestrator.state.fleet import Fleet
from standins.embedded_redis import free_port
from standins.processes import ManagedProcess, python_command
from standins.simulator import SimServerSpec, SimulatorFleet
from standins.waiting import wait_for
from workers.backends.ollama import OllamaClient
from workers.contract.keys import Keys
from workers.contract.protocol import ChatRequest, ChatTurn
from workers.errors import (
    BadRequest,
    ContextOverflow,
    GenerationTimeout,
    ModelMissing,
    OllamaError,
    ServerBusy,
    ServerError,
    ServerHung,
    ServerUnavailable,
)
from workers.heartbeat import HeartbeatThread
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings
from workers.tailscale import NOT_ON_TAILNET

MODEL = "llama3.2:3b"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorFleet]:
    spec = SimServerSpec(name="mac-1", models=[MODEL, "qwen2.5:7b"], loaded=[MODEL], parallel=1)
    with SimulatorFleet([spec]) as fleet:
        yield fleet


def chat(text: str, model: str = MODEL, num_predict: int = 8) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[
            ChatTurn(role="system", content="Be brief."),
            ChatTurn(role="user", content=text),
        ],
        max_tokens=num_predict,
    )


def faults(fleet: SimulatorFleet, **body: object) -> None:
    httpx.post(f"{fleet.urls['mac-1']}/sim/faults", json=body).raise_for_status()


def test_chat_returns_text_and_timings(sim: SimulatorFleet) -> None:
    with OllamaClient(sim.urls["mac-1"]) as client:
        outcome = client.chat(chat("hello", num_predict=12))
        assert outcome.ok
        assert len(outcome.text.split()) == 12
        assert outcome.timings.eval_count == 12
        assert outcome.timings.wall_ms > 0
        assert client.installed_models() == [MODEL, "qwen2.5:7b"]
        assert MODEL in client.loaded_models()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"fail_next": 1, "status": 500}, ServerError),
        ({"fail_next": 1, "status": 503}, ServerBusy),
        ({"fail_next": 1, "status": 400}, ContextOverflow),
    ],
)
def test_http_errors_map_to_our_types(
    sim: SimulatorFleet, fault: dict[str, object], error: type[OllamaError]
) -> None:
    faults(sim, **fault)
    with OllamaClient(sim.urls["mac-1"]) as client, pytest.raises(error):
        client.chat(chat("hello"))


def test_an_option_the_server_refuses_is_a_bad_request_not_a_server_fault(
    sim: SimulatorFleet,
) -> None:
    request = chat("hello").model_copy(update={"max_tokens": "many"})  # no server takes it
    with OllamaClient(sim.urls["mac-1"]) as client, pytest.raises(BadRequest) as refused:
        client.chat(request)
    assert not refused.value.kind.server_fault


def test_unknown_model_is_model_missing(sim: SimulatorFleet) -> None:
    with OllamaClient(sim.urls["mac-1"]) as client, pytest.raises(ModelMissing):
        client.chat(chat("hello", model="nope:1b"))


def test_refused_connection_fails_fast() -> None:
    unused = f"http://127.0.0.1:{free_port()}"
    with OllamaClient(unused, connect_timeout=1) as client, pytest.raises(ServerUnavailable):
        client.chat(chat("hello"))


def test_no_answer_within_read_timeout(sim: SimulatorFleet) -> None:
    faults(sim, hang_next=1)
    client = OllamaClient(sim.urls["mac-1"], read_timeout=0.3)
    with client, pytest.raises(GenerationTimeout):
        client.chat(chat("hello"))


def test_a_loaded_model_with_no_first_token_is_hung(sim: SimulatorFleet) -> None:
    faults(sim, hang_next=1)
    client = OllamaClient(sim.urls["mac-1"], read_timeout=30)
    with client, pytest.raises(ServerHung, match=r"no first token in 0\.3s"):
        client.chat(chat("hello"), first_token_s=0.3)


def test_tokens_that_stop_are_a_hang(sim: SimulatorFleet) -> None:
    faults(sim, stall_next=1, stall_after_tokens=3)
    with OllamaClient(sim.urls["mac-1"], read_timeout=30) as client:
        with pytest.raises(ServerHung, match=r"tokens stopped for 0\.3s"):
            client.chat(chat("hello", num_predict=50), first_token_s=5, stall_s=0.3)
        # The stalled request freed its slot: the next one is answered whole.
        assert client.chat(chat("hello", num_predict=12), stall_s=5).ok


def test_a_reply_over_the_cap_is_cut_off(sim: SimulatorFleet) -> None:
    client = OllamaClient(sim.urls["mac-1"])
    with client, pytest.raises(ServerError, match="over the 2048-byte cap"):
        client.chat(chat("hello", num_predict=400), max_reply_bytes=2048)


def start_worker(
    redis_url: str, ollama_url: str, queue: str, tmp_path: Path, **settings: str
) -> ManagedProcess:
    env = {
        name: value for name, value in os.environ.items() if not name.startswith("OLLAMA_CLOUD_")
    }
    env.update(
        OLLAMA_CLOUD_REDIS_URL=redis_url,
        OLLAMA_CLOUD_OLLAMA_URL=ollama_url,
        OLLAMA_CLOUD_LOCATION="desk",
        OLLAMA_CLOUD_HEARTBEAT_TTL_S="3",
    )
    env.update({f"OLLAMA_CLOUD_{name.upper()}": value for name, value in settings.items()})
    argv = python_command(
        "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-c", "2",
        "-n", f"{queue}@%h", "--without-mingle", "--without-gossip",
    )  # fmt: skip
    worker = ManagedProcess(queue, argv, env, tmp_path / f"{queue}.log")
    worker.start()
    return worker


@pytest.mark.e2e
def test_heartbeat_record_and_clean_removal(
    sim: SimulatorFleet, redis_url: str, tmp_path: Path
) -> None:
    keys = Keys()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    worker = start_worker(redis_url, sim.urls["mac-1"], "mac-1", tmp_path)
    try:
        record = wait_for(
            lambda: client.hgetall(keys.server("mac-1")), timeout=30, what="the server record"
        )
        assert record["id"] == "mac-1"
        assert record["ollama_url"] == sim.urls["mac-1"]
        assert record["capacity"] == "2"  # the worker's concurrency
        assert record["location"] == "desk"
        assert json.loads(record["models"]) == [MODEL, "qwen2.5:7b"]
        assert MODEL in json.loads(record["loaded"])
        assert record["ollama_healthy"] == "1"
        assert 0 < client.pttl(keys.server("mac-1")) <= 3000
        assert client.smembers(keys.servers) == {"mac-1"}
    finally:
        returncode = worker.stop()
    assert returncode == 0, worker.log_tail()
    # A clean stop removes the record at once, not at the end of its TTL.
    assert client.exists(keys.server("mac-1")) == 0
    assert client.zscore(keys.last_seen, "mac-1") is not None
    client.close()


@pytest.mark.e2e
def test_worker_without_ollama_is_recorded_unhealthy(redis_url: str, tmp_path: Path) -> None:
    keys = Keys()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    worker = start_worker(redis_url, f"http://127.0.0.1:{free_port()}", "mac-2", tmp_path)
    try:
        record = wait_for(
            lambda: client.hgetall(keys.server("mac-2")), timeout=30, what="the server record"
        )
        assert record["ollama_healthy"] == "0"
        assert json.loads(record["models"]) == []
    finally:
        worker.stop()
        client.close()


@pytest.mark.e2e
def test_a_killed_worker_is_seen_gone_before_its_record_expires(
    sim: SimulatorFleet, redis_url: str, tmp_path: Path
) -> None:
    """Its connections to Redis close with it: gone about a beat after its last one, while a
    live worker whose beat is late is not taken for gone, nor is a dead one whose beat is not
    yet due."""
    keys = Keys()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    fleet = Fleet(client, keys, lost_after_s=3.0)
    workers = [
        start_worker(redis_url, sim.urls["mac-1"], queue, tmp_path) for queue in ("mac-1", "mac-2")
    ]
    try:
        wait_for(lambda: len(fleet.read()) == 2, timeout=30, what="both records")
        # Right after a Redis (re)start nobody is judged by connections.
        wait_for(lambda: int(client.info("server")["uptime_in_seconds"]) >= 3, 10, 0.2)
        now, servers = fleet.read_at()
        assert [server.client_name for server in servers] == [
            keys.worker_client("mac-1"),
            keys.worker_client("mac-2"),
        ]
        assert {server.beat_interval_s for server in servers} == {1.0}
        # Live: however late their beats are taken to be, a connection of each is open.
        assert fleet.gone_workers(servers, now + 30) == []
        workers[0].kill()
        _, servers = fleet.read_at()
        assert fleet.gone_workers(servers, servers[0].last_beat + 0.5) == []  # no beat due yet
        gone = wait_for(
            lambda: fleet.gone_workers(*reversed(fleet.read_at())), 10, what="seen gone"
        )
        assert [server.id for server in gone] == ["mac-1"]
        # Seen before the record's TTL (3 s) would have ended it.
        assert client.pttl(keys.server("mac-1")) > 0
        assert fleet.remove_gone(gone[0])
        assert client.exists(keys.server("mac-1")) == 0
        assert not fleet.remove_gone(gone[0])  # once
        assert client.exists(keys.server("mac-2")) == 1
    finally:
        for worker in workers:
            worker.stop()
        client.close()


@pytest.mark.e2e
def test_capacity_is_never_more_than_the_worker_runs_at_once(
    sim: SimulatorFleet, redis_url: str, tmp_path: Path
) -> None:
    keys = Keys()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    worker = start_worker(redis_url, sim.urls["mac-1"], "mac-1", tmp_path, capacity="5")
    try:
        record = wait_for(lambda: client.hgetall(keys.server("mac-1")), 30, what="the record")
        assert record["capacity"] == "2"  # -c 2: more slots would only queue
        wait_for(lambda: "exceeds the worker's concurrency" in worker.log_tail(), 10)
    finally:
        worker.stop()
        client.close()


def test_a_worker_that_cannot_reach_redis_says_what_to_do_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A Mac with no VPN reaches the orchestrator's Redis through an SSH tunnel on its own
    # loopback: with the tunnel down, nothing answers there, and the worker says so once.
    port = free_port()
    settings = WorkerSettings(
        redis_url=f"redis://127.0.0.1:{port}/0", heartbeat_interval_s=0.05, server_id="mac-9"
    )
    rt = WorkerRuntime.build(settings, "mac-9")
    thread = HeartbeatThread(rt, capacity=1, booted_at=0.0, tailnet=lambda: NOT_ON_TAILNET)
    with caplog.at_level("WARNING", logger="workers.heartbeat"):
        thread.start()
        try:
            wait_for(
                lambda: sum("heartbeat failed" in r.message for r in caplog.records) >= 3,
                15,
                what="three failed beats",
            )
        finally:
            thread.stop()
            rt.close()
    hints = [record.message for record in caplog.records if "SSH tunnel" in record.message]
    assert len(hints) == 1, hints
    assert f"ssh -N -L {port}:127.0.0.1:6379" in hints[0]
