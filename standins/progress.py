"""Progress of long work: a bar on a terminal, a plain line now and then anywhere else.

The benches print one JSON object on stdout, so progress goes to stderr unless a console is
given. On a terminal it is rich's bar; piped or logged, one line each tenth of the way or every
few seconds, never one a step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

# Plain lines: one each time another tenth is done, and at least this often while work goes on.
PLAIN_STEP = 0.1
PLAIN_EVERY_S = 5.0


def shown(value: float) -> str:
    """A count as people write it: `12`, or `2.5` when it is not whole."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


class ProgressReport:
    """`with ProgressReport("replies", total=50) as progress: ... progress.advance()`.

    `console`: where it goes (stderr by default). `live`: whether the bar draws itself; a
    caller with a live display of its own passes False and shows `renderable` in it (plain
    lines are written either way when the console is no terminal). `plain`: False for a
    caller that writes lines of its own when there is no terminal (the bar alone, then).
    `total` may be None (work without an end): the bar pulses, and the plain lines count.
    """

    def __init__(
        self,
        what: str,
        total: float | None = None,
        *,
        console: Console | None = None,
        live: bool = True,
        plain: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = total
        self.done = 0.0
        self.note = ""
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.started = clock()
        self._last_line_at = self.started
        self._last_written: tuple[float, float | None, str] | None = None
        self._next_step = PLAIN_STEP
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._live = live
        self._plain = plain
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"),
                console=self.console,
                redirect_stdout=False,  # stdout is the caller's own (a bench's JSON)
            )
            self._task = self._bar.add_task(what, total=total, note="")

    @property
    def renderable(self) -> RenderableType | None:
        """The bar, for a caller's own live display; None when the console is no terminal."""
        return self._bar

    def __enter__(self) -> ProgressReport:
        self.started = self._last_line_at = self.clock()
        if self._bar is not None and self._live:
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            if self._live:
                self._bar.stop()
            return
        if self._plain and self._last_written != (self.done, self.total, self.note):
            self._write(self.line())

    def advance(self, amount: float = 1) -> None:
        self.update(self.done + amount)

    def update(self, done: float, total: float | None = None, note: str | None = None) -> None:
        """`done` of `total` (the total so far when None); `note`: a few words on the side."""
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, total=self.total, note=self.note)
            return
        if not self._plain:
            return
        now = self.clock()
        stepped = bool(self.total) and done / (self.total or 1) >= self._next_step
        if stepped or now - self._last_line_at >= PLAIN_EVERY_S:
            if self.total:
                self._next_step = (int(done / self.total / PLAIN_STEP) + 1) * PLAIN_STEP
            self._write(self.line())

    def line(self) -> str:
        """`replies: 20/50 (40%) mac-1 busy, 12s`."""
        parts = [f"{self.what}: {shown(self.done)}"]
        if self.total:
            parts[0] += f"/{shown(self.total)} ({self.done / self.total:.0%})"
        if self.note:
            parts.append(self.note)
        return " ".join(parts) + f", {self.clock() - self.started:.0f}s"

    def _write(self, line: str) -> None:
        self._last_written = (self.done, self.total, self.note)
        self._last_line_at = self.clock()
        self.console.file.write(line + "\n")
        self.console.file.flush()
