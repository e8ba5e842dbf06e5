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
        found = leading_fields(self.prefix.decode("utf-8", "replace"))
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
    """A window on the stream: what is still needed of it, read on as asked. An element that
    grows past `max_item` is let go as it is read, only its first and last bytes kept."""

    def __init__(self, chunks: Iterable[bytes], max_item: int, keep: int) -> None:
        self._chunks = iter(chunks)
        self.buffer = b""
        self.pos = 0
        self.max_item = max_item
        self.keep = keep
        self.item_start = -1  # where the element being read began, or -1
        self.skipped = 0  # bytes of it let go (it is oversize when > 0)
        self.prefix = b""
        self.tail = b""
        self.dropped = 0  # bytes let go since the start: an index plus this is absolute

    def begin_item(self, at: int) -> None:
        self.item_start, self.skipped, self.prefix, self.tail = at, 0, b"", b""

    def more(self) -> bool:
        """Read the next chunk, letting go of what is no longer needed; False at the end."""
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        if self.item_start >= 0:
            if not self.skipped and len(self.buffer) - self.item_start > self.max_item:
                self.prefix = self.buffer[self.item_start : self.item_start + self.keep]
            if self.prefix:  # oversize: keep its tail only
                gone = self.buffer[self.item_start : self.pos]
                self.tail = (self.tail + gone)[-self.keep :]
                self.skipped += len(gone)
                self._drop(self.pos)
                self.item_start = 0
        elif self.pos > self.keep:
            self._drop(self.pos)
        self.buffer += chunk
        return True

    def end_item(self, end: int) -> bytes | Oversize:
        """The element that ends at `end` (its closing brace's index, exclusive)."""
        start, self.item_start = self.item_start, -1
        if not self.prefix and end - start > self.max_item:
            self.prefix = self.buffer[start : start + self.keep]
        if not self.prefix:
            return self.buffer[start:end]
        tail = (self.tail + self.buffer[start:end])[-self.keep :]
        return Oversize(self.prefix, tail, self.skipped + end - start)

    def _drop(self, upto: int) -> None:
        self.buffer = self.buffer[upto:]
        self.pos -= upto
        self.dropped += upto

    def search(self, pattern: re.Pattern[bytes]) -> int:
        """The next match of `pattern` from `pos`, reading on as needed; -1 at the end."""
        while True:
            match = pattern.search(self.buffer, self.pos)
            if match is not None:
                return match.start()
            self.pos = len(self.buffer)  # nothing before the end matters to this search
            if not self.more():
                return -1


def array_items(
    chunks: Iterable[bytes], key: str, *, max_item_bytes: int, prefix_bytes: int = 65536
) -> Iterator[dict[str, Any] | Oversize]:
    """Each object of the array under `key` in the top-level object of the stream. Raises
    StreamError when the stream is not JSON of that shape (no such array)."""
    scanner = _Scanner(chunks, max_item_bytes, prefix_bytes)
    depth = 0
    last_string = b""  # the last string seen at depth 1: a key, when an array follows it
    in_items = False  # inside the wanted array (at depth 2)
    found = False
    wanted = key.encode()
    while True:
        at = scanner.search(_STRUCTURE)
        if at < 0:
            break
        char = scanner.buffer[at : at + 1]
        if char == b'"':
            began = at + 1 + scanner.dropped
            end = _string_end(scanner, at + 1)
            if depth == 1:  # a key, if it is short and still in the window
                start = began - scanner.dropped
                last_string = scanner.buffer[start:end] if 0 <= start < end <= start + 64 else b""
            scanner.pos = end + 1
            continue
        scanner.pos = at + 1
        if char in b"[{":
            if depth == 1 and char == b"[" and last_string == wanted:
                in_items, found = True, True
            elif in_items and depth == 2 and char == b"{":
                scanner.begin_item(at)
            depth += 1
            continue
        depth -= 1
        if in_items and depth == 2 and scanner.item_start >= 0:
            item = scanner.end_item(at + 1)
            yield item if isinstance(item, Oversize) else _parse(item)
        elif in_items and depth == 1:
            in_items = False
    if not found:
        raise StreamError(f"no {key!r} array in the answer")
    if depth != 0:
        raise StreamError("the answer ends before its JSON does")


def _string_end(scanner: _Scanner, start: int) -> int:
    """Where the string whose text begins at `start` ends (its closing quote); the scanner's
    window may move meanwhile, so the index is in its buffer as it is then."""
    scanner.pos = start
    while True:
        at = scanner.search(_STRING_END)
        if at < 0:
            raise StreamError("the answer ends inside a string")
        if scanner.buffer[at : at + 1] == b'"':
            return at
        # A backslash escapes the next byte, which may not be read yet.
        scanner.pos = at
        while len(scanner.buffer) < scanner.pos + 2:
            if not scanner.more():
                raise StreamError("the answer ends inside a string")
        scanner.pos += 2


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise StreamError(f"an element is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StreamError("an element is not an object")
    return value
