"""Log lines that cannot be forged: one event is one line, whatever a value from outside holds.

Ids, entity and model names, texts and error bodies come from the site, a peer or a model
server; a newline in one would start a second, forged line, and a NUL would make `grep` take the
log for binary. Every record of a process is made one line as it is created (its exception's
traceback included), with such characters written as escapes.
"""

from __future__ import annotations

import logging
import re
import traceback
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
