"""`ollama-cloud supervise` and the Procfile: a crashed process comes back, a stop signal stops
it for good, and Flower's password never reaches a command line."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from orchestrator.ops.supervise import HEALTHY_RUN, describe_exit, next_backoff
from standins.embedded_redis import free_port
from standins.waiting import wait_for
from workers.contract import logs
from workers.contract.settings import ENV_PREFIX, CelerySettings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HAS_PROC = Path("/proc/self/cmdline").exists()

# The supervised child: appends its pid to a file, exits with the codes given for its first runs
# (one run each), then sleeps; `ignore-term` makes it deaf to SIGTERM.
CHILD = """
import os, signal, sys, time
pid_file, *codes = sys.argv[1:]
if codes and codes[0] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    codes = codes[1:]
with open(pid_file, "a") as f:
    f.write(f"{os.getpid()}\\n")
with open(pid_file) as f:
    runs = len(f.read().split())
if runs <= len(codes):
    sys.exit(int(codes[runs - 1]))
time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Running or not yet reaped (a zombie still has its /proc entry)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Supervised:
    """`ollama-cloud supervise [options] -- python CHILD pid_file [codes...]`, in a session of its
    own; every process it leaves behind is stopped by its pid."""

    def __init__(self, tmp_path: Path, options: list[str], child_args: list[str]) -> None:
        self.pid_file = tmp_path / "child.pids"
        self.log_path = tmp_path / "supervise.log"
        argv = [
            sys.executable, "-m", "orchestrator", "supervise", *options,
            "--", sys.executable, "-c", CHILD, str(self.pid_file), *child_args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def child_pids(self) -> list[int]:
        try:
            return [int(word) for word in self.pid_file.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_for_children(self, count: int, timeout: float = 30.0) -> list[int]:
        def started() -> list[int] | None:
            assert self.process.poll() is None, self.log()
            pids = self.child_pids()
            return pids if len(pids) >= count else None

        return wait_for(started, timeout, what=f"{count} child starts")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        wait_for(lambda: text in self.log(), timeout, what=repr(text))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        marker = str(self.pid_file).encode()
        for pid in self.child_pids():
            if alive(pid) and marker in cmdline(pid):  # ours, not a reused pid
                os.kill(pid, signal.SIGKILL)


class Start(Protocol):
    def __call__(self, options: list[str], child_args: list[str] | None = None) -> Supervised: ...


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Start]:
    """Starts a supervisor (at most one per test: they share the pid file)."""
    started: list[Supervised] = []

    def start(options: list[str], child_args: list[str] | None = None) -> Supervised:
        started.append(Supervised(tmp_path, options, child_args or []))
        return started[-1]

    yield start
    for supervised in started:
        supervised.cleanup()


# The backoff, as plain values -------------------------------------------------------------------


def test_the_backoff_doubles_from_one_second_up_to_its_cap() -> None:
    pauses: list[float] = []
    previous = None
    for _ in range(7):
        previous = next_backoff(previous, ran_for=0.5, max_backoff=30)
        pauses.append(previous)
    assert pauses == [1, 2, 4, 8, 16, 30, 30]


def test_a_healthy_run_starts_the_backoff_again() -> None:
    assert next_backoff(16, ran_for=HEALTHY_RUN, max_backoff=30) == 1
    assert next_backoff(16, ran_for=HEALTHY_RUN - 1, max_backoff=30) == 30
    assert next_backoff(None, ran_for=0, max_backoff=0.2) == 0.2


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


# The supervisor, as a process ----------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_PROC, reason="reads /proc")
def test_a_killed_child_comes_back_and_sigterm_stops_both(supervise: Start) -> None:
    supervised = supervise(["--max-backoff", "0.2"])
    [first] = supervised.wait_for_children(1)
    os.kill(first, signal.SIGKILL)
    second = supervised.wait_for_children(2)[1]
    assert second != first
    assert alive(second)
    supervised.wait_for_log(f"started pid={second}")

    supervised.signal(signal.SIGTERM)
    assert supervised.wait() == 0
    assert not alive(second), "the supervisor exited and left its child running"
    assert supervised.child_pids() == [first, second], "restarted after SIGTERM"
    log = supervised.log()
    assert f"pid={first} killed by SIGKILL" in log
    assert "next start in 0.2s" in log
    assert f"SIGTERM received: forwarded to pid={second}" in log
    assert f"pid={second} killed by SIGTERM" in log
    assert "stopped by SIGTERM, not restarting" in log


@pytest.mark.e2e
def test_a_child_that_exits_on_its_own_is_restarted_whatever_its_code(
    supervise: Start,
) -> None:
    supervised = supervise(["--max-backoff", "0.2"], ["0", "3"])
    first, second, third = supervised.wait_for_children(3)
    log = supervised.log()
    assert f"pid={first} exited with code 0" in log
    assert f"pid={second} exited with code 3" in log
    supervised.signal(signal.SIGINT)
    assert supervised.wait() == 0
    assert not alive(third)
    assert "stopped by SIGINT, not restarting" in supervised.log()


@pytest.mark.e2e
def test_a_child_deaf_to_sigterm_is_killed_after_the_grace_period(
    supervise: Start,
) -> None:
    supervised = supervise(["--grace", "0.5"], ["ignore-term"])
    [child] = supervised.wait_for_children(1)
    supervised.wait_for_log(f"started pid={child}")
    supervised.signal(signal.SIGTERM)
    assert supervised.wait() == 0
    assert not alive(child)
    log = supervised.log()
    assert f"pid={child} still running 0.5s after a stop signal: SIGKILL" in log
    assert f"pid={child} killed by SIGKILL" in log
    assert supervised.child_pids() == [child]


@pytest.mark.e2e
def test_sigterm_during_the_pause_stops_without_another_start(
    supervise: Start,
) -> None:
    supervised = supervise([], ["3"])  # the first pause is a whole second
    [child] = supervised.wait_for_children(1)
    supervised.wait_for_log("next start in 1s")
    supervised.signal(signal.SIGTERM)
    assert supervised.wait(timeout=10) == 0
    assert supervised.child_pids() == [child]
    assert "stopped by SIGTERM before the next start" in supervised.log()


@pytest.mark.e2e
def test_a_command_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    missing = f"no-such-command-{secrets.token_hex(4)}"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "supervise", "--", missing, "--flag"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 127
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"cannot start {missing}" in lines[0]
    assert "No such file or directory" in lines[0]
    assert result.stdout == ""


@pytest.mark.e2e
def test_sighup_is_forwarded_and_stops_too(supervise: Start) -> None:
    supervised = supervise(["--max-backoff", "0.2"])
    [child] = supervised.wait_for_children(1)
    supervised.wait_for_log(f"started pid={child}")
    supervised.signal(signal.SIGHUP)
    assert supervised.wait() == 0
    assert not alive(child)
    assert f"pid={child} killed by SIGHUP" in supervised.log()


# The Procfile and Flower's password ----------------------------------------------------------


def procfile() -> dict[str, str]:
    """What honcho runs: name -> the command line it gives `sh -c`."""
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name] = command.strip()
    return entries


def test_every_procfile_process_runs_under_the_supervisor() -> None:
    entries = procfile()
    assert set(entries) == {"bridge", "control", "beat", "flower", "web"}
    for name, command in entries.items():
        assert "ollama-cloud supervise -- " in command, name
    assert "ollama-cloud supervise -- ollama-cloud bridge" in entries["bridge"]


def test_flower_takes_no_password_on_its_command_line() -> None:
    flower = procfile()["flower"]
    assert "basic-auth" not in flower
    assert "basic_auth" not in flower
    # Checked by the shell before exec, so the variable's value is never expanded into an argv.
    check, run = flower.split("&&", 1)
    assert check.strip().startswith(': "${FLOWER_BASIC_AUTH:?')
    assert "FLOWER_BASIC_AUTH" not in run


def test_flower_refuses_to_start_without_its_password(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLOWER_")}
    env["PATH"] = f"{tmp_path}{os.pathsep}{env.get('PATH', '')}"
    # A `ollama-cloud` that would leave a trace, to show nothing is started.
    trace = tmp_path / "started"
    fake = tmp_path / "ollama-cloud"
    fake.write_text(f"#!/bin/sh\ntouch {trace}\n")
    fake.chmod(0o755)
    result = subprocess.run(
        ["sh", "-c", procfile()["flower"]], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password" in result.stderr
    assert not trace.exists()


def test_compose_gives_flower_its_password_in_the_environment() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    flower = compose["services"]["flower"]
    assert not any("basic" in part for part in flower["command"])
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def process_tree(root: int) -> list[int]:
    """`root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_PROC, reason="reads /proc")
def test_flowers_password_is_in_its_environment_and_in_no_argv(
    tmp_path: Path, redis_url: str
) -> None:
    """The Procfile's flower line, run as honcho runs it (`sh -c`), on a free port."""
    port = free_port()
    command = procfile()["flower"].replace("--port=5555", f"--port={port}")
    assert f"--port={port}" in command
    password = f"pw-{secrets.token_hex(12)}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLOWER_")}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "FLOWER_BASIC_AUTH": f"admin:{password}",
        "OLLAMA_CLOUD_REDIS_URL": redis_url,
    }
    with open(tmp_path / "flower.log", "wb") as log_file:
        shell = subprocess.Popen(
            ["sh", "-c", command], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def answers_401() -> bool:
            assert shell.poll() is None, (tmp_path / "flower.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 401
            return False

        wait_for(answers_401, 60, interval=0.2, what="flower to ask for a password")
        authorised = httpx.get(f"http://127.0.0.1:{port}/", auth=("admin", password), timeout=5)
        assert authorised.status_code == 200

        tree = process_tree(shell.pid)
        [flower] = [pid for pid in tree if b"flower" in cmdline(pid) and pid != shell.pid]
        assert b"supervise" in cmdline(shell.pid), "the shell did not exec the supervisor"
        for pid in tree:
            assert cmdline(pid), pid
            assert password.encode() not in cmdline(pid), cmdline(pid)
        environ = Path(f"/proc/{flower}/environ").read_bytes().split(b"\0")
        assert f"FLOWER_BASIC_AUTH=admin:{password}".encode() in environ

        os.kill(shell.pid, signal.SIGTERM)
        assert shell.wait(timeout=30) == 0
        assert not alive(flower)
    finally:
        if shell.poll() is None:  # stop what it started, each by its pid, then the supervisor
            for pid in reversed(process_tree(shell.pid)[1:]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shell.kill()
            shell.wait()


def test_the_supervisors_log_format_is_the_settings() -> None:
    """The supervisor reads the log format's variable itself, without loading the settings."""
    assert f"{ENV_PREFIX}{'log_format'.upper()}" == logs.LOG_FORMAT_VARIABLE
    assert "log_format" in CelerySettings.model_fields


def test_a_supervisor_loads_little(tmp_path: Path) -> None:
    """One runs beside every process of the host: it must not load the whole command line."""
    probe = (
        "import sys, runpy; sys.argv = ['ollama-cloud', 'supervise', '--help']\n"
        "try:\n    runpy.run_module('orchestrator', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'typer', 'pydantic', 'celery', 'redis', 'httpx', 'rich'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--max-backoff" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
