"""The Ollama simulator, through real sockets: the official client, /v1, timing, slots, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standins.embedded_redis import free_port
from standins.simulator import (
    SimServerSpec,
    SimulatorFleet,
    parse_server_spec,
    serve,
)
from standins.waiting import wait_for
from tests.fleet_checks import StartFleet

SMALL, BIG = "llama3.2:3b", "qwen2.5:7b"
Connect = Callable[[str], ollama.Client]


@pytest.fixture(scope="module")
def shared() -> Iterator[SimulatorFleet]:
    """An instant server for tests that only read, or whose effects do not matter to others."""
    spec = SimServerSpec(name="main", models=[SMALL, BIG], loaded=[SMALL])
    with SimulatorFleet([spec]) as fleet:
        yield fleet


@pytest.fixture
def main_url(shared: SimulatorFleet) -> str:
    return shared.urls["main"]


@pytest.fixture(scope="module")
def main_client(shared: SimulatorFleet) -> Iterator[httpx.Client]:
    """One kept-alive client for the many requests of a property test."""
    with httpx.Client(base_url=shared.urls["main"], timeout=10) as client:
        yield client


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Official clients for a test, closed afterwards (an open pool is a ResourceWarning)."""
    with contextlib.ExitStack() as clients:
        yield lambda url: clients.enter_context(ollama.Client(host=url))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def stats(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/sim/stats").json()
    return answer


def chat_body(text: str, model: str = SMALL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": user(text), "stream": False, **extra}


# The official client ------------------------------------------------------------------------


def test_list_ps_version(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    listed = client.list()
    assert [model.model for model in listed.models] == [SMALL, BIG]
    first = listed.models[0]
    assert first.digest is not None and re.fullmatch(r"[0-9a-f]{64}", first.digest)
    assert first.size and first.size > 1_000_000_000
    assert first.details is not None and first.details.format == "gguf"
    assert first.details.parameter_size == "3B"
    running = client.ps()
    assert [model.model for model in running.models] == [SMALL]
    assert running.models[0].context_length == 8192
    assert running.models[0].expires_at is not None
    assert httpx.get(f"{main_url}/api/version").json()["version"].count(".") == 2
    root = httpx.get(main_url)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert httpx.head(main_url).status_code == 200


def test_chat_is_deterministic_and_counts_tokens(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    options = {"num_predict": 12}
    first = client.chat(model=SMALL, messages=user("hello"), options=options)
    again = client.chat(model=SMALL, messages=user("hello"), options=options)
    other = client.chat(model=SMALL, messages=user("goodbye"), options=options)
    assert first.message.role == "assistant"
    assert first.message.content == again.message.content != other.message.content
    assert first.message.content is not None and len(first.message.content.split()) == 12
    assert (first.eval_count, first.done, first.done_reason) == (12, True, "length")
    assert first.model == SMALL
    assert first.prompt_eval_count == 2  # "hello" is 5 characters, about 2 tokens
    assert first.load_duration is not None and 0 < first.load_duration < 10_000_000  # warm: ms
    assert first.total_duration is not None and first.eval_duration is not None


def test_chat_streaming_matches_non_streaming(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    options = {"num_predict": 7}
    whole = client.chat(model=BIG, messages=user("stream me"), options=options)
    chunks = list(client.chat(model=BIG, messages=user("stream me"), options=options, stream=True))
    assert [chunk.done for chunk in chunks] == [False] * 7 + [True]
    assert "".join(chunk.message.content or "" for chunk in chunks) == whole.message.content
    last = chunks[-1]
    assert (last.eval_count, last.done_reason, last.message.content) == (7, "length", "")
    assert last.created_at is not None and last.created_at.endswith("Z")


def test_generate_streaming_and_not(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    whole = client.generate(model=SMALL, prompt="write", options={"num_predict": 5})
    assert whole.response is not None and len(whole.response.split()) == 5
    assert (whole.eval_count, whole.done_reason) == (5, "length")
    chunks = list(
        client.generate(model=SMALL, prompt="write", options={"num_predict": 5}, stream=True)
    )
    assert "".join(chunk.response or "" for chunk in chunks) == whole.response
    assert chunks[-1].done and chunks[-1].eval_count == 5
    default = client.generate(model=SMALL, prompt="no limit given")
    assert default.eval_count == 128  # Ollama's default num_predict


def test_generate_stream_defaults_to_true_on_the_wire(main_url: str) -> None:
    answer = httpx.post(
        f"{main_url}/api/generate",
        json={"model": SMALL, "prompt": "x", "options": {"num_predict": 3}},
    )
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [line["done"] for line in lines] == [False, False, False, True]


def test_stop_sequence_cuts_the_text(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    full = client.chat(model=SMALL, messages=user("cut me"), options={"num_predict": 20})
    assert full.message.content is not None
    third_word = full.message.content.split()[2]
    cut = client.chat(
        model=SMALL, messages=user("cut me"), options={"num_predict": 20, "stop": [third_word]}
    )
    assert cut.done_reason == "stop"
    assert (
        cut.message.content
        == full.message.content[: full.message.content.index(third_word)].rstrip()
    )


def test_empty_messages_just_load_the_model(start_fleet: StartFleet, connect: Connect) -> None:
    fleet = start_fleet(SimServerSpec(name="cold", models=[SMALL], load_seconds=0.2))
    client = connect(fleet.urls["cold"])
    started = time.monotonic()
    loaded = client.chat(model=SMALL, messages=[])
    assert time.monotonic() - started >= 0.2
    assert (loaded.done, loaded.done_reason, loaded.message.content) == (True, "load", "")
    assert [model.model for model in client.ps().models] == [SMALL]
    unloaded = client.generate(model=SMALL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert client.ps().models == []


def test_pull_installs_a_model(start_fleet: StartFleet, connect: Connect) -> None:
    fleet = start_fleet(SimServerSpec(name="pull", models=[SMALL]))
    client = connect(fleet.urls["pull"])
    statuses = [progress.status for progress in client.pull("phi3:mini", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull("gemma2:2b").status == "success"
    assert [model.model for model in client.list().models] == [SMALL, "phi3:mini", "gemma2:2b"]
    assert client.show("phi3:mini").details is not None
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("absent:1b")
    assert missing.value.status_code == 404


# The OpenAI-compatible API --------------------------------------------------------------------


def test_openai_models_and_completion(main_url: str) -> None:
    models = httpx.get(f"{main_url}/v1/models").json()
    assert models["object"] == "list"
    assert [(entry["id"], entry["object"], entry["owned_by"]) for entry in models["data"]] == [
        (SMALL, "model", "library"),
        (BIG, "model", "library"),
    ]
    body = {"model": SMALL, "messages": user("hi"), "max_tokens": 6, "temperature": 0.2}
    completion = httpx.post(f"{main_url}/v1/chat/completions", json=body).json()
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("chatcmpl-")
    choice = completion["choices"][0]
    assert (choice["index"], choice["message"]["role"], choice["finish_reason"]) == (
        0,
        "assistant",
        "length",
    )
    assert len(choice["message"]["content"].split()) == 6
    assert completion["usage"]["completion_tokens"] == 6
    assert completion["usage"]["total_tokens"] == completion["usage"]["prompt_tokens"] + 6
    again = httpx.post(f"{main_url}/v1/chat/completions", json=body).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    warmer = httpx.post(f"{main_url}/v1/chat/completions", json={**body, "temperature": 0.9}).json()
    assert warmer["choices"][0]["message"]["content"] != choice["message"]["content"]
    word = choice["message"]["content"].split()[1]
    stopped = httpx.post(f"{main_url}/v1/chat/completions", json={**body, "stop": word}).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert word not in stopped["choices"][0]["message"]["content"]


def test_openai_streaming_is_sse(main_url: str) -> None:
    body = {"model": SMALL, "messages": user("hi"), "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{main_url}/v1/chat/completions", json=body) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in answer.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 4 + ["length"]
    streamed = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
    whole = httpx.post(f"{main_url}/v1/chat/completions", json={**body, "stream": False}).json()
    assert streamed == whole["choices"][0]["message"]["content"]


def test_openai_errors_have_openai_shape(main_url: str) -> None:
    answer = httpx.post(
        f"{main_url}/v1/chat/completions", json={"model": "nope:1b", "messages": user("x")}
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == 'model "nope:1b" not found, try pulling it first'


# Load time, eviction and speed ------------------------------------------------------------------


def test_cold_load_then_warm_then_eviction(start_fleet: StartFleet, connect: Connect) -> None:
    models = ["a:1b", "b:1b", "c:1b"]
    spec = SimServerSpec(name="loads", models=models, load_seconds=0.3, max_loaded_models=2)
    url = start_fleet(spec).urls["loads"]
    client = connect(url)
    started = time.monotonic()
    cold = client.chat(model="a:1b", messages=user("x"), options={"num_predict": 2})
    assert time.monotonic() - started >= 0.3
    assert cold.load_duration is not None and cold.load_duration >= 0.29e9
    assert cold.total_duration is not None and cold.total_duration >= cold.load_duration
    started = time.monotonic()
    warm = client.chat(model="a:1b", messages=user("x"), options={"num_predict": 2})
    assert time.monotonic() - started < 0.3
    assert warm.load_duration is not None and 0 < warm.load_duration < 10_000_000
    client.chat(model="b:1b", messages=user("x"), options={"num_predict": 2})
    client.chat(model="a:1b", messages=user("x"), options={"num_predict": 2})  # b is now the LRU
    client.chat(model="c:1b", messages=user("x"), options={"num_predict": 2})
    assert [model.model for model in client.ps().models] == ["c:1b", "a:1b"]
    counted = stats(url)
    assert counted["cold_loads"] == 3
    assert counted["per_model"]["a:1b"]["cold_loads"] == 1
    httpx.post(f"{url}/sim/loaded", json={"models": ["b:1b"]}).raise_for_status()
    assert [model.model for model in client.ps().models] == ["b:1b"]


def _timed_stream(url: str, body: dict[str, Any]) -> tuple[float, float, list[dict[str, Any]]]:
    """Streams a chat: (seconds until the headers arrived, seconds until the end, chunks)."""
    started = time.monotonic()
    with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=10) as answer:
        headers_after = time.monotonic() - started
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        chunks = [json.loads(line) for line in answer.iter_lines() if line]
    return headers_after, time.monotonic() - started, chunks


def test_streamed_headers_wait_for_the_cold_load(start_fleet: StartFleet, connect: Connect) -> None:
    spec = SimServerSpec(name="cold-stream", models=[SMALL], load_seconds=1.5, tokens_per_second=10)
    url = start_fleet(spec).urls["cold-stream"]
    client = connect(url)
    body = {"model": SMALL, "messages": user("x"), "options": {"num_predict": 5}}  # streamed
    with ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(_timed_stream, url, body)
        wait_for(lambda: stats(url)["cold_loads"] == 1, 5, what="the cold load to start")
        assert client.ps().models == []  # not listed while it loads
        assert not streaming.done()
        headers_after, ended_after, chunks = streaming.result()
    # Like Ollama, the headers come with the first chunk: after the load and the first token
    # (0.1 s at 10 tokens a second); the other four tokens then stream over 0.4 s.
    assert headers_after >= 1.6
    assert ended_after - headers_after >= 0.3
    assert [chunk["done"] for chunk in chunks] == [False] * 5 + [True]
    assert chunks[-1]["load_duration"] >= 1.49e9
    assert [model.model for model in client.ps().models] == [SMALL]
    headers_after, _, _ = _timed_stream(url, body)  # warm: only the first token's 0.1 s
    assert 0.1 <= headers_after < 1.0


def test_concurrent_requests_share_one_load(start_fleet: StartFleet, connect: Connect) -> None:
    url = start_fleet(SimServerSpec(name="share", models=[SMALL], load_seconds=0.3)).urls["share"]
    client = connect(url)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda text: client.chat(model=SMALL, messages=user(text)), "xyz"))
    assert all(answer.done_reason == "length" for answer in answers)
    assert stats(url)["cold_loads"] == 1


def test_tokens_per_second_paces_generation(start_fleet: StartFleet, connect: Connect) -> None:
    url = start_fleet(
        SimServerSpec(name="paced", models=[SMALL], loaded=[SMALL], tokens_per_second=100)
    ).urls["paced"]
    client = connect(url)
    started = time.monotonic()
    answer = client.chat(model=SMALL, messages=user("x"), options={"num_predict": 20})
    assert time.monotonic() - started >= 0.2
    assert answer.eval_duration == 200_000_000
    started = time.monotonic()
    chunks = list(
        client.chat(model=SMALL, messages=user("x"), options={"num_predict": 20}, stream=True)
    )
    assert time.monotonic() - started >= 0.2 and len(chunks) == 21
    assert stats(url)["busy_seconds"] >= 0.4


# Slots ----------------------------------------------------------------------------------------


def _paced_spec(name: str, max_queue: int) -> SimServerSpec:
    return SimServerSpec(
        name=name,
        models=[SMALL],
        loaded=[SMALL],
        tokens_per_second=50,
        parallel=1,
        max_queue=max_queue,
    )


def _start_chat(pool: ThreadPoolExecutor, url: str, tokens: int = 50) -> Future[httpx.Response]:
    body = chat_body("slot", options={"num_predict": tokens})
    return pool.submit(httpx.post, f"{url}/api/chat", json=body, timeout=10)


def test_full_slots_answer_503(start_fleet: StartFleet) -> None:
    url = start_fleet(_paced_spec("single", max_queue=0)).urls["single"]
    with ThreadPoolExecutor(1) as pool:
        first = _start_chat(pool, url)
        wait_for(lambda: stats(url)["active"] == 1, 5, what="the first request to take the slot")
        refused = httpx.post(f"{url}/api/chat", json=chat_body("second"))
        assert refused.status_code == 503
        assert refused.json() == {
            "error": "server busy, please try again.  maximum pending requests exceeded"
        }
        assert first.result().status_code == 200
    counted = stats(url)
    assert (counted["refused_full"], counted["max_active"], counted["completed"]) == (1, 1, 1)


def test_queued_request_waits_for_the_slot(start_fleet: StartFleet) -> None:
    url = start_fleet(_paced_spec("queued", max_queue=1)).urls["queued"]
    with ThreadPoolExecutor(2) as pool:
        first = _start_chat(pool, url)
        wait_for(lambda: stats(url)["active"] == 1, 5, what="the first request to take the slot")
        second = _start_chat(pool, url, tokens=5)
        wait_for(lambda: stats(url)["queued"] == 1, 5, what="the second request to queue")
        assert httpx.post(f"{url}/api/chat", json=chat_body("third")).status_code == 503
        assert first.result().status_code == 200
        assert second.result().json()["eval_count"] == 5
    counted = stats(url)
    assert (counted["max_active"], counted["completed"], counted["refused_full"]) == (1, 2, 1)


# Faults and directives ------------------------------------------------------------------------


def test_fail_next_then_recover(start_fleet: StartFleet, connect: Connect) -> None:
    url = start_fleet(SimServerSpec(name="faulty", models=[SMALL], loaded=[SMALL])).urls["faulty"]
    client = connect(url)
    httpx.post(f"{url}/sim/faults", json={"fail_next": 2, "status": 500}).raise_for_status()
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as failed:
            client.chat(model=SMALL, messages=user("x"))
        assert failed.value.status_code == 500
    assert client.chat(model=SMALL, messages=user("x")).done
    httpx.post(f"{url}/sim/faults", json={"fail_next": 1, "status": 400}).raise_for_status()
    with pytest.raises(ollama.ResponseError) as overflow:
        client.chat(model=SMALL, messages=user("x"))
    assert overflow.value.status_code == 400 and "context" in overflow.value.error
    httpx.post(f"{url}/sim/faults", json={"fail_next": 5, "status": 502, "error": "bad gateway"})
    httpx.post(f"{url}/sim/faults", json={"clear": True}).raise_for_status()
    assert client.chat(model=SMALL, messages=user("x")).done
    assert stats(url)["failures_injected"] == 3
    httpx.post(f"{url}/sim/reset").raise_for_status()
    assert stats(url)["failures_injected"] == 0 and stats(url)["requests"] == 0
    assert httpx.post(f"{url}/sim/faults", json={"fail_next": -1}).status_code == 400


def test_hang_until_the_client_gives_up(start_fleet: StartFleet) -> None:
    url = start_fleet(SimServerSpec(name="hangs", models=[SMALL], loaded=[SMALL])).urls["hangs"]
    httpx.post(f"{url}/sim/faults", json={"hang_next": 1}).raise_for_status()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/api/chat", json=chat_body("x"), timeout=0.3)
    assert httpx.post(f"{url}/api/chat", json=chat_body("x")).json()["done"] is True


def test_a_hang_for_one_model_lets_the_others_through(start_fleet: StartFleet) -> None:
    spec = SimServerSpec(name="hangs-big", models=[SMALL, BIG], loaded=[SMALL, BIG])
    url = start_fleet(spec).urls["hangs-big"]
    hang = {"hang_next": 1, "hang_model": BIG}
    httpx.post(f"{url}/sim/faults", json=hang).raise_for_status()
    assert httpx.post(f"{url}/api/chat", json=chat_body("x")).json()["done"] is True
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/api/chat", json=chat_body("x", BIG), timeout=0.3)
    assert stats(url)["failures_injected"] == 1


def _stream_until_timeout(url: str, model: str, tokens: int) -> list[dict[str, Any]]:
    """Streams a chat that is told to stall; returns the chunks received before the timeout."""
    body = {"model": model, "messages": user("x"), "options": {"num_predict": tokens}}
    received: list[dict[str, Any]] = []
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST", f"{url}/api/chat", json=body, timeout=httpx.Timeout(5, read=0.5)
        ) as answer,
    ):
        assert answer.status_code == 200
        received.extend(json.loads(line) for line in answer.iter_lines() if line)
    return received


def test_stall_sends_some_chunks_then_nothing(start_fleet: StartFleet, connect: Connect) -> None:
    url = start_fleet(SimServerSpec(name="stalls", models=[SMALL], loaded=[SMALL])).urls["stalls"]
    stall = {"stall_next": 1, "stall_after_tokens": 3}
    faults = httpx.post(f"{url}/sim/faults", json=stall).json()
    assert {key: faults[key] for key in stall} == stall and faults["stall_model"] is None
    # A whole (not streamed) answer is not stalled, and leaves the stall for the next stream.
    assert httpx.post(f"{url}/api/chat", json=chat_body("x")).json()["done"] is True
    received = _stream_until_timeout(url, SMALL, tokens=10)
    assert [chunk["done"] for chunk in received] == [False] * 3
    wait_for(lambda: stats(url)["active"] == 0, 5, what="the stalled stream to free its slot")
    counted = stats(url)
    assert (counted["failures_injected"], counted["completed"]) == (1, 1)
    client = connect(url)
    chunks = list(
        client.chat(model=SMALL, messages=user("x"), options={"num_predict": 10}, stream=True)
    )
    assert [chunk.done for chunk in chunks] == [False] * 10 + [True]


def test_stall_for_one_model_before_or_after_every_chunk(
    start_fleet: StartFleet, connect: Connect
) -> None:
    spec = SimServerSpec(name="stalls-big", models=[SMALL, BIG], loaded=[SMALL, BIG])
    url = start_fleet(spec).urls["stalls-big"]
    client = connect(url)
    stall = {"stall_next": 1, "stall_after_tokens": 0, "stall_model": BIG}
    httpx.post(f"{url}/sim/faults", json=stall).raise_for_status()
    assert list(client.chat(model=SMALL, messages=user("x"), stream=True))[-1].done
    # Stalled before the first chunk: nothing is sent, not even the headers.
    body = {"model": BIG, "messages": user("x")}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/api/chat", json=body, timeout=httpx.Timeout(5, read=0.5))
    # More tokens than the reply has: every token's chunk, and never the final one.
    stall = {"stall_next": 1, "stall_after_tokens": 5}
    httpx.post(f"{url}/sim/faults", json=stall).raise_for_status()
    assert [chunk["done"] for chunk in _stream_until_timeout(url, SMALL, tokens=2)] == [False] * 2
    httpx.post(f"{url}/sim/faults", json={"stall_next": 3}).raise_for_status()
    cleared = httpx.post(f"{url}/sim/faults", json={"clear": True}).json()
    assert cleared["stall_next"] == 0
    assert list(client.chat(model=BIG, messages=user("x"), stream=True))[-1].done
    wait_for(lambda: stats(url)["active"] == 0, 5, what="the stalled streams to free their slots")
    assert stats(url)["failures_injected"] == 2


def test_sim_say_and_sim_error_directives(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    said = client.chat(model=SMALL, messages=user("ignore this sim-say:  Hello there, friend. "))
    assert (said.message.content, said.eval_count, said.done_reason) == (
        "Hello there, friend.",
        3,
        "stop",
    )
    chunks = list(
        client.chat(model=SMALL, messages=user("sim-say: [SKIP] not this one"), stream=True)
    )
    assert "".join(chunk.message.content or "" for chunk in chunks) == "[SKIP] not this one"
    earlier = [{"role": "user", "content": "sim-say: old"}, {"role": "user", "content": "new"}]
    assert client.chat(model=SMALL, messages=earlier).message.content != "old"
    with pytest.raises(ollama.ResponseError) as busy:
        client.chat(model=SMALL, messages=user("sim-error:503"))
    assert busy.value.status_code == 503 and "server busy" in busy.value.error
    with pytest.raises(ollama.ResponseError) as broken:
        client.generate(model=SMALL, prompt="please sim-error:500 now")
    assert broken.value.status_code == 500


def test_scoring_system_prompt_gets_a_score(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    messages = [
        {"role": "system", "content": "Rate the reply. SCORE it 1-100."},
        *user("a kind message"),
    ]
    first = client.chat(model=SMALL, messages=messages)
    found = re.fullmatch(r"Score: (\d+)", first.message.content or "")
    assert found and 1 <= int(found.group(1)) <= 100
    assert client.chat(model=BIG, messages=messages).message.content == first.message.content
    scores = {
        client.chat(model=SMALL, messages=[messages[0], *user(f"message {n}")]).message.content
        for n in range(8)
    }
    assert len(scores) > 1


def test_context_overflow_is_a_400(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    with pytest.raises(ollama.ResponseError) as too_long:
        client.chat(model=SMALL, messages=user("x" * 40_000))
    assert too_long.value.status_code == 400 and "context length" in too_long.value.error
    with pytest.raises(ollama.ResponseError) as small_ctx:
        client.chat(model=SMALL, messages=user("x"), options={"num_ctx": 100, "num_predict": 128})
    assert small_ctx.value.status_code == 400
    assert client.chat(
        model=SMALL, messages=user("x"), options={"num_ctx": 100, "num_predict": 50}
    ).done


def test_unknown_model_is_a_404(main_url: str, connect: Connect) -> None:
    client = connect(main_url)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope:7b", messages=user("x"))
    assert missing.value.status_code == 404
    assert missing.value.error == 'model "nope:7b" not found, try pulling it first'


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/api/chat", b"{not json"),
        ("/api/chat", b""),
        ("/api/chat", b"[1, 2]"),
        ("/api/chat", b'{"messages": []}'),
        ("/api/chat", b'{"model": "llama3.2:3b", "messages": "hi"}'),
        ("/api/chat", b'{"model": "llama3.2:3b", "messages": [], "keep_alive": "soon"}'),
        (
            "/api/generate",
            b'{"model": "llama3.2:3b", "prompt": "x", "options": {"num_predict": "many"}}',
        ),
        ("/api/generate", b"\xff\xfe"),
        ("/api/chat", b"[" * 100_000),
        ("/api/chat", b'{"model": "llama3.2:3b", "messages": [], "keep_alive": NaN}'),
        (
            "/api/generate",
            b'{"model": "llama3.2:3b", "prompt": "x", "options": {"temperature": NaN}}',
        ),
        ("/v1/chat/completions", b'{"model": 3}'),
        ("/api/pull", b"{}"),
        ("/sim/faults", b'{"fail_next": 1, "status": 200}'),
        ("/sim/faults", b'{"stall_next": 1, "stall_after_tokens": -1}'),
        ("/sim/loaded", b'{"models": ["absent:1b"]}'),
    ],
)
def test_bad_bodies_are_400(main_url: str, path: str, content: bytes) -> None:
    answer = httpx.post(f"{main_url}{path}", content=content)
    assert answer.status_code == 400
    assert answer.json()["error"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
request_fields = st.fixed_dictionaries(
    {"model": st.sampled_from([SMALL, BIG, "", "x:1b"]) | json_values},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries({"role": json_values, "content": json_values}), max_size=3
        )
        | json_values,
        "prompt": st.text(max_size=40) | json_values,
        "options": st.dictionaries(
            st.sampled_from(["num_predict", "num_ctx", "stop", "temperature", "seed"]), json_values
        )
        | json_values,
        "stream": json_values,
        "keep_alive": st.sampled_from(["5m", "-1", "1h30m", "0"]) | json_values,
        "max_tokens": json_values,
        "stop": json_values,
    },
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/api/chat", "/api/generate", "/v1/chat/completions"]),
    body=request_fields | json_values,
)
def test_random_bodies_never_get_a_server_error(
    main_client: httpx.Client, path: str, body: Any
) -> None:
    answer = main_client.post(path, json=body)
    assert answer.status_code < 500, answer.text


# Parsing and serving --------------------------------------------------------------------------


def test_parse_server_spec() -> None:
    spec = parse_server_spec(
        "name=mac-1,port=11501,models=llama3.2:3b+qwen2.5:7b,loaded=llama3.2:3b,tps=40,"
        "load=2.5,parallel=2,queue=1,max_loaded=2,ctx=4096,host=0.0.0.0"
    )
    assert spec == SimServerSpec(
        name="mac-1",
        host="0.0.0.0",
        port=11501,
        models=[SMALL, BIG],
        loaded=[SMALL],
        tokens_per_second=40,
        load_seconds=2.5,
        parallel=2,
        max_queue=1,
        max_loaded_models=2,
        context_length=4096,
    )
    minimal = parse_server_spec(" name=x , models=phi3 ")
    assert (minimal.models, minimal.port, minimal.parallel) == (["phi3:latest"], 0, 4)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "name= is required"),
        ("models=a:1b", "name= is required"),
        ("name=x", "models= is required"),
        ("name=x,models=", "models= is required"),
        ("name=x,models=a:1b,colour=red", "unknown key 'colour'"),
        ("name=x,models=a:1b,oops", "'oops' is not key=value"),
        ("name=x,name=y,models=a:1b", "'name' given twice"),
        ("name=x,models=a:1b,port=abc", "port"),
        ("name=x,models=a:1b,port=70000", "port"),
        ("name=x,models=a:1b,tps=-1", "tokens_per_second"),
        ("name=x,models=a:1b,parallel=0", "parallel"),
        ("name=x,models=a:1b,loaded=b:1b", "not among models: b:1b"),
        ("name=x,models=a:1b+b:1b,loaded=a:1b+b:1b,max_loaded=1", "exceed max_loaded_models"),
    ],
)
def test_parse_server_spec_errors(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_server_spec(text)


def test_fleet_stops_cleanly() -> None:
    with SimulatorFleet([SimServerSpec(name=f"s{n}", models=[SMALL]) for n in range(3)]) as fleet:
        urls = list(fleet.urls.values())
        assert len(set(urls)) == 3
        assert all(httpx.get(url).status_code == 200 for url in urls)
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)
    with pytest.raises(ValueError, match="unique"):
        SimulatorFleet([SimServerSpec(name="twin", models=[SMALL])] * 2)


def test_serve_runs_until_cancelled() -> None:
    spec = SimServerSpec(name="served", models=[SMALL], port=free_port())
    url = f"http://127.0.0.1:{spec.port}"

    async def scenario() -> None:
        serving = asyncio.create_task(serve([spec]))
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 5
            while True:
                try:
                    answer = await client.get(f"{url}/api/version")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "serve() did not start"
                    await asyncio.sleep(0.02)
            assert answer.status_code == 200
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving

    asyncio.run(scenario())
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
