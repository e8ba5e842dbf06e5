"""The simulated llama.cpp `llama-server` and the operator's pool manager, through real sockets:
routes and shapes, the official openai client, slots and queueing, and the pool's hazards
(eviction by /get-server recency, a busy server killed mid-reply, port reuse answering with
another model, concurrent cold starts leaking a server, the idle timeout)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from standins.embedded_redis import free_port
from standins.simulator import (
    SimServerSpec,
    SimulatorFleet,
    format_server_spec,
    model_path,
    parse_server_spec,
    serve,
)
from standins.waiting import wait_for
from tests.fleet_checks import StartFleet

ETERNAL, LOGIC, SCORER = "the-eternal-f16", "cold-logic-f16", "eq-score-f16"
LOADING_BODY = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def llama(name: str = "llama", model: str = ETERNAL, **settings: Any) -> SimServerSpec:
    return SimServerSpec(name=name, kind="llamacpp", models=[model], **settings)


def pool(
    name: str = "pool", models: tuple[str, ...] = (ETERNAL, LOGIC), **settings: Any
) -> SimServerSpec:
    return SimServerSpec(name=name, kind="pool", models=list(models), **settings)


@pytest.fixture(scope="module")
def shared() -> Iterator[SimulatorFleet]:
    """Ready, instant servers for tests that only read."""
    with SimulatorFleet(
        [llama("two-slots", parallel=2), llama("scorer", SCORER, parallel=10)]
    ) as fleet:
        yield fleet


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat(
    url: str, messages: list[dict[str, str]], model: str = ETERNAL, **extra: Any
) -> httpx.Response:
    body = {"model": model, "messages": messages, "stream": False, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def stats(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/sim/stats", timeout=5).json()
    return answer


def local(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def get_server(pool_url: str, model: str) -> int:
    answer = httpx.get(f"{pool_url}/get-server", params={"model": model}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ready"
    port: int = answer.json()["port"]
    return port


def events(lines: Iterator[str]) -> list[Any]:
    """The `data:` payloads of a server-sent event stream, `[DONE]` kept as the string."""
    found: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            found.append(payload if payload == "[DONE]" else json.loads(payload))
    return found


# llama-server: routes and shapes ----------------------------------------------------------------


def test_a_ready_server_reports_health_props_slots_and_models(shared: SimulatorFleet) -> None:
    url = shared.urls["two-slots"]
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    props = httpx.get(f"{url}/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 4096  # 8192 over 2 slots
    assert props["total_slots"] == 2
    assert props["model_path"] == "/models/the-eternal-f16/the-eternal_f16.gguf"
    assert re.fullmatch(r"b\d+-[0-9a-f]{7}", props["build_info"])
    slots = httpx.get(f"{url}/slots").json()
    assert [(slot["id"], slot["n_ctx"], slot["is_processing"]) for slot in slots] == [
        (0, 4096, False),
        (1, 4096, False),
    ]
    listed = httpx.get(f"{url}/v1/models").json()
    assert listed["object"] == "list"
    assert [(entry["id"], entry["object"], entry["owned_by"]) for entry in listed["data"]] == [
        (ETERNAL, "model", "llamacpp")
    ]
    assert listed["data"][0]["meta"]["n_ctx"] == 4096
    missing = httpx.get(f"{url}/api/tags")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}
    }
    assert model_path("emotional-intelligence-f16") == (
        "/models/emotional-intelligence-f16/emotional-intelligence_f16.gguf"
    )


def test_ten_slots_share_the_context_and_an_overflow_is_the_operators_400(
    shared: SimulatorFleet,
) -> None:
    url = shared.urls["scorer"]
    props = httpx.get(f"{url}/props").json()
    # 8192 / 10 rounded up to a multiple of 256, as llama.cpp sizes it (the operator saw 1024).
    assert (props["total_slots"], props["default_generation_settings"]["n_ctx"]) == (10, 1024)
    too_long = chat(url, user("x" * 4560), model=SCORER)  # 4560 characters: 1140 tokens
    assert too_long.status_code == 400
    assert too_long.json() == {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 1140,
            "n_ctx": 1024,
        }
    }
    assert chat(url, user("x" * 4000), model=SCORER, max_tokens=5).status_code == 200


def test_a_loading_server_answers_503_until_loaded(start_fleet: StartFleet) -> None:
    url = start_fleet(llama("loading", load_seconds=0.4)).urls["loading"]
    health = httpx.get(f"{url}/health")
    assert (health.status_code, health.json()) == (503, LOADING_BODY)
    refused = chat(url, user("hello"))
    assert (refused.status_code, refused.json()) == (503, LOADING_BODY)
    assert httpx.get(f"{url}/props").status_code == 503
    listed = httpx.get(f"{url}/v1/models")  # the model list answers while loading
    assert listed.status_code == 200 and listed.json()["data"][0]["meta"] is None
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 5, what="the model to load")
    assert chat(url, user("hello"), max_tokens=3).status_code == 200
    counted = stats(url)
    assert counted["refused_loading"] == 1 and counted["completed"] == 1


def test_the_answer_echoes_the_requested_model_and_reports_timings(start_fleet: StartFleet) -> None:
    url = start_fleet(llama("echo", tokens_per_second=200)).urls["echo"]
    own = chat(url, user("hello"), max_tokens=8).json()
    other = chat(url, user("hello"), model="someone-else-f16", max_tokens=8).json()
    assert (own["model"], other["model"]) == (ETERNAL, "someone-else-f16")
    # The loaded model writes the words, whatever the request named.
    assert other["choices"][0]["message"] == own["choices"][0]["message"]
    choice = other["choices"][0]
    assert (
        choice["message"]["role"] == "assistant" and len(choice["message"]["content"].split()) == 8
    )
    assert choice["finish_reason"] == "length" and other["object"] == "chat.completion"
    assert other["usage"] == {"completion_tokens": 8, "prompt_tokens": 2, "total_tokens": 10}
    timings = other["timings"]
    assert (timings["prompt_n"], timings["predicted_n"]) == (2, 8)
    assert timings["predicted_ms"] == pytest.approx(40.0)
    assert timings["predicted_per_second"] == pytest.approx(200.0)
    assert timings["prompt_ms"] > 0 and timings["prompt_per_second"] > 0
    counted = stats(url)
    assert counted["generations"] == [
        {"requested": "someone-else-f16", "actual": ETERNAL, "count": 1},
        {"requested": ETERNAL, "actual": ETERNAL, "count": 1},
    ]
    assert counted["mismatched"] == 1


def test_the_bots_request_ending_in_an_empty_assistant_turn_is_answered(
    shared: SimulatorFleet,
) -> None:
    """The payload of operator.md §3, as the bot sends it."""
    body = {
        "model": "the-eternal-f16",
        "messages": [
            {"role": "system", "content": "Be free."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "are you alive?"},
            {"role": "assistant", "content": ""},
        ],
        "temperature": 1.0,
        "max_tokens": 200,
        "top_p": 0.9,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "min_p": 0.05,
        "stream": False,
        "stop": ["Human:", "\nHuman:", "User:", "Message ID:", "https:", "\n", "\nUser:"],
    }
    answer = httpx.post(f"{shared.urls['two-slots']}/v1/chat/completions", json=body)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"]


def test_two_trailing_assistant_turns_are_a_500(shared: SimulatorFleet) -> None:
    url = shared.urls["two-slots"]
    for last in ("", "more"):
        messages = [*user("hi"), {"role": "assistant", "content": "hello"}]
        answer = chat(url, [*messages, {"role": "assistant", "content": last}])
        assert answer.status_code == 500
        assert answer.json() == {
            "error": {
                "code": 500,
                "message": "Cannot have 2 or more assistant messages at the end of the list.",
                "type": "server_error",
            }
        }


def test_directives_faults_and_the_scorer_stand_in(start_fleet: StartFleet) -> None:
    url = start_fleet(llama("directed", SCORER)).urls["directed"]
    said = chat(url, user("ignore this sim-say:  Score: [85] ")).json()["choices"][0]
    assert (said["message"]["content"], said["finish_reason"]) == ("Score: [85]", "stop")
    scored = chat(url, [{"role": "system", "content": "Give a score 0-100."}, *user("a kind note")])
    assert re.fullmatch(r"Score: \d+", scored.json()["choices"][0]["message"]["content"])
    busy = chat(url, user("please sim-error:503"))
    assert busy.status_code == 503 and busy.json()["error"]["type"] == "unavailable_error"
    httpx.post(f"{url}/sim/faults", json={"fail_next": 1, "status": 500}).raise_for_status()
    failed = chat(url, user("x"))
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    assert chat(url, user("x")).status_code == 200
    assert stats(url)["failures_injected"] == 2


def test_full_slots_queue_requests_in_order(start_fleet: StartFleet) -> None:
    url = start_fleet(llama("queueing", parallel=2, tokens_per_second=40)).urls["queueing"]
    with ThreadPoolExecutor(3) as threads:
        answers = [threads.submit(chat, url, user(f"request {n}"), max_tokens=10) for n in range(3)]
        wait_for(lambda: stats(url)["queued"] == 1, 5, what="the third request to queue")
        busy = [slot["is_processing"] for slot in httpx.get(f"{url}/slots").json()]
        assert busy == [True, True]
        assert all(answer.result().status_code == 200 for answer in answers)
    counted = stats(url)
    assert (counted["max_active"], counted["max_queued"], counted["completed"]) == (2, 1, 3)


def test_a_stream_sends_its_headers_before_it_has_a_slot(start_fleet: StartFleet) -> None:
    url = start_fleet(llama("streaming", tokens_per_second=40)).urls["streaming"]
    body = {"model": "asked-f16", "messages": user("stream"), "stream": True, "max_tokens": 4}
    with ThreadPoolExecutor(1) as threads:
        first = threads.submit(chat, url, user("long"), max_tokens=40)  # holds the one slot 1 s
        wait_for(lambda: stats(url)["active"] == 1, 5, what="the first request to take the slot")
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as answer:
            # The headers are here while the request still waits for the slot.
            assert stats(url)["queued"] == 1 and not first.done()
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            received = events(answer.iter_lines())
        assert first.result().status_code == 200
    assert received[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    tokens = [event["choices"][0]["delta"]["content"] for event in received[1:-2]]
    assert len(tokens) == 4 and all(event["model"] == "asked-f16" for event in received[:-1])
    final = received[-2]
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["timings"]["predicted_n"] == 4
    assert received[-1] == "[DONE]"
    assert stats(url)["max_active"] == 1


def test_the_openai_client_works_streamed_and_not(start_fleet: StartFleet) -> None:
    url = start_fleet(llama("openai", tokens_per_second=500)).urls["openai"]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        assert [model.id for model in client.models.list()] == [ETERNAL]
        whole = client.chat.completions.create(
            model="any-name-f16", messages=[{"role": "user", "content": "hello"}], max_tokens=6
        )
        assert whole.model == "any-name-f16"
        content = whole.choices[0].message.content
        assert content and len(content.split()) == 6
        assert whole.usage is not None and whole.usage.completion_tokens == 6
        chunks = list(
            client.chat.completions.create(
                model="any-name-f16",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=6,
                stream=True,
            )
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == content
        assert chunks[-1].choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError) as overflow:
            client.chat.completions.create(
                model=ETERNAL, messages=[{"role": "user", "content": "x" * 40_000}]
            )
        assert "exceeds the available context size" in str(overflow.value)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model=ETERNAL,
                messages=[
                    {"role": "assistant", "content": "a"},
                    {"role": "assistant", "content": ""},
                ],
            )


# The pool manager ------------------------------------------------------------------------------


def test_a_cold_start_then_reuse(start_fleet: StartFleet) -> None:
    url = start_fleet(pool(models=(ETERNAL, LOGIC, SCORER), load_seconds=0.3)).urls["pool"]
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/models").json()["models"] == [ETERNAL, LOGIC, SCORER]
    assert httpx.get(f"{url}/status").json() == {
        "poolSize": 0,
        "maxServers": 24,
        "totalModels": 3,
        "servers": [],
    }
    with ThreadPoolExecutor(1) as threads:
        started = time.monotonic()
        cold = threads.submit(get_server, url, ETERNAL)
        starting = wait_for(
            lambda: httpx.get(f"{url}/status").json()["servers"], 5, what="the start to show"
        )
        assert [(entry["model"], entry["status"]) for entry in starting] == [(ETERNAL, "starting")]
        port = cold.result()
    assert time.monotonic() - started >= 0.3
    status = httpx.get(f"{url}/status").json()
    assert status["poolSize"] == 1
    entry = status["servers"][0]
    assert (entry["model"], entry["port"], entry["status"], entry["slots"]) == (
        ETERNAL,
        port,
        "ready",
        1,
    )
    assert abs(entry["lastUsed"] - time.time() * 1000) < 5000
    assert httpx.get(f"{local(port)}/v1/models").json()["data"][0]["id"] == ETERNAL
    assert chat(local(port), user("hi"), max_tokens=3).status_code == 200
    started = time.monotonic()
    assert get_server(url, ETERNAL) == port
    assert time.monotonic() - started < 0.3
    scorer_port = get_server(url, SCORER)
    props = httpx.get(f"{local(scorer_port)}/props").json()
    assert (props["total_slots"], props["default_generation_settings"]["n_ctx"]) == (10, 1024)
    unknown = httpx.get(f"{url}/get-server", params={"model": "nobody-f16"})
    assert unknown.status_code == 404 and "nobody-f16" in unknown.json()["error"]
    assert httpx.get(f"{url}/get-server").status_code == 400
    counted = stats(url)
    assert counted["cold_starts_per_model"] == {ETERNAL: 1, SCORER: 1}
    assert (counted["cold_starts"], counted["get_server_calls"], counted["completed"]) == (2, 4, 1)


def test_recent_use_counts_only_get_server_calls(start_fleet: StartFleet) -> None:
    url = start_fleet(pool(models=(ETERNAL, LOGIC, SCORER), max_servers=2)).urls["pool"]
    eternal, logic = get_server(url, ETERNAL), get_server(url, LOGIC)
    for _ in range(3):  # the eternal is the one answering, but only /get-server counts as use
        assert chat(local(eternal), user("busy"), max_tokens=2).status_code == 200
    get_server(url, SCORER)
    status = httpx.get(f"{url}/status").json()
    assert sorted(entry["model"] for entry in status["servers"]) == [LOGIC, SCORER]
    assert get_server(url, LOGIC) == logic
    counted = stats(url)
    assert (counted["evictions"], counted["busy_evictions"], counted["pool_size"]) == (1, 0, 2)


def test_an_evicted_port_is_reused_and_answers_for_another_model(start_fleet: StartFleet) -> None:
    url = start_fleet(pool(max_servers=1)).urls["pool"]
    eternal = get_server(url, ETERNAL)
    own_words = chat(local(eternal), user("hello"), max_tokens=5).json()["choices"][0]
    assert get_server(url, LOGIC) == eternal  # the eternal was evicted; its port went to logic
    # A client that cached the port for the eternal gets logic's words, under the eternal's name.
    answer = chat(local(eternal), user("hello"), model=ETERNAL, max_tokens=5)
    assert answer.status_code == 200 and answer.json()["model"] == ETERNAL
    assert answer.json()["choices"][0] != own_words
    counted = stats(url)
    assert counted["generations"] == [
        {"requested": ETERNAL, "actual": LOGIC, "count": 1},
        {"requested": ETERNAL, "actual": ETERNAL, "count": 1},
    ]
    assert counted["mismatched"] == 1 and counted["free_ports"] == []


def _stream_until_cut(url: str, body: dict[str, Any], received: list[Any]) -> None:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            received.extend(events(iter([line])))


def test_a_busy_server_is_evicted_mid_reply_and_its_clients_are_cut_off(
    start_fleet: StartFleet,
) -> None:
    url = start_fleet(pool(max_servers=1, tokens_per_second=20)).urls["pool"]
    eternal = get_server(url, ETERNAL)
    server_url = local(eternal)
    body = {"model": ETERNAL, "messages": user("long"), "stream": True, "max_tokens": 60}
    received: list[Any] = []
    with ThreadPoolExecutor(2) as threads:
        streamed = threads.submit(_stream_until_cut, server_url, body, received)
        wait_for(lambda: len(received) >= 3, 5, what="the stream to be under way")
        whole = threads.submit(chat, server_url, user("whole"), max_tokens=60)
        wait_for(lambda: stats(server_url)["queued"] == 1, 5, what="the whole reply to queue")
        get_server(url, LOGIC)  # the pool is full: the eternal, busy answering, is evicted
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            streamed.result()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            whole.result()
    assert "[DONE]" not in received and len(received) < 60
    counted = stats(url)
    assert (counted["evictions"], counted["busy_evictions"]) == (1, 1)
    assert (counted["completed"], counted["dropped"]) == (0, 2)


def test_an_eviction_forced_in_the_middle_of_a_whole_reply(start_fleet: StartFleet) -> None:
    url = start_fleet(pool(tokens_per_second=20)).urls["pool"]
    eternal = get_server(url, ETERNAL)
    with ThreadPoolExecutor(1) as threads:
        answer = threads.submit(chat, local(eternal), user("long"), max_tokens=60)
        wait_for(lambda: stats(local(eternal))["active"] == 1, 5, what="the reply to begin")
        evicted = httpx.post(f"{url}/sim/evict", params={"model": ETERNAL}).json()
        assert evicted == {"evicted": ETERNAL, "port": eternal, "busy": True}
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            answer.result()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{local(eternal)}/health")
    assert httpx.post(f"{url}/sim/evict", params={"model": ETERNAL}).status_code == 404
    counted = stats(url)
    assert (counted["forced_evictions"], counted["busy_evictions"], counted["dropped"]) == (1, 1, 1)
    assert counted["free_ports"] == [eternal]


@pytest.mark.parametrize("hazards", [True, False])
def test_concurrent_cold_gets_for_one_model(start_fleet: StartFleet, hazards: bool) -> None:
    spec = pool(max_servers=1, load_seconds=0.4, hazards=hazards)
    url = start_fleet(spec).urls["pool"]
    with ThreadPoolExecutor(2) as threads:
        first = threads.submit(get_server, url, ETERNAL)
        wait_for(lambda: stats(url)["starting"] == 1, 5, what="the first start to be under way")
        second = threads.submit(get_server, url, ETERNAL)
        ports: list[int] = [first.result(), second.result()]
    counted = stats(url)
    status = httpx.get(f"{url}/status").json()
    assert status["poolSize"] == 1
    if hazards:  # each call started a server: one of them leaked, and the pool went over its max
        assert ports[0] != ports[1]
        assert counted["servers_started_per_model"] == {ETERNAL: 2}
        assert (counted["leaked_servers"], counted["max_servers_running"]) == (1, 2)
        assert counted["running_servers"] == 2 and counted["leaked_ports"] == [ports[0]]
        assert all(httpx.get(f"{local(port)}/health").status_code == 200 for port in ports)
    else:
        assert ports[0] == ports[1]
        assert counted["servers_started_per_model"] == {ETERNAL: 1}
        assert (counted["leaked_servers"], counted["joined_starts"]) == (0, 1)
        assert counted["max_servers_running"] == 1


def test_the_idle_timeout_stops_a_server_that_only_answered(start_fleet: StartFleet) -> None:
    url = start_fleet(pool(idle_seconds=0.4, idle_check_seconds=0.05)).urls["pool"]
    eternal = get_server(url, ETERNAL)
    answered: list[int] = []

    def stopped_while_answering() -> bool:
        try:
            answered.append(chat(local(eternal), user("still here"), max_tokens=2).status_code)
        except httpx.TransportError:
            return True
        return False

    wait_for(stopped_while_answering, 5, interval=0.05, what="the idle timeout")
    assert answered and set(answered) == {200}
    counted = stats(url)
    assert (counted["idle_stops"], counted["pool_size"]) == (1, 0)
    assert httpx.get(f"{url}/status").json()["servers"] == []
    assert get_server(url, ETERNAL) == eternal  # a cold start again, on the freed port
    assert stats(url)["cold_starts"] == 2


def test_loaded_models_start_with_the_pool(start_fleet: StartFleet) -> None:
    url = start_fleet(pool(loaded=[LOGIC], load_seconds=5)).urls["pool"]
    status = httpx.get(f"{url}/status").json()
    assert [(entry["model"], entry["status"]) for entry in status["servers"]] == [(LOGIC, "ready")]
    started = time.monotonic()
    get_server(url, LOGIC)
    assert time.monotonic() - started < 1.0
    assert stats(url)["cold_starts"] == 0


# Specs and serving -----------------------------------------------------------------------------


def test_spec_text_of_a_llama_server_and_a_pool() -> None:
    single = parse_server_spec(f"name=l,kind=llamacpp,models={ETERNAL},load=0.5,tps=25")
    assert (single.kind, single.models, single.parallel, single.context_length) == (
        "llamacpp",
        [ETERNAL],
        1,
        8192,
    )
    text = (
        f"name=p,kind=pool,port=9000,models={ETERNAL}+{SCORER},max_servers=24,idle=1800,"
        f"idle_check=60,slots={SCORER}:10,hazards=off,model_load={ETERNAL}:12.6,load=2.5"
    )
    pooled = parse_server_spec(text)
    assert pooled == SimServerSpec(
        name="p",
        kind="pool",
        port=9000,
        models=[ETERNAL, SCORER],
        max_servers=24,
        idle_seconds=1800,
        idle_check_seconds=60,
        slots={SCORER: 10},
        hazards=False,
        model_load_seconds={ETERNAL: 12.6},
        load_seconds=2.5,
    )
    assert (pooled.slot_count(SCORER), pooled.slot_count(ETERNAL)) == (10, 1)
    assert (pooled.load_seconds_of(ETERNAL), pooled.load_seconds_of(SCORER)) == (12.6, 2.5)
    four = SimServerSpec(name="l4", kind="llamacpp", models=[SCORER], parallel=4)
    ollama = parse_server_spec("name=o,models=llama3.2:3b,parallel=2")
    for spec in (single, pooled, ollama, four):  # four: the Ollama default, not llamacpp's
        assert parse_server_spec(format_server_spec(spec)) == spec
    assert parse_server_spec(f"name=p,kind=pool,models={ETERNAL}").slots == {SCORER: 10}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("name=l,kind=llamacpp,models=a-f16+b-f16", "exactly one model"),
        ("name=l,kind=vllm,models=a-f16", "kind"),
        ("name=o,models=a:1b,max_servers=3", "max_servers=: only a pool"),
        ("name=l,kind=llamacpp,models=a-f16,queue=2", "queue=: not read by a llamacpp server"),
        ("name=l,kind=llamacpp,models=a-f16,slots=a-f16:2", "slots="),
        ("name=p,kind=pool,models=a-f16,slots=a-f16", "is not model:value"),
        ("name=p,kind=pool,models=a-f16,slots=a-f16:0", "at least 1"),
        ("name=p,kind=pool,models=a-f16,hazards=maybe", "hazards"),
        ("name=p,kind=pool,models=a-f16,loaded=b-f16", "not among models"),
    ],
)
def test_bad_llama_and_pool_specs(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_server_spec(text)


def test_serve_runs_a_pool_and_stops_its_servers() -> None:
    spec = pool(port=free_port())
    url = local(spec.port)

    async def scenario() -> int:
        serving = asyncio.create_task(serve([spec]))
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 5
            while True:
                try:
                    await client.get(f"{url}/health")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "serve() did not start"
                    await asyncio.sleep(0.02)
            answer = await client.get(f"{url}/get-server", params={"model": ETERNAL})
            port: int = answer.json()["port"]
            assert (await client.get(f"{local(port)}/health")).status_code == 200
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        return port

    port = asyncio.run(scenario())
    for stopped in (url, local(port)):
        with pytest.raises(httpx.ConnectError):
            httpx.get(stopped)
