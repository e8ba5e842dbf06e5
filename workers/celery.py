"""The Mac's Celery app: `celery -A workers worker -Q mac-1` finds `app` here, with the
generate task and the heartbeat's bootstep registered.

Settings are read from the environment when Celery first needs them, not at import.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from workers.bootsteps import Heartbeat
from workers.contract import logs
from workers.contract.celery_config import celery_config, log_like_ours, quiet_task_trace
from workers.contract.protocol import SERVER_TASKS
from workers.settings import WorkerSettings
from workers.tasks import register


def worker_defaults() -> dict[str, Any]:
    settings = WorkerSettings()
    return {**celery_config(settings, SERVER_TASKS), "worker_concurrency": settings.concurrency}


logs.install()
app = Celery("workers", set_as_current=False)
app.add_defaults(worker_defaults)
app.steps["worker"].add(Heartbeat)
register(app)
signals.after_setup_logger.connect(quiet_task_trace, weak=False)
log_like_ours(lambda: "worker")
