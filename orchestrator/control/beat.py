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

from orchestrator.settings import load_settings
from orchestrator.state.redis_codec import connect
from workers.contract.keys import Keys

log = logging.getLogger(__name__)

LOCK_TTL_S = 5.0  # renewed by every send (the sweep's is every second)

# Hold the lock: renew it if it is ours, take it if it is free.
HOLD = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockedScheduler(beat.Scheduler):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = load_settings()
        self._redis = connect(settings.redis_url)
        self._key = Keys(settings.key_prefix).beat_process_lock
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._holding: bool | None = None
        super().__init__(*args, **kwargs)

    def holds_lock(self) -> bool:
        try:
            held = bool(self._redis.eval(HOLD, 1, self._key, self._owner, int(LOCK_TTL_S * 1000)))
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
            self._redis.eval(RELEASE, 1, self._key, self._owner)
        except redis.RedisError as exc:
            log.warning("beat: lock not released (%s); it expires by itself", exc)
        self._redis.close()
        super().close()
