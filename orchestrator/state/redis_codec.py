"""Connecting to Redis the one way the orchestrator does: strings in, strings out, retries on."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str) -> redis.Redis:
    """A client that decodes to str and rides out a Redis restart with backoff."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=10,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def texts(values: Iterable[str | bytes]) -> list[str]:
    return [text(value) for value in values]
