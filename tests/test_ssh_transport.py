"""The transport seam: model servers reached at `ssh://alias` through one persistent SSH
connection per node, against a real SSH server on loopback (asyncssh, a host key made for the
test) in a temporary HOME with its own `~/.ssh/config`, known_hosts and key, forwarding to
simulated Ollama, llama-server and pool-manager servers."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from standins.simulator import SimServerSpec, SimulatorFleet
from standins.ssh_server import LoopbackSshd, SshHome, new_key
from standins.stack import LocalStack
from standins.waiting import wait_for
from tests.fleet_checks import assert_answered_once, post, sim_stats
from workers.backends import (
    Backend,
    ModelServersBackend,
    OllamaClient,
    OpenAIBackend,
    PoolBackend,
    build_backend,
)
from workers.contract.protocol import ChatRequest, ChatTurn
from workers.errors import ServerUnavailable, TunnelDown
from workers.heartbeat import server_record
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings
from workers.transport import (
    AddressError,
    HttpAddress,
    Links,
    LinkState,
    SshAddress,
    SshEndpoint,
    SshOptions,
    parse_address,
)

LLAMA = "llama3.2:3b"
ETERNAL = "the-eternal-f16"
CRITIC = "the-critic-f16"
REQUESTS = 24


def chat(model: str, text: str = "hello") -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[ChatTurn(role="user", content=text), ChatTurn(role="assistant", content="")],
        max_tokens=8,
    )


# Addresses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoint", "node_port"),
    [
        ("ssh://mac-3", SshEndpoint("mac-3"), None),
        ("ssh://mac-3/", SshEndpoint("mac-3"), None),
        ("ssh://mac-3/127.0.0.1:11434", SshEndpoint("mac-3"), 11434),
        ("ssh://mac-3/:8081", SshEndpoint("mac-3"), 8081),
        ("ssh://mac-3/localhost:9000", SshEndpoint("mac-3"), 9000),
        ("ssh://bob@studio.example:2222/:11434", SshEndpoint("studio.example", "bob", 2222), 11434),
        ("ssh://bob@[fd7a::1]:22/:8080", SshEndpoint("fd7a::1", "bob", 22), 8080),
        ("ssh://Mac-Mini", SshEndpoint("Mac-Mini"), None),  # an alias keeps its case
        ("ssh://mac-3:11434", SshEndpoint("mac-3"), 11434),  # a bare alias: the node's port
        ("ssh://bob@host:2222", SshEndpoint("host", "bob", 2222), None),  # a user: SSH's port
        ("ssh://mac-3:2222/:11434", SshEndpoint("mac-3", None, 2222), 11434),
    ],
)
def test_an_ssh_address_names_the_endpoint_and_the_nodes_port(
    text: str, endpoint: SshEndpoint, node_port: int | None
) -> None:
    address = parse_address(text)
    assert isinstance(address, SshAddress)
    assert (address.endpoint, address.node_port) == (endpoint, node_port)


@pytest.mark.parametrize(
    "text", ["http://127.0.0.1:11434", "http://mac-3.tailnet.ts.net:11434", "https://box/"]
)
def test_an_http_address_is_its_own_url(text: str) -> None:
    assert parse_address(text) == HttpAddress(text.rstrip("/"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ssh://mac-3/10.0.0.5:11434", "must listen on the node's 127.0.0.1"),
        ("ssh://mac-3/11434", "/127.0.0.1:PORT"),
        ("ssh://mac-3/:0", "not a port"),
        ("ssh://bob:secret@mac-3", "no password"),
        ("ssh://mac-3?x=1", "no query"),
        ("ssh:///:11434", "no host"),
        ("mac-3:11434", "expected http://host:port or ssh://alias"),
        ("ftp://mac-3", "unknown scheme"),
        ("http://host:port", "port"),
    ],
)
def test_a_malformed_address_is_refused_with_what_to_write(text: str, says: str) -> None:
    with pytest.raises(AddressError) as refused:
        parse_address(text)
    assert says in str(refused.value)


def test_the_settings_refuse_a_malformed_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_CLOUD_OLLAMA_URL", "ssh://mac-3/10.0.0.5:11434")
    with pytest.raises(ValueError, match=r"node's 127\.0\.0\.1"):
        WorkerSettings()
    monkeypatch.setenv("OLLAMA_CLOUD_OLLAMA_URL", "ssh://mac-3")
    monkeypatch.setenv("OLLAMA_CLOUD_MODEL_MAP", f"{ETERNAL}=ssh://mac-3/:8081,x=ssh://a/b")
    with pytest.raises(ValueError, match=r"/127\.0\.0\.1:PORT"):
        WorkerSettings()


def test_a_plain_address_goes_through_no_tunnel() -> None:
    links = Links()
    link = links.open("http://127.0.0.1:9000/", 9000)
    assert (link.address, link.base_url, link.url_for(8012)) == (
        "http://127.0.0.1:9000", "http://127.0.0.1:9000", "http://127.0.0.1:8012"
    )  # fmt: skip
    assert links.transport() is None  # httpx's own, as before
    links.close()


# A node behind SSH -------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SshHome:
    """A temporary HOME with an operator's SSH set-up, and no agent to offer other keys."""
    made = SshHome(tmp_path / "home")
    monkeypatch.setenv("HOME", str(made.root))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return made


@pytest.fixture
def sshd(home: SshHome) -> Iterator[LoopbackSshd]:
    """The node's sshd, trusting the home's key; `mac-1` is its alias in the home's config."""
    with LoopbackSshd([home.key]) as server:
        yield server


@pytest.fixture(scope="module")
def sims() -> Iterator[SimulatorFleet]:
    """What listens on the node's 127.0.0.1: Ollama, two llama-servers and a pool manager."""
    specs = [
        SimServerSpec(name="ollama", models=[LLAMA], loaded=[LLAMA], parallel=4),
        SimServerSpec(name="eternal", kind="llamacpp", models=[ETERNAL], parallel=4),
        SimServerSpec(name="critic", kind="llamacpp", models=[CRITIC], parallel=2),
        SimServerSpec(name="pool", kind="pool", models=[ETERNAL, CRITIC], hazards=False),
    ]
    with SimulatorFleet(specs) as fleet:
        yield fleet


def port(sims: SimulatorFleet, name: str) -> int:
    return next(spec.port for spec in sims.specs if spec.name == name)


def chat_many(backend: Backend, model: str, count: int = REQUESTS) -> list[str]:
    """`count` chats, four at a time, as a worker's threads send them."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(4) as threads:
        outcomes = list(threads.map(lambda i: backend.chat(chat(model, f"q{i}")), range(count)))
    assert all(outcome.ok and outcome.text for outcome in outcomes)
    return [outcome.text for outcome in outcomes]


def test_ollama_through_ssh_answers_on_one_connection(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet
) -> None:
    home.add_node("mac-1", sshd)
    address = f"ssh://mac-1/127.0.0.1:{port(sims, 'ollama')}"
    with OllamaClient(address) as backend, OllamaClient(sims.urls["ollama"]) as direct:
        chat_many(backend, LLAMA)
        same = chat(LLAMA, "the same question")
        assert backend.chat(same).text == direct.chat(same).text
        inventory = backend.inventory()
        assert backend.address == address  # the record shows the address as written
    assert (inventory.models, inventory.loaded, inventory.healthy) == ([LLAMA], [LLAMA], True)
    assert (sshd.connections_made, sshd.logins) == (1, 1)


def test_llama_servers_and_a_pool_through_ssh_share_the_nodes_connection(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet
) -> None:
    home.add_node("mac-1", sshd)
    with OpenAIBackend(f"ssh://mac-1/:{port(sims, 'eternal')}") as single:
        chat_many(single, ETERNAL)
        told = single.inventory()
    assert told.models == [ETERNAL] and told.model_slots == {ETERNAL: 4}
    assert sshd.connections_made == 1
    servers = {ETERNAL: f"ssh://mac-1/:{port(sims, 'eternal')}",
               CRITIC: f"ssh://mac-1/:{port(sims, 'critic')}"}  # fmt: skip
    with ModelServersBackend(servers) as mapped:
        chat_many(mapped, ETERNAL, 8)
        chat_many(mapped, CRITIC, 8)
        assert mapped.inventory().model_slots == {ETERNAL: 4, CRITIC: 2}
    assert sshd.connections_made == 2  # one more backend, one more connection: not one a server
    with PoolBackend(f"ssh://mac-1/:{port(sims, 'pool')}") as pool:
        chat_many(pool, ETERNAL, 8)
        chat_many(pool, CRITIC, 8)
        assert pool.inventory().loaded == [ETERNAL, CRITIC]
        assert pool.address.startswith("ssh://mac-1/")
    assert sshd.connections_made == 3


def test_the_settings_build_every_backend_over_ssh(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.add_node("mac-1", sshd)
    cases = {
        "ollama": ("OLLAMA_CLOUD_OLLAMA_URL", f"ssh://mac-1/:{port(sims, 'ollama')}", LLAMA),
        "openai": ("OLLAMA_CLOUD_MODEL_SERVER_URL", f"ssh://mac-1/:{port(sims, 'critic')}", CRITIC),
        "pool": ("OLLAMA_CLOUD_POOL_URL", f"ssh://mac-1/:{port(sims, 'pool')}", ETERNAL),
        "models": ("OLLAMA_CLOUD_MODEL_MAP", f"{ETERNAL}=ssh://mac-1/:{port(sims, 'eternal')}",
                   ETERNAL),
    }  # fmt: skip
    for kind, (name, value, model) in cases.items():
        monkeypatch.setenv("OLLAMA_CLOUD_BACKEND", kind)
        monkeypatch.setenv(name, value)
        with build_backend(WorkerSettings(), "mac-1") as backend:
            assert backend.kind == kind
            assert backend.chat(chat(model)).ok
    assert sshd.connections_made == len(cases)


def test_a_dropped_connection_reconnects_on_the_same_local_port(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet
) -> None:
    home.add_node("mac-1", sshd)
    links = Links()
    with OllamaClient(f"ssh://mac-1/:{port(sims, 'ollama')}", links=links) as backend:
        chat_many(backend, LLAMA, 8)
        url = backend.base_url
        assert sshd.drop_all() == 1
        outcomes: list[str] = []

        def answered() -> bool:
            try:
                outcomes.append(backend.chat(chat(LLAMA)).text)
            except ServerUnavailable as exc:  # while the link is down: at once, and why
                assert "ssh://mac-1" in str(exc)
                return False
            return True

        wait_for(answered, 10, interval=0.05, what="an answer after the drop")
        chat_many(backend, LLAMA, 8)
        assert backend.base_url == url
    assert sshd.connections_made == 2


def test_keepalives_notice_a_dead_link_and_it_reconnects(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet, caplog: pytest.LogCaptureFixture
) -> None:
    home.add_node("mac-1", sshd)
    links = Links(SshOptions(keepalive_s=0.2))
    with OllamaClient(f"ssh://mac-1/:{port(sims, 'ollama')}", links=links) as backend:
        assert backend.chat(chat(LLAMA)).ok
        assert sshd.silence_all() == 1  # the link goes quiet, unclosed
        began = time.monotonic()
        wait_for(lambda: sshd.connections_made == 2, 5, what="a new connection")
        assert time.monotonic() - began < 3  # three keepalives of 0.2 s unanswered, and a try
        wait_for(lambda: _answers(backend), 5, what="an answer on the new connection")
    assert any("not responding to keepalive" in record.message for record in caplog.records)


def _answers(backend: Backend) -> bool:
    try:
        return backend.chat(chat(LLAMA)).ok
    except ServerUnavailable:
        return False


def test_a_node_behind_a_jump_host_is_reached_through_it(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet
) -> None:
    with LoopbackSshd([home.key]) as jump:
        home.add_node("jump-1", jump)
        home.add_node("mac-1", sshd, extra="ProxyJump jump-1")
        with OllamaClient(f"ssh://mac-1/:{port(sims, 'ollama')}") as backend:
            chat_many(backend, LLAMA, 8)
        assert (jump.logins, sshd.logins) == (1, 1)


def test_requests_fail_fast_while_the_link_is_down(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet
) -> None:
    home.add_node("mac-1", sshd)
    with OllamaClient(f"ssh://mac-1/:{port(sims, 'ollama')}") as backend:
        assert backend.chat(chat(LLAMA)).ok
        sshd.stop()  # the node's sshd is gone: every try is refused
        reasons: list[str] = []
        slowest = 0.0

        def refused() -> bool:  # a caller that asks as fast as it can
            nonlocal slowest
            began = time.monotonic()
            with pytest.raises(ServerUnavailable) as down:  # the first may race the notice
                backend.inventory()
            slowest = max(slowest, time.monotonic() - began)
            reasons.append(str(down.value))
            return isinstance(down.value, TunnelDown) and "nothing accepts SSH" in reasons[-1]

        wait_for(refused, 5, interval=0, what="the refused reconnection")
    assert re.search(r"connection refused\): is sshd running there\?; next try in \d", reasons[-1])
    assert len(reasons) > 50  # each failed at once, not after a timeout
    assert slowest < 0.5


def test_nothing_listening_on_the_nodes_port_says_so(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet
) -> None:
    home.add_node("mac-1", sshd)
    with OllamaClient("ssh://mac-1/:1") as backend, pytest.raises(TunnelDown) as refused:
        backend.chat(chat(LLAMA))
    assert "nothing listening on the node's 127.0.0.1:1" in str(refused.value)
    assert sshd.connections_made == 1  # the link itself was fine


def unhealthy_without_a_tight_loop(
    address: str, sshd: LoopbackSshd, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Build a worker on `address`; its heartbeat's record says unhealthy, its backend says
    why, and however often it is asked, the node is tried a few times (at 0, 0.5 and 1.5 s),
    no more."""
    monkeypatch.setenv("OLLAMA_CLOUD_OLLAMA_URL", address)
    runtime = WorkerRuntime.build(WorkerSettings(), "mac-1")
    try:
        record = server_record(runtime, capacity=4, known_models=[LLAMA])
        assert not record.ollama_healthy
        assert (record.models, record.ollama_url) == ([LLAMA], address)
        # `status` shows why: the tunnel's reason, as its log line gives it.
        assert record.fault.startswith("ssh://mac-1: "), record.fault
        began = time.monotonic()
        while time.monotonic() - began < 1.0:  # a heartbeat as fast as it can go
            assert not server_record(runtime, capacity=4).ollama_healthy
        with pytest.raises(TunnelDown) as down:
            runtime.backend.inventory()
    finally:
        runtime.close()
    assert 1 <= sshd.connections_made <= 3, sshd.connections_made
    assert sshd.logins == 0
    assert record.fault.split("; next try")[0] in str(down.value)
    return str(down.value)


def test_a_refused_key_is_named_and_the_node_is_unhealthy(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = home.write_key("id_stranger", new_key())
    home.add_node("mac-1", sshd, identity=stranger)
    why = unhealthy_without_a_tight_loop(f"ssh://mac-1/:{port(sims, 'ollama')}", sshd, monkeypatch)
    assert "ssh://mac-1: permission denied for user node at 127.0.0.1:" in why
    assert "refused every key" in why


@pytest.mark.parametrize("host_key", ["unknown", "changed"])
def test_a_host_key_not_in_known_hosts_is_named_and_the_node_is_unhealthy(
    host_key: str,
    home: SshHome,
    sshd: LoopbackSshd,
    sims: SimulatorFleet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home.add_node("mac-1", sshd, trust=False)
    if host_key == "changed":
        home.trust(sshd.known_hosts_line(new_key()))
    why = unhealthy_without_a_tight_loop(f"ssh://mac-1/:{port(sims, 'ollama')}", sshd, monkeypatch)
    assert f"host key of 127.0.0.1:{sshd.port} not verifiable" in why
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {home.known_hosts};" in why


def test_an_unknown_alias_is_named(home: SshHome) -> None:
    with OllamaClient("ssh://no-such-node") as backend, pytest.raises(TunnelDown) as unknown:
        backend.inventory()
    assert "ssh://no-such-node: host 'no-such-node' not found: no Host entry" in str(unknown.value)


def test_closing_the_backend_ends_its_connection(
    home: SshHome, sshd: LoopbackSshd, sims: SimulatorFleet
) -> None:
    home.add_node("mac-1", sshd)
    links = Links()
    backend = OllamaClient(f"ssh://mac-1/:{port(sims, 'ollama')}", links=links)
    assert backend.chat(chat(LLAMA)).ok
    assert sshd.open_connections == 1
    tunnel = links.route(httpx.URL(backend.base_url))
    backend.close()
    assert tunnel is not None and tunnel[0].state is LinkState.CLOSED
    wait_for(lambda: sshd.open_connections == 0, 5, what="the connection closed at the server")


# A worker, end to end ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_worker_over_ssh_answers_each_message_once_across_a_drop(tmp_path: Path) -> None:
    spec = SimServerSpec(name="mac-1", models=[LLAMA], loaded=[LLAMA], tokens_per_second=300,
                         parallel=2)  # fmt: skip
    home = SshHome(tmp_path / "home")
    # One server, so the jobs the drop fails wait out its cooldown: a short one.
    stack = LocalStack(
        [spec], extra_env={"OLLAMA_CLOUD_COOLDOWN_S": "0.2", "OLLAMA_CLOUD_COOLDOWN_MAX_S": "1"}
    )
    with LoopbackSshd([home.key]) as sshd:
        home.add_node("mac-1", sshd)
        # The worker's own HOME stays as it is: the config names its files by absolute path.
        stack.worker_env = {"mac-1": {
            "OLLAMA_CLOUD_OLLAMA_URL": f"ssh://mac-1/:{stack.specs[0].port}",
            "OLLAMA_CLOUD_SSH_CONFIG": str(home.config),
        }}  # fmt: skip
        with stack:
            record = next(server for server in stack.fleet() if server.id == "mac-1")
            assert record.healthy and record.ollama_url.startswith("ssh://mac-1/")
            assert sshd.connections_made == 1  # the heartbeat's, which the jobs share
            ids = post(stack, 6, entity="the-eternal")
            wait_for(lambda: sim_stats(stack, "mac-1")["active"], 30, what="a generation")
            assert sshd.drop_all() == 1  # in the middle of it
            ids += post(stack, 6, entity="the-eternal")
            finished = assert_answered_once(stack, ids, timeout=90)
        assert sshd.connections_made >= 2
    retried = [job for job in finished.values() if job.attempt > 1]
    assert retried, "the drop cut no generation"


@pytest.mark.e2e
def test_the_transport_bench_prints_its_figures() -> None:
    from bench.transport import run  # noqa: PLC0415

    figures = run(["--requests", "30", "--ssh-requests", "2", "--nodes", "3"])
    assert figures["tunnel_ssh_connections"] == 1
    assert (figures["mesh_nodes"], figures["mesh_ssh_connections"]) == (3, 3)
    assert figures["mesh_online_s"] > 0
    assert figures["tunnel_ms_p50"] > 0 and figures["direct_ms_p50"] > 0
    assert {"tunnel_ms_p99", "tunnel_added_ms_p50", "ssh_per_request_ms_p50"} <= set(figures)
