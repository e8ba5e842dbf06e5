"""The worker's bootstep: the runtime and the heartbeat start with the worker, before it takes
any task, and stop with it."""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from celery import bootsteps

from workers import runtime as worker_runtime
from workers.contract.protocol import SYSTEM_QUEUES
from workers.heartbeat import HeartbeatThread
from workers.mesh import MeshNodes
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


def server_id_from_queues(queue_names: list[str]) -> str:
    """The server id is the one queue this worker consumes (`-Q mac-1`)."""
    candidates = sorted(name for name in queue_names if name not in SYSTEM_QUEUES)
    if len(candidates) != 1:
        raise RuntimeError(
            f"a server worker consumes exactly one server queue (-Q <server-id>), got {queue_names}"
        )
    return candidates[0]


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Starts the runtime and heartbeat with the worker; removes both on stop."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: HeartbeatThread | None = None
        self.mesh: MeshNodes | None = None
        self.booted_at = time.time()  # before the pool or the consumer can begin a task

    def start(self, worker: Any) -> None:
        settings = WorkerSettings()
        if settings.mesh_nodes:
            self.mesh = MeshNodes(settings, self.booted_at)
            self.mesh.start()
            return
        server_id = settings.server_id or server_id_from_queues(
            list(worker.app.amqp.queues.consume_from)
        )
        rt = WorkerRuntime.build(settings, server_id)
        worker_runtime.install(rt)
        concurrency = int(worker.concurrency)
        capacity = min(settings.capacity or concurrency, concurrency)
        if settings.capacity and settings.capacity > concurrency:
            # More slots than threads: jobs would wait in the queue, counted as running.
            log.warning(
                "server=%s capacity %d exceeds the worker's concurrency %d: using %d",
                server_id, settings.capacity, concurrency, concurrency,
            )  # fmt: skip
        self.thread = HeartbeatThread(rt, capacity, self.booted_at)
        self.thread.start()
        log.info(
            "server=%s worker up: %s=%s capacity=%d",
            server_id, rt.backend.kind, rt.backend.address, capacity,
        )  # fmt: skip

    def stop(self, worker: Any) -> None:
        if self.mesh is not None:
            self.mesh.stop()
            self.mesh = None
        if self.thread is not None:
            self.thread.stop()
            log.info("server=%s worker down: record removed", self.thread.rt.server_id)
            self.thread = None
        rt = worker_runtime.uninstall()
        if rt is not None:
            rt.close()

    # A warm shutdown stops the step, a cold one terminates it: the record goes either way.
    shutdown = terminate = stop
