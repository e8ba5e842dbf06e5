"""The orchestrator's Celery app: `celery -A orchestrator worker -Q control` and
`celery -A orchestrator beat` find `app` here. Settings are read when Celery first needs them."""

from __future__ import annotations

from typing import Any

import click
from celery import Celery, signals

from orchestrator.control.tasks import register
from orchestrator.services import close_process_services
from orchestrator.settings import Settings
from workers.contract import logs
from workers.contract.celery_config import celery_config, log_like_ours, quiet_task_trace
from workers.contract.protocol import CONTROL_QUEUE, CONTROL_TASKS, RECOVER_TASK, SWEEP_TASK


def control_config(settings: Settings) -> dict[str, Any]:
    return {
        **celery_config(settings, CONTROL_TASKS),
        "worker_concurrency": settings.control_concurrency,
        # Beat's schedule is a handful of short intervals: kept in memory, no file left behind;
        # a lock in Redis lets exactly one beat send it.
        "beat_scheduler": "orchestrator.control.beat:LockedScheduler",
        "beat_schedule": {
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval_s,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.sweep_interval_s * 5},
            },
            "recover": {
                "task": RECOVER_TASK,
                "schedule": settings.recover_interval_s,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.recover_interval_s},
            },
        },
    }


def process_name() -> str:
    """`beat` or `control`, as the command that runs this app says."""
    command = click.get_current_context(silent=True)
    return "beat" if command is not None and command.info_name == "beat" else "control"


def make_app(settings: Settings) -> Celery:
    """An app configured now from explicit settings (the bridge, the demo, tests)."""
    configured = Celery("orchestrator", set_as_current=False)
    configured.conf.update(control_config(settings))
    register(configured)
    return configured


logs.install()
app = Celery("orchestrator", set_as_current=False)
app.add_defaults(lambda: control_config(Settings.load()))
register(app)
signals.after_setup_logger.connect(quiet_task_trace, weak=False)
log_like_ours(process_name)


def close_on_shutdown(**_: Any) -> None:
    close_process_services()


signals.worker_shutdown.connect(close_on_shutdown, weak=False)
