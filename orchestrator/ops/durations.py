"""Durations as an operator reads them: `12s`, `3m`, `1.5h`."""

from __future__ import annotations

SECONDS_SHOWN_UP_TO = 90
MINUTES_SHOWN_UP_TO = 5400


def span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < SECONDS_SHOWN_UP_TO:
        return f"{seconds:.0f}s"
    if seconds < MINUTES_SHOWN_UP_TO:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{span(seconds)} ago"
