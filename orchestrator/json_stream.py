"""The objects of one JSON array inside a streamed JSON answer, one at a time, each parsed by
the standard library: a list of tens of megabytes is never held whole, and an element too
large to take is skipped with its first bytes kept (enough for its id)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.messages import leading_fields

# Outside strings: what changes the nesting, and where a string begins.
_STRUCTURE = re.compile(rb'[\[\]{}"]')
# Inside a string: where it may end.
_STRING_END = re.compile(rb'["\\]')
_KEY_OF_OBJECT = re.compile(r'"([A-Za-z_][A-Za-z0-9_-]*)"\s*:\s*\{')
_DECODER = json.JSONDecoder()


class StreamError(ValueError):
    """The stream is not the JSON it should be."""


@dataclass(frozen=True)
class Oversize:
    """An element over the size cap: its first and last bytes, and its whole size."""

    prefix: bytes
    suffix: bytes
    size: int

    def fields(self) -> dict[str, Any]:
        """What its ends tell of it: the complete fields at its start, and the object-valued
        fields whose key is among its last bytes (the site writes `botParams` last)."""
        found = dict(leading_fields(self.prefix.decode("utf-8", "replace")))
        tail = self.suffix.decode("utf-8", "replace")
        for match in _KEY_OF_OBJECT.finditer(tail):
            if match.start() > 0 and tail[match.start() - 1] == "\\":
                continue  # an escaped quote inside a string, not a key
            try:
                value, _ = _DECODER.raw_decode(tail, match.end() - 1)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.setdefault(match.group(1), value)
        return found


class _Scanner:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.buffer = b""
        self.pos = 0
        self.ended = False

    def more(self) -> bool:
        """Append the next chunk; False at the end of the stream."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.ended = True
            return False
        self.buffer += chunk
        return True

    def drop_before(self, keep_from: int) -> int:
        """Forget the bytes before `keep_from` (already handled); returns how many went."""
        self.buffer = self.buffer[keep_from:]
        self.pos -= keep_from
        return keep_from

    def search(self, pattern: re.Pattern[bytes]) -> int:
        """The next match of `pattern` from `pos`, reading on as needed; -1 at the end."""
        while True:
            match = pattern.search(self.buffer, self.pos)
            if match is not None:
                return match.start()
            if not self.more():
                return -1


def array_items(
    chunks: Iterable[bytes], key: str, *, max_item_bytes: int, prefix_bytes: int = 65536
) -> Iterator[dict[str, Any] | Oversize]:
    """Each object of the array under `key` in the top-level object of the stream. Raises
    StreamError when the stream is not JSON of that shape (no such array)."""
    scanner = _Scanner(chunks)
    depth = 0
    last_string = b""  # the last string seen at depth 1: a key, when an array follows it
    in_items = False  # inside the wanted array (at depth 2)
    item_start = -1  # where the current element began in the buffer, or -1
    item_dropped = 0  # bytes of an oversize element already let go
    item_prefix = b""
    item_tail = b""  # the last bytes let go of an oversize element
    found = False
    while True:
        at = scanner.search(_STRUCTURE)
        if at < 0:
            break
        char = scanner.buffer[at : at + 1]
        if char == b'"':
            end = _string_end(scanner, at + 1)
            if depth == 1:
                last_string = scanner.buffer[at + 1 : end]
            scanner.pos = end + 1
        elif char in b"[{":
            if depth == 1 and char == b"[" and last_string == key.encode():
                in_items, found = True, True
            elif in_items and depth == 2 and char == b"{":
                item_start, item_dropped, item_prefix = at, 0, b""
            depth += 1
            scanner.pos = at + 1
        else:
            depth -= 1
            scanner.pos = at + 1
            if in_items and depth == 2 and item_start >= 0:
                size = item_dropped + at + 1 - item_start
                if item_dropped:
                    tail = (item_tail + scanner.buffer[: at + 1])[-prefix_bytes:]
                    yield Oversize(item_prefix, tail, size)
                else:
                    yield _parse(scanner.buffer[item_start : at + 1])
                scanner.drop_before(at + 1)
                item_start = -1
            elif in_items and depth == 1:
                in_items = False
        if item_start >= 0 and scanner.pos - item_start > max_item_bytes:
            # Too large to take: keep its start, let the rest go as it is read.
            if not item_dropped:
                item_prefix = scanner.buffer[item_start : item_start + prefix_bytes]
            item_tail = (item_tail + scanner.buffer[item_start : scanner.pos])[-prefix_bytes:]
            item_dropped += scanner.drop_before(scanner.pos) - item_start
            item_start = 0
        elif item_start < 0 and scanner.pos > prefix_bytes:
            scanner.drop_before(scanner.pos)
    if not found:
        raise StreamError(f"no {key!r} array in the answer")
    if depth != 0:
        raise StreamError("the answer ends before its JSON does")


def _string_end(scanner: _Scanner, pos: int) -> int:
    """Where the string whose text begins at `pos` ends (its closing quote)."""
    scanner.pos = pos
    while True:
        at = scanner.search(_STRING_END)
        if at < 0:
            raise StreamError("the answer ends inside a string")
        if scanner.buffer[at : at + 1] == b'"':
            return at
        # A backslash escapes the next byte, which may not be read yet.
        while len(scanner.buffer) < at + 2:
            if not scanner.more():
                raise StreamError("the answer ends inside a string")
        scanner.pos = at + 2


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise StreamError(f"an element is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StreamError("an element is not an object")
    return value
