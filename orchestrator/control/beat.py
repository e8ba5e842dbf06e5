"""Celery beat's scheduler, with a lock in Redis: however many beats are started, exactly one
sends the schedule's tasks; the others stand by and take over when its lock expires."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import redis
from celery import beat

from orchestrator.services import State
from orchestrator.settings import Settings
from workers.contract.scripts import register

log = logging.getLogger(__name__)

LOCK_TTL_S = 5.0  # renewed by every send (the sweep's is every second)


class LockedScheduler(beat.Scheduler):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        state = State.from_settings(Settings.load())
        self._redis = state.redis
        self._key = state.keys.beat_process_lock
        self._hold = register(self._redis, "hold_lock")
        self._release = register(self._redis, "release_lock")
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._holding: bool | None = None
        super().__init__(*args, **kwargs)

    def holds_lock(self) -> bool:
        try:
            held = bool(self._hold(keys=[self._key], args=[self._owner, int(LOCK_TTL_S * 1000)]))
        except redis.RedisError as exc:
            log.warning("beat: lock unreadable (%s): nothing sent", exc)
            return False
        if held != self._holding:
            if held:
                log.info("beat: this beat holds the lock and sends the schedule")
            else:
                log.warning("beat: another beat holds the lock; this one stands by")
            self._holding = held
        return held

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if self.holds_lock():
            super().apply_entry(entry, producer=producer)

    def close(self) -> None:
        try:
            self._release(keys=[self._key], args=[self._owner])
        except redis.RedisError as exc:
            log.warning("beat: lock not released (%s); it expires by itself", exc)
        self._redis.close()
        super().close()
