"""The Celery settings the design depends on, shared by the server workers and control."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import signals

from workers.contract import logs
from workers.contract.broker import register_transport
from workers.contract.keys import Keys
from workers.contract.protocol import CONTROL_QUEUE, DELIVER_TASK
from workers.contract.settings import CelerySettings

CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


def broker_ssl(redis_url: str) -> dict[str, Any] | None:
    """For a `rediss://` URL, the TLS options Celery wants beside it, read from the URL's own
    query (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`), so the one URL that
    redis-py takes as it is serves the broker too. Certificates are required unless it says
    otherwise."""
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        return None
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    options: dict[str, Any] = {
        "ssl_cert_reqs": CERT_REQS.get(query.get("ssl_cert_reqs", "required").lower())
    }
    if options["ssl_cert_reqs"] is None:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in query:
            options[name] = query[name]
    return options


def celery_config(
    settings: CelerySettings, accepted_tasks: Iterable[str] | None = None
) -> dict[str, Any]:
    """`accepted_tasks`: the only tasks this app's consumers take from their queues; anything
    else there is a poison item for the broker's dead-letter list (None: any task).

    Every process builds its app from this, so each has the broker's transport registered
    under the URL's own scheme before Celery opens a connection."""
    register_transport()
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_s,
        # Celery's queues and bookkeeping under the fleet's prefix: fleets sharing a Redis
        # never take each other's work.
        "global_keyprefix": Keys(settings.key_prefix).broker_prefix,
        "max_item_bytes": settings.max_broker_item_bytes,
        "dead_letters_kept": settings.broker_dead_letters_kept,
    }
    if accepted_tasks is not None:
        transport["accepted_tasks"] = sorted(accepted_tasks)
    tls = broker_ssl(settings.redis_url)
    return {
        **({"broker_use_ssl": tls} if tls else {}),
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        # JSON only: a message can never make a worker run code (no pickle).
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A task is acknowledged after it ran; a lost worker's tasks go back to the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_ignore_result": True,
        "task_routes": {DELIVER_TASK: {"queue": CONTROL_QUEUE}},
        "task_default_queue": CONTROL_QUEUE,
        # Work is waiting on HTTP, not on the CPU: threads, not processes.
        "worker_pool": "threads",
        "worker_disable_rate_limits": True,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
    }


def quiet_task_trace(**_: Any) -> None:
    """Celery logs each task's arrival and whole return value, and httpx each request, at INFO;
    ours log one line per event instead, with the job and server ids."""
    for name in ("celery.app.trace", "celery.worker.strategy", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_like_ours(process_name: Callable[[], str]) -> None:
    """Celery's own lines, as ours: one line each, in the format of OLLAMA_CLOUD_LOG_FORMAT
    (text, or one JSON object per line), saying which process they came from. Python's
    warnings are log lines too, those of a worker's start included. With JSON, the worker's
    banner is not printed: every line it writes is an object (`celery --quiet` does the same
    for beat's)."""

    def log_from_the_start(**_: Any) -> None:
        # Celery sets up its logging only after its first checks, which may warn.
        logs.configure(logging.INFO, CelerySettings().log_format, process_name())
        logging.captureWarnings(True)

    def use_our_format(logger: logging.Logger, **_: Any) -> None:
        logs.install()
        logs.reformat(logger, CelerySettings().log_format, process_name())
        logging.captureWarnings(True)

    def no_banner_with_json(instance: Any, **_: Any) -> None:
        if CelerySettings().log_format == "json":
            instance.quiet = True

    signals.celeryd_init.connect(log_from_the_start, weak=False)
    signals.after_setup_logger.connect(use_our_format, weak=False)
    signals.after_setup_task_logger.connect(use_our_format, weak=False)
    signals.celeryd_after_setup.connect(no_banner_with_json, weak=False)
