"""The tasks in one process, fast: Celery's test app (pytest-celery's `celery_app`, configured
by `celery_config`) and Celery's embedded test worker (`start_worker`) on the test Redis, with
the Mac's bootstep, consuming a server's queue and `control`; the local site queue and a
simulated Ollama on loopback; the bridge stepped by hand. pytest-celery's own worker fixtures
run in containers, which these machines do not have; the real subprocess workers are the
end-to-end tests' business."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import WorkController

from orchestrator.bridge import Bridge
from orchestrator.control.tasks import register as register_control
from orchestrator.domain.job import JobKind, Outcome, score_job_id
from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.services import Services, close_process_services
from orchestrator.settings import Settings
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.ledger import Claim, Reservation
from standins import SAMPLE_ENTITIES_DIR
from standins.embedded_redis import EmbeddedRedis
from standins.http_server import ThreadedServer
from standins.local_queue import QueueStore, build_app
from standins.simulator import SimServerSpec, SimulatorFleet
from standins.waiting import wait_for
from workers.bootsteps import Heartbeat
from workers.contract.celery_config import celery_config as system_celery_config
from workers.contract.job import JobState
from workers.contract.protocol import (
    CONTROL_QUEUE,
    DELIVER_TASK,
    GENERATE_TASK,
    SWEEP_TASK,
    ChatRequest,
    ChatTurn,
    ErrorKind,
    GenerateJob,
)
from workers.contract.settings import CelerySettings
from workers.tasks import register as register_generate

SERVER = "mac-1"
MODEL = "llama3.2:3b"
BRIDGE = "bridge-test"


# pytest-celery's fixtures, set to the system's own Celery settings on the test Redis.


@pytest.fixture(scope="session")
def celery_config(redis_server: EmbeddedRedis) -> dict[str, Any]:
    config = system_celery_config(CelerySettings(redis_url=redis_server.url))
    # A worker that waits a tenth of a second at a time for tasks stops that quickly.
    transport = {**config["broker_transport_options"], "polling_interval": 0.1}
    return {
        **config,
        "broker_transport_options": transport,
        "worker_hijack_root_logger": False,  # pytest keeps the logs
    }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[SiteQueueClient]:
    store = QueueStore(tmp_path / "queue.sqlite3")
    with ThreadedServer(build_app(store)) as server, SiteQueueClient(server.url) as client:
        yield client
    store.close()


@pytest.fixture
def ollama() -> Iterator[str]:
    spec = SimServerSpec(name=SERVER, models=[MODEL], loaded=[MODEL], tokens_per_second=0)
    with SimulatorFleet([spec]) as fleet:
        yield fleet.urls[SERVER]


@pytest.fixture
def settings(
    redis_url: str, site: SiteQueueClient, ollama: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The environment the Mac's bootstep and the control tasks read their settings from."""
    environment = {
        "REDIS_URL": redis_url,
        "QUEUE_URL": site.base_url,
        "ENTITIES_DIR": str(SAMPLE_ENTITIES_DIR),
        "OLLAMA_URL": ollama,
        "SERVER_ID": SERVER,
        "START_LOST_AFTER_S": "0.2",
    }
    for name, value in environment.items():
        monkeypatch.setenv(f"OLLAMA_CLOUD_{name}", value)
    yield Settings.load(bridge_id=BRIDGE)
    close_process_services()


@pytest.fixture
def app(celery_app: Celery, settings: Settings) -> Celery:
    """The test app with the system's tasks and the Mac's heartbeat bootstep."""
    register_generate(celery_app)
    register_control(celery_app)
    celery_app.steps["worker"].add(Heartbeat)
    return celery_app


@pytest.fixture
def worker(app: Celery, services: Services) -> Iterator[WorkController]:
    """One thread of work consuming the server's queue and `control`. No ping on start: the
    system keeps no task results, and the ping waits for one."""
    with start_worker(
        app, queues=[SERVER, CONTROL_QUEUE], perform_ping_check=False, loglevel="WARNING"
    ) as running:
        yield running
    # Stopped, the Mac's bootstep takes its heartbeat and its record away.
    assert not [t for t in threading.enumerate() if t.name == f"heartbeat-{SERVER}"]
    assert [server.online for server in services.fleet.read()] == [False]


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = Services.build(settings)
    yield built
    built.close()


def message(message_id: str, text: str = "what is wisdom?") -> NewMessage:
    return NewMessage(
        id=message_id,
        text=text,
        username="ada",
        botParams=BotParams(entity="the-eternal", humanUsername="ada"),
    )


def accepted(worker: WorkController, task: str) -> int:
    """How many `task`s this process's workers have taken (Celery counts per process)."""
    return int(worker.state.total_count.get(task, 0))


def settled(worker: WorkController, task: str, count: int) -> bool:
    """`count` of `task` taken, and nothing running or waiting any more."""
    return (
        accepted(worker, task) >= count
        and not worker.state.active_requests
        and not worker.state.reserved_requests
    )


def replies_to(site: SiteQueueClient, message_id: str) -> list[dict[str, Any]]:
    return [
        comment
        for comment in site.comments_after(0)
        if comment.get("message-type") == "AI" and comment.get("replyTo") == message_id
    ]


def finished(services: Services, job_id: str) -> bool:
    job = services.ledger.get(job_id)
    return job is not None and job.state.finished


def test_a_message_goes_from_claim_to_one_reply_and_one_score_through_the_tasks(
    app: Celery, worker: WorkController, services: Services, site: SiteQueueClient
) -> None:
    wait_for(lambda: any(s.online for s in services.fleet.read()), 10, what="the heartbeat")
    site.post_comment(message("m-1"))
    bridge = Bridge(services, app)

    def both_finished() -> bool:
        bridge.step()  # the one slot takes the reply, then the score
        return finished(services, "m-1") and finished(services, score_job_id("m-1"))

    wait_for(both_finished, 20, what="the reply and the score")
    score = services.ledger.get(score_job_id("m-1"))
    assert score is not None
    assert (score.kind, score.outcome, score.server_id) == (JobKind.SCORE, Outcome.SCORED, SERVER)
    assert score.score is not None and 1 <= score.score <= 100
    [scored] = [c for c in site.comments_after(0) if c["id"] == "m-1"]
    assert scored["eqScore"] == score.score
    assert site.stats()["globalScore"] == score.score
    job = services.ledger.get("m-1")
    assert job is not None
    assert (job.state, job.outcome, job.server_id, job.attempt) == (
        JobState.DONE,
        Outcome.ANSWERED,
        SERVER,
        1,
    )
    assert job.result is None  # kept only until delivered
    assert len(replies_to(site, "m-1")) == 1
    assert services.fleet.inflight_jobs(SERVER) == set()


def dispatched_job(services: Services, job_id: str, attempt: int) -> None:
    """A job the bridge placed on the server as `attempt`."""
    raw = message(job_id).wire() | {"timestamp": 1}
    assert services.ledger.record_claim(job_id, raw, BRIDGE, 60, scored=False) is Claim.WRITTEN
    taken = services.ledger.reserve(
        job_id, SERVER, 4, attempt=attempt, entity="the-eternal", model=MODEL, priority=5,
        bridge_id=BRIDGE,
    )  # fmt: skip
    assert taken is Reservation.TAKEN


def generate_payload(job_id: str, attempt: int) -> dict[str, Any]:
    request = ChatRequest(model=MODEL, messages=[ChatTurn(role="user", content="hi")])
    job = GenerateJob(
        job_id=job_id, attempt=attempt, server_id=SERVER, request=request, dispatched_at=time.time()
    )
    return job.model_dump(mode="json")


def test_a_stale_attempt_is_not_run_and_its_late_result_changes_nothing(
    app: Celery, worker: WorkController, services: Services, site: SiteQueueClient
) -> None:
    site.post_comment(message("moved"))
    site.claim_next(BRIDGE)
    dispatched_job(services, "moved", attempt=2)
    stats_before = services.ledger.get("moved")
    delivered = accepted(worker, DELIVER_TASK)
    app.send_task(GENERATE_TASK, args=[generate_payload("moved", attempt=1)], queue=SERVER)
    # The stale result travels to delivery too, which frees nothing the job still holds.
    wait_for(lambda: settled(worker, DELIVER_TASK, delivered + 1), 10, what="the delivery")
    job = services.ledger.get("moved")
    assert job is not None and stats_before is not None
    assert (job.state, job.attempt, job.started_at, job.result) == (
        JobState.DISPATCHED,
        2,
        stats_before.started_at,
        None,
    )
    assert services.fleet.inflight_jobs(SERVER) == {"moved"}
    assert replies_to(site, "moved") == []


def test_a_result_delivered_twice_posts_one_reply(
    app: Celery, worker: WorkController, services: Services, site: SiteQueueClient
) -> None:
    site.post_comment(message("twice"))
    site.claim_next(BRIDGE)
    dispatched_job(services, "twice", attempt=1)
    result = {
        "job_id": "twice",
        "attempt": 1,
        "server_id": SERVER,
        "outcome": {"ok": True, "text": "Patience is a kind of wisdom."},
        "started_at": time.time(),
        "finished_at": time.time(),
    }
    delivered = accepted(worker, DELIVER_TASK)
    for _ in range(2):
        app.send_task(DELIVER_TASK, args=[result], queue=CONTROL_QUEUE)
    wait_for(lambda: settled(worker, DELIVER_TASK, delivered + 2), 10, what="both deliveries")
    assert [reply["text"] for reply in replies_to(site, "twice")] == [
        "Patience is a kind of wisdom."
    ]
    job = services.ledger.get("twice")
    assert job is not None and job.outcome is Outcome.ANSWERED


def test_the_sweep_task_sends_again_a_job_no_worker_began(
    app: Celery, services: Services, worker: WorkController
) -> None:
    """The job's task was lost (never put on the server's queue): the sweep finds it not begun
    after `start_lost_after_s`, and queues it for any bridge with its attempt on record."""
    dispatched_job(services, "lost-task", attempt=1)
    wait_for(lambda: any(s.online for s in services.fleet.read()), 10, what="the heartbeat")

    def swept() -> bool:
        app.send_task(SWEEP_TASK, queue=CONTROL_QUEUE)
        job = services.ledger.get("lost-task")
        return job is not None and job.state is JobState.RETRYING

    wait_for(swept, 10, interval=0.3, what="the sweep to move the job")
    job = services.ledger.get("lost-task")
    assert job is not None
    assert [(entry.server_id, entry.error_kind) for entry in job.attempts] == [
        (SERVER, ErrorKind.NOT_STARTED)
    ]
    assert services.fleet.inflight_jobs(SERVER) == set()
