"""Processes the demo, the tests and the benches start: each owned, and stopped by its own pid."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def python_command(*args: str) -> list[str]:
    """A command run by this interpreter, so the children share our environment and packages."""
    return [sys.executable, *args]


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False  # stopped on purpose: its exit is not a crash

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.stopped = False
        with open(self.log_path, "ab") as log_file:
            # A session of its own: Ctrl-C reaches the parent, which stops each child by its pid.
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.debug("started %s pid=%d: %s", self.name, self.process.pid, " ".join(self.argv))

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a warm shutdown for Celery), then SIGKILL if it does not go in time."""
        self.stopped = True
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s pid=%d did not stop in %.0fs: killed", self.name, self.process.pid, timeout
                )
                self.signal(signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing of the process runs after it."""
        self.stopped = True
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessGroup:
    """Processes started in order and stopped in reverse order."""

    def __init__(self) -> None:
        self.processes: dict[str, ManagedProcess] = {}

    def add(self, process: ManagedProcess) -> ManagedProcess:
        if process.name in self.processes and self.processes[process.name].running:
            raise RuntimeError(f"{process.name} is already running")
        self.processes[process.name] = process
        process.start()
        return process

    def __getitem__(self, name: str) -> ManagedProcess:
        return self.processes[name]

    def stop_all(self) -> None:
        for process in reversed(list(self.processes.values())):
            try:
                process.stop()
            except Exception:
                log.exception("could not stop %s", process.name)

    def crashed(self) -> list[ManagedProcess]:
        """Processes that exited without being stopped."""
        return [
            process
            for process in self.processes.values()
            if process.process is not None and not process.running and not process.stopped
        ]
