"""Time as Ollama's API writes it: Go durations (keep_alive), nanoseconds, RFC 3339 timestamps."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from standins.simulator.errors import ApiError

NS = 1_000_000_000
MAX_DURATION_S = 2**63 / NS
DEFAULT_KEEP_ALIVE_S = 300.0
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: float | str | None) -> float:
    """Ollama's keep_alive: seconds or a Go duration ("5m", "1h30m"); negative = forever."""
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        digits = text.lstrip("+-")
        parts = DURATION_PART.findall(digits)
        if re.fullmatch(r"\d+(\.\d+)?", digits):
            seconds = float(digits)
        elif parts and "".join(number + unit for number, unit in parts) == digits:
            seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
        else:
            raise ApiError(400, f'time: invalid duration "{value}"')
        seconds *= sign
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise ApiError(400, "keep_alive must be a number or a duration")
    # Negative means forever; so does anything past Go's longest duration (about 292 years).
    return math.inf if seconds < 0 or seconds > MAX_DURATION_S else seconds


def rfc3339(epoch: float) -> str:
    if math.isinf(epoch):  # keep_alive < 0: Ollama reports its far-future maximum.
        return "2318-01-01T00:00:00Z"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
