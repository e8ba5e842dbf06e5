"""Log lines that cannot be forged: one event is one line, whatever a value from outside holds.

Ids, entity and model names, texts and error bodies come from the site, a peer or a model
server; a newline in one would start a second, forged line, and a NUL would make `grep` take the
log for binary. Every record of a process is made one line as it is created (its exception's
traceback included), with such characters written as escapes.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from datetime import UTC, datetime
from typing import Any

# Line breaks and every other control character, C1 included, the Unicode line and paragraph
# separators, and lone surrogates (which cannot be written as UTF-8). A tab stays.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: str) -> str:
    """`text` with every line break and control character escaped."""
    return _UNSAFE.sub(_escape, text)


def excerpt(raw: bytes | str, limit: int = 200) -> str:
    """The start of something from outside, safe to log and to keep: at most `limit`
    characters, undecodable bytes and control characters escaped."""
    text = raw[: limit * 4].decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    cut = text[:limit]
    return one_line(cut) + ("…" if len(text) > limit else "")


class _OneLineRecord(logging.LogRecord):
    """A record whose message (and traceback) is rendered once, as one escaped line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            message = super().getMessage()
        except Exception:  # a bad format string: show what was given rather than lose it
            message = f"{self.msg!r} % {self.args!r}"
        if self.exc_info and self.exc_info[1] is not None:
            message += "\n" + "".join(traceback.format_exception(*self.exc_info)).rstrip()
            self.exc_info = None
            self.exc_text = None
        if self.stack_info:
            message += "\n" + self.stack_info
            self.stack_info = None
        self.msg = one_line(message)
        self.args = None


def install() -> None:
    """Make every log record of this process one escaped line (idempotent)."""
    logging.setLogRecordFactory(_OneLineRecord)


# Formats ------------------------------------------------------------------------------------

LOG_FORMATS = ("text", "json")
# The log format's setting (CelerySettings.log_format), named here for a process too small to
# load the settings (the supervisor).
LOG_FORMAT_VARIABLE = "OLLAMA_CLOUD_LOG_FORMAT"
# Keys whose values are names or ids: kept as text in JSON even when they look like numbers.
TEXT_KEYS = frozenset({"job", "server", "runner_up", "bridge", "entity", "model", "tried", "queue"})
_WORD = re.compile(r"[a-z][a-z_]*")
_PAIR = re.compile(r"([a-z][a-z0-9_]*)=(\S+)")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_MAX_EVENT_WORDS = 3


def _value(key: str, text: str) -> str | int | float:
    if key in TEXT_KEYS or not _NUMBER.fullmatch(text):
        return text
    return float(text) if "." in text else int(text)


def fields(message: str) -> dict[str, str | int | float]:
    """The `key=value` fields at the head of a line, and its event (the words before them):
    `route job=m-1 attempt=1 server=mac-2 finish=0.80s: ...` gives event `route`, job `m-1`,
    attempt 1, server `mac-2`, finish `0.80s`. Reading stops at the first word that is not a
    field, or after a value that ends with `:`, so the text that follows (an error, a reason)
    never adds or changes a field."""
    found: dict[str, str | int | float] = {}
    words = message.split(" ")
    event: list[str] = []
    index = 0
    while index < len(words) and len(event) < _MAX_EVENT_WORDS and _WORD.fullmatch(words[index]):
        event.append(words[index])
        index += 1
    for word in words[index:]:
        pair = _PAIR.fullmatch(word)
        if pair is None:
            break
        key, value = pair.groups()
        last = value.endswith(":")
        value = value.removesuffix(":")
        if key not in found and value:
            found[key] = _value(key, value)
        if last:
            break
    if found and event:
        found = {"event": " ".join(event), **found}
    return found


def _utc_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`2026-05-01T12:00:00.250Z INFO bridge orchestrator.bridge.placement: route job=...`:
    time in UTC (lines from Macs in other time zones sort together), level, process, logger,
    the event. `process`: what the lines say they came from (bridge, control, worker...)."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        process = self.process or record.processName
        line = f"{_utc_time(record)} {record.levelname} {process} {record.name}: "
        record.message = one_line(record.getMessage())  # as logging's own formatter leaves it
        return line + record.message


class JsonFormatter(TextFormatter):
    """One JSON object per line: ts, level, logger, process, msg, and the line's fields (job,
    attempt, server, ...) under their own keys."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.message = one_line(record.getMessage())
        entry: dict[str, object] = {
            "ts": _utc_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process or record.processName,
            "msg": message,
        }
        for key, value in fields(message).items():
            entry.setdefault(key, value)
        # ASCII only: no character of a value can end the line or be taken for another.
        return json.dumps(entry, ensure_ascii=True, default=str)


def formatter(log_format: str, process: str = "") -> logging.Formatter:
    return JsonFormatter(process) if log_format == "json" else TextFormatter(process)


def configure(level: str | int, log_format: str = "text", process: str = "") -> None:
    """Log this process's records to stderr, one line each, as text or JSON."""
    install()
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format, process))
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level, handlers=[handler], force=True
    )


def reformat(logger: logging.Logger, log_format: str, process: str) -> None:
    """Give every handler of `logger` (one Celery set up) our format."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(log_format, process))
