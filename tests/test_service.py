"""`ollama-cloud worker install` and `mesh install`: a launchd plist or a systemd unit that
runs this install's own commands with the environment's settings, readable by its owner alone,
started again whenever it exits; `uninstall` takes it away."""

from __future__ import annotations

import getpass
import os
import plistlib
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.ops import service
from orchestrator.ops.service import Program, Service, ServiceError
from standins.simulator import SimServerSpec, SimulatorFleet
from tests.fleet_checks import as_on_a_mac, run_worker_until_registered

BIN = Path(os.path.abspath(sys.executable)).parent
CELERY = BIN / "celery"
OLLAMA_CLOUD = BIN / "ollama-cloud"
PASSWORD = 'pa$s "w`o\\rd'  # every character a shell or systemd could take for its own
REDIS_URL = f"redis://:{PASSWORD}@orchestrator.example:6379/0"
SETTINGS = {
    "OLLAMA_CLOUD_REDIS_URL": REDIS_URL,
    "OLLAMA_CLOUD_CAPACITY": "2",
    "OLLAMA_CLOUD_LOCATION": "the attic, shelf 2",
}


class Recorder:
    """A service manager's commands, recorded and answered with `returncode` (or `fail` for
    the commands beginning with it)."""

    def __init__(self, fail: Sequence[str] = (), stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = list(fail)
        self.stderr = stderr

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        failed = bool(self.fail) and list(argv[: len(self.fail)]) == self.fail
        return subprocess.CompletedProcess(list(argv), 1 if failed else 0, "", self.stderr)


def refuse(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"ran {argv} though told not to")


def a_service(
    tmp_path: Path, platform: service.Platform, *parts: str, system: bool = False
) -> Service:
    return service.service_for(
        parts or ("worker", "mac-1"),
        platform,
        system=system,
        user=getpass.getuser() if system else None,
        home=tmp_path / "home",
        root=tmp_path / "root",
    )


def worker(settings: dict[str, str] = SETTINGS, queue: str = "mac-1") -> Program:
    return service.worker_program(queue, service.settings_environment(settings))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_plist(path: Path) -> dict[str, Any]:
    with path.open("rb") as plist_file:
        plist: dict[str, Any] = plistlib.load(plist_file)
    return plist


def unit_values(unit_text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in unit_text.splitlines() if "=" in line and line[0] != "#"
    )


def exec_start_argv(unit_text: str) -> list[str]:
    """ExecStart as systemd runs it: words split as a shell would, `%%` and `$$` unescaped."""
    words = shlex.split(unit_values(unit_text)["ExecStart"])
    return [word.replace("%%", "%").replace("$$", "$") for word in words]


def environment_as_read(env_file: Path) -> dict[str, str]:
    """The variables a POSIX shell reads from the file, which quotes as systemd does."""
    printed = subprocess.run(
        ["env", "-i", "sh", "-c", 'set -a && . "$0" && exec env -0', str(env_file)],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return dict(entry.split("=", 1) for entry in printed.split("\0") if "=" in entry)


# launchd -----------------------------------------------------------------------------------------


def test_a_workers_launchd_agent_runs_this_installs_celery_with_the_settings(
    tmp_path: Path,
) -> None:
    agent = a_service(tmp_path, "launchd")
    report = service.install(agent, worker(), start=False, runner=refuse)

    path = tmp_path / "home/Library/LaunchAgents/com.ollama-cloud.worker.mac-1.plist"
    assert agent.definition_path == path
    assert mode_of(path) == 0o600  # it holds the Redis password
    plist = read_plist(path)
    assert plist["Label"] == "com.ollama-cloud.worker.mac-1"
    program, *args = plist["ProgramArguments"]
    assert program == str(CELERY) and os.access(program, os.X_OK)
    assert args[:7] == ["-A", "workers", "worker", "-Q", "mac-1", "-n", "mac-1@%h"]
    assert args[-2:] == ["-l", "info"]
    environment = plist["EnvironmentVariables"]
    assert {name: environment[name] for name in SETTINGS} == SETTINGS
    assert environment["PATH"].split(":")[0] == str(BIN)
    assert plist["KeepAlive"] is True
    assert plist["RunAtLoad"] is True
    assert plist["ThrottleInterval"] > 0
    assert "UserName" not in plist
    log = tmp_path / "home/Library/Logs/ollama-cloud/worker-mac-1.log"
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(log)
    assert log.parent.is_dir()  # launchd does not make the folder
    assert plist["WorkingDirectory"] == str(tmp_path / "home")
    assert PASSWORD not in "\n".join(report)
    assert any("launchctl bootstrap" in line for line in report)  # how to start it by hand


def test_a_system_daemon_runs_as_its_user_with_a_home(tmp_path: Path) -> None:
    daemon = a_service(tmp_path, "launchd", system=True)
    service.install(daemon, worker(), start=False, runner=refuse)

    path = tmp_path / "root/Library/LaunchDaemons/com.ollama-cloud.worker.mac-1.plist"
    plist = read_plist(path)
    assert mode_of(path) == 0o600
    assert plist["UserName"] == getpass.getuser()
    assert plist["EnvironmentVariables"]["HOME"] == str(tmp_path / "home")
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True


def test_a_meshs_agent_runs_this_installs_mesh_command_with_its_nodes(tmp_path: Path) -> None:
    agent = a_service(tmp_path, "launchd", "mesh")
    settings = service.settings_environment(
        {**SETTINGS, "OLLAMA_CLOUD_SSH_CONFIG": "~/.ssh/config", "UNRELATED": "x"}
    )
    program = service.mesh_program(
        settings, hosts=["mac-*"], nodes=["gpu-1"], backend="openai", ports=["8080", "gpu-1=8081"]
    )
    service.install(agent, program, start=False, runner=refuse)

    path = tmp_path / "home/Library/LaunchAgents/com.ollama-cloud.mesh.plist"
    assert mode_of(path) == 0o600
    plist = read_plist(path)
    assert plist["Label"] == "com.ollama-cloud.mesh"
    assert plist["ProgramArguments"] == [
        str(OLLAMA_CLOUD), "mesh", "--hosts", "mac-*", "--node", "gpu-1", "--backend", "openai",
        "--port", "8080", "--port", "gpu-1=8081", "--log-level", "info",
    ]  # fmt: skip
    environment = plist["EnvironmentVariables"]
    assert environment["OLLAMA_CLOUD_REDIS_URL"] == REDIS_URL
    assert environment["OLLAMA_CLOUD_SSH_CONFIG"] == "~/.ssh/config"
    assert "UNRELATED" not in environment  # only the settings
    assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True


def test_launchd_loads_it_afresh_and_unloads_it(tmp_path: Path) -> None:
    agent = a_service(tmp_path, "launchd")
    runner = Recorder(fail=["launchctl", "bootout"])  # not loaded yet: launchctl says so
    service.install(agent, worker(), runner=runner)
    target = f"gui/{os.getuid()}/com.ollama-cloud.worker.mac-1"
    assert runner.calls == [
        ["launchctl", "bootout", target],
        ["launchctl", "enable", target],
        ["launchctl", "bootstrap", f"gui/{os.getuid()}", str(agent.definition_path)],
    ]

    runner = Recorder()
    report = service.uninstall(agent, runner=runner)
    assert runner.calls == [["launchctl", "bootout", target]]
    assert not agent.definition_path.exists()
    assert report[:2] == [
        "stopped com.ollama-cloud.worker.mac-1",
        f"removed {agent.definition_path}",
    ]


# systemd -----------------------------------------------------------------------------------------


@pytest.fixture
def verify_unit(tmp_path: Path) -> Iterator[Any]:
    """`systemd-analyze verify` of a user's unit (it checks ExecStart's program exists too)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)

    def verify(unit: Path, user: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
        argv = [analyze, "verify", *(["--user"] if user else []), "--man=no", str(unit)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    yield verify


def test_a_workers_systemd_unit_verifies_and_restarts_always(
    tmp_path: Path, verify_unit: Any
) -> None:
    unit = a_service(tmp_path, "systemd")
    report = service.install(unit, worker(), start=False, runner=refuse)

    path = tmp_path / "home/.config/systemd/user/ollama-cloud-worker-mac-1.service"
    env_file = tmp_path / "home/.config/ollama-cloud/worker-mac-1.env"
    assert (unit.definition_path, unit.environment_path) == (path, env_file)
    verified = verify_unit(path)
    assert verified.returncode == 0, verified.stderr
    assert str(path) not in verified.stderr  # no complaint about any line of it
    text = path.read_text()
    values = unit_values(text)
    assert values["Restart"] == "always"
    assert int(values["RestartSec"]) > 0
    assert values["EnvironmentFile"] == str(env_file)
    assert values["WantedBy"] == "default.target"
    assert exec_start_argv(text) == [
        str(CELERY), "-A", "workers", "worker", "-Q", "mac-1", "-n", "mac-1@%h",
        "--without-mingle", "--without-gossip", "-l", "info",
    ]  # fmt: skip
    assert PASSWORD not in text  # the unit is readable by all; its settings are not
    assert mode_of(env_file) == 0o600
    environment = environment_as_read(env_file)
    assert {name: environment[name] for name in SETTINGS} == SETTINGS
    assert environment["PATH"].split(":")[0] == str(BIN)
    assert any("loginctl enable-linger" in line for line in report)


def test_a_system_unit_runs_as_its_user_after_the_network(tmp_path: Path, verify_unit: Any) -> None:
    unit = a_service(tmp_path, "systemd", system=True)
    service.install(unit, worker(), start=False, runner=refuse)

    path = tmp_path / "root/etc/systemd/system/ollama-cloud-worker-mac-1.service"
    verified = verify_unit(path, user=False)
    assert verified.returncode == 0, verified.stderr
    values = unit_values(path.read_text())
    assert values["User"] == getpass.getuser()
    assert values["WantedBy"] == "multi-user.target"
    assert values["After"] == "network-online.target"
    assert mode_of(tmp_path / "root/etc/ollama-cloud/worker-mac-1.env") == 0o600


def test_a_meshs_systemd_unit_verifies(tmp_path: Path, verify_unit: Any) -> None:
    unit = a_service(tmp_path, "systemd", "mesh", "gpus")
    program = service.mesh_program(service.settings_environment(SETTINGS), hosts=["gpu-*"])
    service.install(unit, program, start=False, runner=refuse)

    path = tmp_path / "home/.config/systemd/user/ollama-cloud-mesh-gpus.service"
    verified = verify_unit(path)
    assert verified.returncode == 0, verified.stderr
    assert exec_start_argv(path.read_text()) == [
        str(OLLAMA_CLOUD), "mesh", "--hosts", "gpu-*", "--log-level", "info",
    ]  # fmt: skip
    env_file = tmp_path / "home/.config/ollama-cloud/mesh-gpus.env"
    assert environment_as_read(env_file)["OLLAMA_CLOUD_REDIS_URL"] == REDIS_URL


def test_an_argument_systemd_would_expand_is_written_to_reach_the_program_as_it_is(
    tmp_path: Path, verify_unit: Any
) -> None:
    unit = a_service(tmp_path, "systemd", "mesh")
    odd = ["a b", "$HOME", "100%", 'say "hi"', "back\\slash", ";"]
    program = Program("odd", [str(OLLAMA_CLOUD), *odd], {})
    service.install(unit, program, start=False, runner=refuse)
    assert verify_unit(unit.definition_path).returncode == 0
    assert exec_start_argv(unit.definition_path.read_text()) == [str(OLLAMA_CLOUD), *odd]


def test_systemd_reloads_enables_and_restarts_it_and_disables_it(tmp_path: Path) -> None:
    unit = a_service(tmp_path, "systemd")
    runner = Recorder()
    service.install(unit, worker(), runner=runner)
    name = "ollama-cloud-worker-mac-1.service"
    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", name],
        ["systemctl", "--user", "restart", name],
    ]

    runner = Recorder()
    report = service.uninstall(unit, runner=runner)
    assert runner.calls == [
        ["systemctl", "--user", "disable", "--now", name],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert not unit.definition_path.exists()
    assert unit.environment_path is not None and not unit.environment_path.exists()
    assert f"removed {unit.environment_path}" in report


def test_a_failed_start_says_why_and_keeps_the_files(tmp_path: Path) -> None:
    unit = a_service(tmp_path, "systemd")
    runner = Recorder(fail=["systemctl"], stderr="Failed to connect to bus: No medium found")
    with pytest.raises(ServiceError, match="Failed to connect to bus") as raised:
        service.install(unit, worker(), runner=runner)
    assert "daemon-reload" in str(raised.value)
    assert unit.definition_path.exists()


# Installing again, uninstalling ------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_installing_twice_replaces_the_settings_and_uninstall_is_idempotent(
    tmp_path: Path, platform: service.Platform
) -> None:
    target = a_service(tmp_path, platform)
    service.install(target, worker(), start=False, runner=refuse)
    changed = {**SETTINGS, "OLLAMA_CLOUD_CAPACITY": "3"}
    service.install(target, worker(changed), start=False, runner=refuse)

    settings_file = target.environment_path or target.definition_path
    assert mode_of(settings_file) == 0o600
    if platform == "launchd":
        capacity = read_plist(settings_file)["EnvironmentVariables"]["OLLAMA_CLOUD_CAPACITY"]
    else:
        capacity = environment_as_read(settings_file)["OLLAMA_CLOUD_CAPACITY"]
    assert capacity == "3"
    assert sorted(p.name for p in settings_file.parent.iterdir()) == [settings_file.name]

    removed = service.uninstall(target, stop=False, runner=refuse)
    assert f"removed {target.definition_path}" in removed
    assert not target.definition_path.exists() and not settings_file.exists()
    again = service.uninstall(target, stop=False, runner=refuse)
    assert again == [f"nothing installed as {target.title}"]


def test_no_start_runs_no_service_manager(tmp_path: Path) -> None:
    platforms: tuple[service.Platform, ...] = ("launchd", "systemd")
    for platform in platforms:
        target = a_service(tmp_path / platform, platform)
        report = service.install(target, worker(), start=False, runner=refuse)
        assert any(line.startswith("not started") for line in report)


# What is refused, what is shown ------------------------------------------------------------------


def test_a_bad_setting_is_refused_by_its_name_without_its_value() -> None:
    with pytest.raises(ServiceError) as raised:
        service.settings_environment({**SETTINGS, "OLLAMA_CLOUD_CAPACITY": "zero"})
    assert "OLLAMA_CLOUD_CAPACITY" in str(raised.value)
    assert PASSWORD not in str(raised.value) and "zero" not in str(raised.value)


def test_settings_come_from_the_given_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_CLOUD_CAPACITY", "zero")  # not the one given: not read
    config = service.settings_environment({"OLLAMA_CLOUD_CONFIG": "settings.toml"})
    assert config == {"OLLAMA_CLOUD_CONFIG": str(Path.cwd() / "settings.toml")}


@pytest.mark.parametrize("name", ["a/b", "../up", "", "-dash", "two words", "x" * 101])
def test_a_name_that_cannot_name_a_file_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ServiceError, match="cannot name a service"):
        service.worker_program(name, {})
    with pytest.raises(ServiceError, match="cannot name a service"):
        a_service(tmp_path, "systemd", "mesh", name)


def test_mesh_needs_nodes_and_ports_that_are_ports() -> None:
    with pytest.raises(ServiceError, match="name the nodes"):
        service.mesh_program({})
    with pytest.raises(ServiceError, match="--port"):
        service.mesh_program({}, hosts=["mac-*"], ports=["gpu-1=eighty"])
    with pytest.raises(ServiceError, match="--port"):
        service.mesh_program({}, hosts=["mac-*"], ports=["70000"])


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_the_preview_masks_secrets_and_writes_nothing(
    tmp_path: Path, platform: service.Platform
) -> None:
    target = a_service(tmp_path, platform)
    settings = {**SETTINGS, "OLLAMA_CLOUD_QUEUE_TOKEN": "site-token-123"}
    shown = service.preview(target, worker(settings))
    assert str(target.definition_path) in shown
    assert "redis://:***@orchestrator.example:6379/0" in shown
    assert PASSWORD not in shown and "site-token-123" not in shown
    assert "OLLAMA_CLOUD_QUEUE_TOKEN" in shown
    assert not (tmp_path / "home").exists()


def test_the_command_line_prints_files_and_refuses_misplaced_mesh_options(
    tmp_path: Path,
) -> None:
    env = {"HOME": str(tmp_path), "OLLAMA_CLOUD_REDIS_URL": REDIS_URL}
    shown = CliRunner().invoke(
        app, ["worker", "install", "-Q", "mac-1", "--platform", "launchd", "--print"], env=env
    )
    assert shown.exit_code == 0, shown.output
    assert "com.ollama-cloud.worker.mac-1" in shown.output and PASSWORD not in shown.output
    assert not (tmp_path / "Library").exists()
    no_nodes = CliRunner().invoke(app, ["mesh"], env=env)  # `mesh` alone runs a mesh, of none
    assert no_nodes.exit_code == 2 and "name the nodes" in no_nodes.output
    misplaced = CliRunner().invoke(app, ["mesh", "--hosts", "mac-*", "install"], env=env)
    assert misplaced.exit_code == 2
    assert "after `mesh install`" in misplaced.output
    refused = CliRunner().invoke(
        app, ["worker", "uninstall", "-Q", "mac/1", "--platform", "systemd"], env=env
    )
    assert refused.exit_code == 1


# The real command, and the service's command run as the manager would run it ---------------------


@pytest.mark.e2e
def test_worker_install_from_the_command_line_writes_a_user_unit(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_CLOUD_")},
        "HOME": str(tmp_path),
        **SETTINGS,
    }
    argv = [str(OLLAMA_CLOUD), "worker", "install", "--queue", "mac-1"]
    done = subprocess.run(
        [*argv, "--platform", "systemd", "--no-start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    unit = tmp_path / ".config/systemd/user/ollama-cloud-worker-mac-1.service"
    env_file = tmp_path / ".config/ollama-cloud/worker-mac-1.env"
    assert f"wrote {env_file} (mode 0600)" in done.stdout
    assert f"wrote {unit}" in done.stdout
    assert f"loginctl enable-linger {getpass.getuser()}" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    assert mode_of(env_file) == 0o600
    assert environment_as_read(env_file)["OLLAMA_CLOUD_REDIS_URL"] == REDIS_URL
    assert unit_values(unit.read_text())["Restart"] == "always"


# The command line as a Mac runs it, without the host's packages.
ON_A_MAC = as_on_a_mac("from orchestrator.cli import app\napp(sys.argv[1:])\n", "standins")


@pytest.mark.e2e
def test_install_needs_nothing_but_a_macs_packages(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], **SETTINGS}
    for command in (
        ["worker", "install", "-Q", "mac-1", "--platform", "launchd", "--no-start"],
        ["mesh", "install", "--hosts", "mac-*", "--platform", "launchd", "--no-start"],
        ["worker", "uninstall", "-Q", "mac-1", "--platform", "launchd", "--no-stop"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", ON_A_MAC, *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert "not installed on a Mac" not in done.stderr
    agents = tmp_path / "Library/LaunchAgents"
    assert [path.name for path in agents.iterdir()] == ["com.ollama-cloud.mesh.plist"]


@pytest.fixture
def simulated_ollama() -> Iterator[str]:
    with SimulatorFleet([SimServerSpec(name="mac-1", models=["llama3.2:3b"])]) as fleet:
        yield fleet.urls["mac-1"]


@pytest.mark.e2e
@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_the_services_command_brings_the_worker_online(
    tmp_path: Path, redis_url: str, simulated_ollama: str, platform: service.Platform
) -> None:
    """The written command and settings, run with nothing else (no shell's environment), as
    launchd or systemd would: the server registers with the capacity the settings give."""
    settings = {
        "OLLAMA_CLOUD_REDIS_URL": redis_url,
        "OLLAMA_CLOUD_OLLAMA_URL": simulated_ollama,
        "OLLAMA_CLOUD_CAPACITY": "2",
        "OLLAMA_CLOUD_CONCURRENCY": "2",
    }
    target = a_service(tmp_path, platform)
    service.install(target, worker(settings), start=False, runner=refuse)
    (tmp_path / "home").mkdir(exist_ok=True)
    if platform == "launchd":
        plist = read_plist(target.definition_path)
        argv = plist["ProgramArguments"]
        env = plist["EnvironmentVariables"]
        cwd = plist["WorkingDirectory"]
    else:
        assert target.environment_path is not None
        argv = exec_start_argv(target.definition_path.read_text())
        env = environment_as_read(target.environment_path)
        cwd = unit_values(target.definition_path.read_text())["WorkingDirectory"]
    server = run_worker_until_registered(argv, env, cwd, redis_url, tmp_path / "worker.log")
    assert (server.id, server.capacity) == ("mac-1", 2)
