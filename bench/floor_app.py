"""A bare two-hop Celery pipeline of no-op tasks, on the same settings as the system's workers:
one task on a server queue whose worker sends one task to `control`. The ceiling we cannot beat."""

from __future__ import annotations

import os

import redis
from celery import Celery, signals

from workers.contract.celery_config import celery_config, quiet_task_trace
from workers.settings import CelerySettings

SERVER_QUEUE = "floor-server"
CONTROL_QUEUE = "floor-control"
DONE_KEY = "bench:floor:done"

app = Celery("floor", set_as_current=False)
app.add_defaults(lambda: {**celery_config(CelerySettings()), "worker_concurrency": 4})
signals.after_setup_logger.connect(quiet_task_trace, weak=False)
_redis: redis.Redis | None = None


@app.task(name="bench.hop_server", acks_late=True, ignore_result=True)
def hop_server(index: int) -> None:
    app.send_task("bench.hop_control", args=[index], queue=CONTROL_QUEUE)


@app.task(name="bench.hop_control", acks_late=True, ignore_result=True)
def hop_control(index: int) -> None:
    global _redis  # noqa: PLW0603
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["OLLAMA_CLOUD_REDIS_URL"])
    _redis.incr(DONE_KEY)
