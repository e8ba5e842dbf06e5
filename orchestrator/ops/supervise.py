"""`ollama-cloud supervise -- CMD ...`: run one command, and start it again whenever it exits.

Honcho stops every process of the host when one exits; under this supervisor a crashed bridge,
worker or beat comes back instead, after a pause that doubles while it keeps crashing. A stop
signal (SIGTERM, SIGINT, SIGHUP) goes to the command, and then the supervisor exits with 0.

The command stays in the supervisor's process group, so whoever signals the group (honcho's
SIGTERM then SIGKILL, a terminal's Ctrl-C) reaches it too and it is never left behind.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import select
import shlex
import signal
import subprocess
import time
from types import FrameType

from workers.contract import logs

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
# A command that ran this long was healthy: its next exit starts the backoff again from the first.
HEALTHY_RUN = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What a shell answers for a command it cannot run: not found, and found but not runnable.
EXIT_NOT_FOUND = 127
EXIT_NOT_RUNNABLE = 126


def next_backoff(previous: float | None, ran_for: float, max_backoff: float) -> float:
    """The pause before the next start: the first pause after a first exit or a healthy run,
    else twice the previous one; never more than `max_backoff`."""
    if previous is None or ran_for >= HEALTHY_RUN:
        return min(FIRST_BACKOFF, max_backoff)
    return min(previous * 2, max_backoff)


def describe_exit(returncode: int) -> str:
    """`exited with code 3`, or `killed by SIGKILL` (Popen's negative return code)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


class Supervisor:
    """Starts `argv`, waits for it, and starts it again until a stop signal arrives.

    Signal handlers only record the signal and write a byte to a pipe; the main loop waits on
    that pipe, so every decision (forward, stop, restart) is taken in one place, in order."""

    def __init__(self, argv: list[str], max_backoff: float, grace: float) -> None:
        self.argv = argv
        self.max_backoff = max_backoff
        self.grace = grace
        self.stop_signal: signal.Signals | None = None
        self._received: collections.deque[signal.Signals] = collections.deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)

    def run(self) -> int:
        handled = (*STOP_SIGNALS, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        try:
            return self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _loop(self) -> int:
        backoff: float | None = None
        while True:
            try:
                child = subprocess.Popen(self.argv)
            except OSError as exc:
                log.error("cannot start %s: %s", shlex.quote(self.argv[0]), exc.strerror or exc)
                return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_RUNNABLE
            started = time.monotonic()
            log.info("started pid=%d: %s", child.pid, shlex.join(self.argv))
            returncode = self._wait_for(child)
            ran_for = time.monotonic() - started
            outcome = f"pid={child.pid} {describe_exit(returncode)} after {ran_for:.1f}s"
            if self.stop_signal is not None:
                log.info("%s; stopped by %s, not restarting", outcome, self.stop_signal.name)
                return 0
            backoff = next_backoff(backoff, ran_for, self.max_backoff)
            log.warning("%s; next start in %gs", outcome, backoff)
            stopped_by = self._pause(backoff)
            if stopped_by is not None:
                log.info("stopped by %s before the next start", stopped_by.name)
                return 0

    def _wait_for(self, child: subprocess.Popen[bytes]) -> int:
        """The child's return code, once it exits; after a stop signal, SIGKILL it (by its pid)
        if it is still running `grace` seconds later."""
        deadline: float | None = None
        while True:
            for signum in self._take_signals():
                log.info("%s received: forwarded to pid=%d", signum.name, child.pid)
                child.send_signal(signum)
                if deadline is None:
                    deadline = time.monotonic() + self.grace
            returncode = child.poll()
            if returncode is not None:
                return returncode
            if deadline is not None and time.monotonic() >= deadline:
                log.warning(
                    "pid=%d still running %gs after a stop signal: SIGKILL", child.pid, self.grace
                )
                child.kill()
                return child.wait()
            self._sleep(None if deadline is None else deadline - time.monotonic())

    def _pause(self, seconds: float) -> signal.Signals | None:
        """Wait `seconds` before the next start, or return the stop signal that came meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            self._take_signals()
            if self.stop_signal is not None:
                return self.stop_signal
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sleep(remaining)

    def _take_signals(self) -> list[signal.Signals]:
        """The stop signals received since the last call; the first one also stops the loop."""
        taken: list[signal.Signals] = []
        while self._received:
            taken.append(self._received.popleft())
        if taken and self.stop_signal is None:
            self.stop_signal = taken[0]
        return taken

    def _sleep(self, timeout: float | None) -> None:
        """Until a signal arrives (a stop signal, or SIGCHLD when the child exits) or `timeout`."""
        select.select([self._wake_read], [], [], None if timeout is None else max(timeout, 0))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 512):
                pass

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self._received.append(signal.Signals(signum))
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")


def supervise_command(argv: list[str], max_backoff: float = 30.0, grace: float = 10.0) -> int:
    """Run `argv` until a stop signal: 0 then, 127 or 126 when it cannot be started at all."""
    return Supervisor(argv, max_backoff, grace).run()


def main(args: list[str]) -> int:
    """`ollama-cloud supervise [options] -- COMMAND ...`, parsed here rather than by the command
    line's full parser: one supervisor runs beside every process of the host, so it loads no
    more than it uses (about 13 MB rather than 60). Its log lines take the log format of the
    processes it runs (OLLAMA_CLOUD_LOG_FORMAT, `--log-format`)."""
    parser = argparse.ArgumentParser(
        prog="ollama-cloud supervise",
        description="Run COMMAND and start it again whenever it exits (after 1 s, 2 s, 4 s ... "
        "up to --max-backoff); SIGTERM, SIGINT and SIGHUP go to it, then supervise exits with 0.",
    )
    parser.add_argument(
        "--max-backoff", type=float, default=30.0, help="Longest pause between restarts, in s"
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="Seconds to exit after a stop signal, else KILL"
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default=os.environ.get(logs.LOG_FORMAT_VARIABLE, "text"),
        help="text, or one JSON object per line (else OLLAMA_CLOUD_LOG_FORMAT)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND and its arguments")
    options = parser.parse_args(args)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("name the command to run after --")
    if options.max_backoff < 0.1 or options.grace < 0:
        parser.error("--max-backoff is at least 0.1 and --grace at least 0")
    if options.log_format not in logs.LOG_FORMATS:
        parser.error(f"{logs.LOG_FORMAT_VARIABLE} is text or json")
    logs.configure(options.log_level, options.log_format, "supervise")
    return supervise_command(command, max_backoff=options.max_backoff, grace=options.grace)
