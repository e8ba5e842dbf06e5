"""The bridge: claims messages while the fleet has room, ledgers them, places and dispatches."""

from __future__ import annotations

import threading

from orchestrator.bridge.loop import Bridge
from orchestrator.celery import make_app
from orchestrator.services import Services
from orchestrator.settings import Settings

__all__ = ["Bridge", "run_bridge"]


def run_bridge(settings: Settings, stop: threading.Event) -> None:
    """One bridge process: its services and Celery app, run until `stop` is set."""
    services = Services.build(settings)
    try:
        Bridge(services, make_app(settings)).run(stop)
    finally:
        services.close()
