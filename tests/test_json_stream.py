"""The streamed reading of the site's message list: every chunking gives the same messages,
an element over the cap is let go as it is read (its ends kept), a list of tens of megabytes
is never held whole, and a stream of the wrong shape is an error, never a silent nothing."""

from __future__ import annotations

import json
import random
import tracemalloc
from typing import Any

import pytest

from orchestrator.json_stream import Oversize, StreamError, array_items


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def messages(count: int) -> list[dict[str, Any]]:
    rng = random.Random(3)
    return [
        {
            "id": f"m{n}",
            "text": 'say "hi" \\ ' * rng.randint(0, 40) + "é😀\n",
            "priority": 10**30,  # larger than any C integer: the standard library's JSON takes it
            "context": [f"ada: line {line}" for line in range(n % 7)],
            "botParams": {"status": "processing", "claimedBy": "bridge"},
        }
        for n in range(count)
    ]


@pytest.mark.parametrize("size", [1, 3, 7, 64, 1000, 10**7])
def test_every_chunking_gives_the_same_messages_and_the_same_oversize_one(size: int) -> None:
    listed = messages(30)
    big = {"id": "big", "text": 'x"botParams": {"a": 1}' + "z" * 20_000, "botParams": {"b": 2}}
    answer = {"version": "1.0.1", "messages": [*listed, big], "globalScore": 7}
    data = json.dumps(answer, ensure_ascii=False).encode()
    items = list(
        array_items(chunked(data, size), "messages", max_item_bytes=5000, prefix_bytes=200)
    )
    assert items[:30] == listed
    oversize = items[30]
    assert isinstance(oversize, Oversize)
    assert oversize.size == len(json.dumps(big, ensure_ascii=False).encode())
    assert len(oversize.prefix) == len(oversize.suffix) == 200
    # Its first bytes give its id; its last, its bot parameters (the text's look-alike skipped).
    assert oversize.fields() == {"id": "big", "botParams": {"b": 2}}


def test_an_element_of_many_megabytes_is_let_go_as_it_is_read() -> None:
    big = {"id": "huge", "text": "w" * (20 * 1024 * 1024), "botParams": {"status": "pending"}}
    data = json.dumps({"messages": [big, {"id": "after"}]}).encode()
    chunks = (data[start : start + 65536] for start in range(0, len(data), 65536))
    tracemalloc.start()
    try:
        items = list(array_items(chunks, "messages", max_item_bytes=1 << 20, prefix_bytes=4096))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(items[0], Oversize) and items[0].fields()["id"] == "huge"
    assert items[1] == {"id": "after"}
    assert peak < 4 * 1024 * 1024  # about the cap and a chunk, never the 20 MB


@pytest.mark.parametrize(
    "answer",
    [b"[1, 2]", b"{}", b'{"messages": "none"}', b'{"messages": [{"a": 1}', b'{"messages": [1'],
)
def test_a_stream_of_the_wrong_shape_is_an_error(answer: bytes) -> None:
    with pytest.raises(StreamError):
        list(array_items([answer], "messages", max_item_bytes=1000))
