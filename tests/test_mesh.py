"""`ollama-cloud mesh`: many SSH nodes served from one host, each an alias of `~/.ssh/config`
with its own queue and heartbeat, in one worker process; the config's changes bring nodes in
and take them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from standins.simulator import SimServerSpec
from standins.ssh_server import LoopbackSshd, SshHome
from standins.stack import LocalStack
from standins.waiting import wait_for
from tests.fleet_checks import assert_answered_once, post
from workers.mesh import host_aliases, select_nodes
from workers.settings import WorkerSettings

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
NODES = ["mac-a", "mac-b", "mac-c"]

CONFIG = """\
Host *
  ServerAliveInterval 5
Host mac-a mac-b
  HostName 10.0.0.1
Host=mac-c  # a comment
Host gpu-box *.lan !mac-x
"""


def test_the_configs_aliases_are_its_host_names_without_patterns() -> None:
    assert host_aliases(CONFIG) == ["mac-a", "mac-b", "mac-c", "gpu-box"]


def test_nodes_are_chosen_by_pattern_or_by_name_in_the_configs_order() -> None:
    aliases = host_aliases(CONFIG)
    assert select_nodes(aliases, ["mac-*"], []) == NODES
    assert select_nodes(aliases, [], ["gpu-box", "mac-a", "absent"]) == ["mac-a", "gpu-box"]
    assert select_nodes(aliases, ["MAC-*"], []) == []  # SSH's aliases are case-sensitive


def test_a_mesh_worker_takes_its_nodes_and_ports_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.mesh import node_settings  # noqa: PLC0415

    monkeypatch.setenv("OLLAMA_CLOUD_MESH_NODES", "mac-a, mac-b")
    monkeypatch.setenv("OLLAMA_CLOUD_MESH_PORTS", "mac-a=11501,default=11434")
    settings = WorkerSettings()
    assert settings.mesh_nodes == ["mac-a", "mac-b"]
    one = node_settings(settings, "mac-a")
    assert (one.server_id, one.ollama_url) == ("mac-a", "ssh://mac-a/:11501")
    assert node_settings(settings, "mac-b").ollama_url == "ssh://mac-b/:11434"


@pytest.mark.e2e
def test_a_mesh_serves_the_configs_nodes_and_follows_its_changes(tmp_path: Path) -> None:
    specs = [
        SimServerSpec(name=alias, models=MODELS, loaded=MODELS, tokens_per_second=300, parallel=4)
        for alias in NODES
    ]
    home = SshHome(tmp_path / "home")
    stack = LocalStack(specs)
    with LoopbackSshd([home.key]) as sshd:
        for alias in NODES:
            home.add_node(alias, sshd)
        home.config.write_text(home.config.read_text() + "Host *.lan\n  User nobody\n")
        try:
            stack.start(workers=False)
            ports = [f"{spec.name}={spec.port}" for spec in stack.specs]
            args = ["--hosts", "mac-*"] + [arg for entry in ports for arg in ("--port", entry)]
            mesh = stack.start_mesh(args, SSH_CONFIG=str(home.config), CAPACITY="4")
            stack.wait_online(NODES)
            assert mesh.running
            records = {server.id: server for server in stack.fleet()}
            for alias in NODES:
                assert records[alias].ollama_url.startswith(f"ssh://{alias}/")
                assert set(MODELS) <= set(records[alias].models)  # read through the tunnel
            assert sshd.logins == len(NODES)  # one connection per node, jobs ride on it

            ids = post(stack, 50)
            finished = assert_answered_once(stack, ids, timeout=120)
            assert {job.server_id for job in finished.values()} == set(NODES)

            # mac-b's entry goes: the node goes offline, the others keep answering.
            kept = [e for e in home.config.read_text().split("Host ") if not e.startswith("mac-b")]
            home.config.write_text("Host ".join(kept))

            def mac_b_offline() -> bool:
                stack.check_alive()
                return not any(s.online for s in stack.fleet() if s.id == "mac-b")

            wait_for(mac_b_offline, 60, interval=0.1, what="mac-b offline")
            stack.wait_online(["mac-a", "mac-c"])
            ids = post(stack, 10)
            finished = assert_answered_once(stack, ids, timeout=120)
            assert {job.server_id for job in finished.values()} <= {"mac-a", "mac-c"}
        finally:
            stack.stop()
