"""Flower, started as the Procfile starts it, shows each Mac's queue with its depth: the broker
URL keeps its `redis://` scheme, which Flower reads, while every process still takes its items
through the broker's gate (workers.contract.broker)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from celery import Celery
from flower.utils.broker import Broker, RedisBase, RedisSsl

import orchestrator.celery
import workers.celery
from standins.embedded_redis import EmbeddedRedis, free_port
from standins.processes import ManagedProcess, python_command
from standins.simulator import SimServerSpec
from standins.stack import LocalStack
from standins.waiting import wait_for
from workers.contract.broker import Channel, Transport
from workers.contract.celery_config import celery_config
from workers.contract.keys import Keys
from workers.contract.protocol import GENERATE_TASK, ChatRequest, ChatTurn, GenerateJob
from workers.contract.settings import CelerySettings

MODELS = ["llama3.2:3b"]
QUEUES = ("mac-1", "mac-2")
DEPTHS = {"mac-1": 3, "mac-2": 5}
REDIS_PASSWORD = "redis-secret-4f1c"
FLOWER_USER, FLOWER_PASSWORD = "operator", "flower-secret-9d2e"
AUTH = (FLOWER_USER, FLOWER_PASSWORD)


def sender_app(redis_url: str, key_prefix: str) -> Celery:
    """A Celery app as the bridge makes one: it publishes and sends remote control."""
    sender = Celery("flower-checks", set_as_current=False)
    sender.conf.update(celery_config(CelerySettings(redis_url=redis_url, key_prefix=key_prefix)))
    return sender


# The broker URL and its transport, in this process -------------------------------------------


@pytest.mark.parametrize(
    ("redis_url", "scheme", "flower_broker"),
    [
        ("redis://:pw@127.0.0.1:6390/2", "redis", RedisBase),
        ("rediss://:pw@127.0.0.1:6390/0?ssl_cert_reqs=none", "rediss", RedisSsl),
    ],
)
def test_the_broker_url_keeps_its_scheme_and_the_gated_transport(
    redis_url: str, scheme: str, flower_broker: type[Any]
) -> None:
    app = sender_app(redis_url, "fleet-a")
    with app.connection() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.transport.Channel is Channel
        uri = connection.as_uri(include_password=True)
        assert urlsplit(uri).scheme == scheme
        assert "pw" not in connection.as_uri()
    # What Flower builds from it: a Redis client that counts under the fleet's broker prefix.
    broker = Broker(
        uri,
        broker_options=app.conf.broker_transport_options,
        broker_use_ssl=app.conf.broker_use_ssl,
    )
    assert isinstance(broker, flower_broker)
    assert broker.password == "pw"
    assert broker.broker_prefix + "mac-1" == Keys("fleet-a").broker_queue("mac-1")


def test_the_apps_operators_start_use_the_gated_transport() -> None:
    """`celery -A workers` (each Mac) and `celery -A orchestrator` (control, beat, Flower)."""
    for app in (workers.celery.app, orchestrator.celery.app):
        with app.connection() as connection:
            assert isinstance(connection.transport, Transport)
            assert urlsplit(connection.as_uri()).scheme == "redis"


# Flower with two Macs ------------------------------------------------------------------------


@dataclass
class FlowerFleet:
    stack: LocalStack
    flower: ManagedProcess
    url: str

    def get(self, path: str, auth: tuple[str, str] | None = AUTH) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=auth, timeout=10.0)

    def queue_lengths(self) -> dict[str, int]:
        answer = self.get("/api/queues/length")
        answer.raise_for_status()
        return {queue["name"]: queue["messages"] for queue in answer.json()["active_queues"]}

    def worker_of_queue(self) -> dict[str, str]:
        """Each queue a worker consumes, with that worker's name, as Flower last inspected."""
        self.stack.check_alive()  # Flower's process among the stack's
        try:
            answer = self.get("/api/workers?refresh=1")
        except httpx.TransportError:  # not listening yet
            return {}
        if answer.status_code != 200:
            return {}
        return {
            queue["name"]: name
            for name, info in answer.json().items()
            for queue in info.get("active_queues") or []
        }


@pytest.fixture(scope="module")
def fleet() -> Iterator[FlowerFleet]:
    specs = [SimServerSpec(name=name, models=MODELS, loaded=MODELS) for name in QUEUES]
    with EmbeddedRedis(password=REDIS_PASSWORD) as redis_server:
        stack = LocalStack(specs, shared_redis=redis_server)
        try:
            for spec in specs:
                stack.start_sim(spec.name, wait=False)
            for spec in specs:
                stack.start_worker(spec.name, wait=False)
            stack.wait_online(list(QUEUES))
            port = free_port()
            # Basic auth from the environment, as the Procfile gives it: never on the command line.
            argv = python_command(
                "-m", "celery", "-A", "orchestrator", "flower",
                "--address=127.0.0.1", f"--port={port}",
            )  # fmt: skip
            env = {**stack.env(), "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
            log_path = stack.work_dir / "logs" / "flower.log"
            flower = stack.processes.add(ManagedProcess("flower", argv, env, log_path))
            running = FlowerFleet(stack, flower, f"http://127.0.0.1:{port}")
            wait_for(
                lambda: set(QUEUES) <= set(running.worker_of_queue()),
                60, interval=0.2, what="flower knowing both workers",
            )  # fmt: skip
            yield running
        finally:
            stack.stop()


@pytest.mark.e2e
def test_flower_shows_each_macs_queue_with_its_depth(fleet: FlowerFleet) -> None:
    stack = fleet.stack
    # The Macs' workers still take their items through the gate: poison is dead-lettered.
    stack.redis.lpush(stack.keys.broker_queue("mac-1"), "this is not json {")

    def dead_lettered() -> list[dict[str, Any]]:
        stack.check_alive()
        entries = stack.redis.lrange(stack.keys.broker_dead_letters, 0, -1)
        return [letter for letter in map(json.loads, entries) if letter["queue"] == "mac-1"]

    [letter] = wait_for(dead_lettered, 30, what="the poison item dead-lettered")
    assert letter["reason"].startswith("not JSON")

    # Each Mac stops taking from its queue, so what is sent there stays: a known depth.
    workers = fleet.worker_of_queue()
    sender = sender_app(stack.redis_url, stack.key_prefix)
    try:
        for queue in QUEUES:
            replies = sender.control.cancel_consumer(
                queue, destination=[workers[queue]], reply=True, timeout=10
            )
            assert replies == [{workers[queue]: {"ok": f"no longer consuming from {queue}"}}]
        for queue, depth in DEPTHS.items():
            for index in range(depth):
                job = GenerateJob(
                    job_id=f"depth-{queue}-{index}",
                    attempt=1,
                    server_id=queue,
                    request=ChatRequest(
                        model=MODELS[0], messages=[ChatTurn(role="user", content="hello")]
                    ),
                    dispatched_at=time.time(),
                )
                sender.send_task(
                    GENERATE_TASK,
                    args=[job.model_dump(mode="json")],
                    queue=queue,
                    argsrepr=job.argsrepr(),
                )
    finally:
        sender.close()

    # A worker's read under way as it stopped may take an item and put it back: wait it out.
    lengths = wait_for(
        lambda: (found := fleet.queue_lengths()) == DEPTHS and found,
        30, interval=0.1, what=f"flower reporting {DEPTHS}",
    )  # fmt: skip
    assert lengths == {queue: stack.redis.llen(stack.keys.broker_queue(queue)) for queue in QUEUES}

    # The Broker page: each queue with its depth, the broker's URL without its password.
    page = fleet.get("/broker")
    assert page.status_code == 200
    for queue, depth in DEPTHS.items():
        row = re.search(rf'<tr id="{queue}">\s*<td>{queue}</td>\s*<td[^>]*>([^<]*)</td>', page.text)
        assert row is not None and row.group(1).strip() == str(depth), queue
    assert f"redis://:**@127.0.0.1:{stack.redis_server.port}/0" in page.text
    assert REDIS_PASSWORD not in page.text

    log = fleet.flower.log_path.read_text(errors="replace")
    assert "Broker: redis://" in log
    assert REDIS_PASSWORD not in log and FLOWER_PASSWORD not in log


@pytest.mark.e2e
def test_flower_asks_for_basic_auth_except_on_its_health_and_metrics(fleet: FlowerFleet) -> None:
    for path in ("/api/queues/length", "/api/workers", "/broker", "/"):
        assert fleet.get(path, auth=None).status_code == 401, path
        assert fleet.get(path, auth=(FLOWER_USER, "wrong")).status_code == 401, path
    assert fleet.get("/api/queues/length").status_code == 200
    # Flower does not guard these two: a word, and counts by task and worker name.
    health = fleet.get("/healthcheck", auth=None)
    assert (health.status_code, health.text) == (200, "OK")
    metrics = fleet.get("/metrics", auth=None)
    assert metrics.status_code == 200
    assert "flower_events_total" in metrics.text
    assert REDIS_PASSWORD not in metrics.text and FLOWER_PASSWORD not in metrics.text
    assert "hello" not in metrics.text


@pytest.mark.e2e
def test_flower_reads_the_broker_through_the_gate_too(fleet: FlowerFleet) -> None:
    """Flower is the one listener to Celery's events here (the Macs run without gossip): an
    event that is no message envelope is dead-lettered by its consumer, which goes on."""
    stack = fleet.stack
    topic = f"{stack.keys.broker_prefix}/0.celeryev/worker.heartbeat"
    assert stack.redis.publish(topic, json.dumps([1, 2, 3])) == 1

    def dead_lettered() -> list[dict[str, Any]]:
        entries = stack.redis.lrange(stack.keys.broker_dead_letters, 0, -1)
        letters = map(json.loads, entries)
        return [letter for letter in letters if letter["queue"].startswith("celeryev.")]

    [letter] = wait_for(dead_lettered, 30, what="the event dead-lettered by flower")
    assert letter["reason"] == "not a message envelope: a JSON list"
    assert fleet.flower.running
    assert fleet.get("/api/queues/length").status_code == 200
