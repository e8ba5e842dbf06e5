"""Progress of long work: plain lines now and then when piped, rich's bar on a terminal."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from rich.console import Console

from standins.progress import ProgressReport


class Clock:
    """Time that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_each_tenth_not_each_step() -> None:
    stream = StringIO()
    with ProgressReport("replies", total=200, console=Console(file=stream)) as progress:
        for _ in range(200):
            progress.advance()
    lines = stream.getvalue().splitlines()
    assert 9 <= len(lines) <= 11
    assert lines[0].startswith("replies: 20/200 (10%)")
    assert lines[-1].startswith("replies: 200/200 (100%)")
    assert "\x1b" not in stream.getvalue()  # no terminal codes in a file


def test_plain_lines_every_few_seconds_without_a_total() -> None:
    stream, clock = StringIO(), Clock()
    with ProgressReport("messages", console=Console(file=stream), clock=clock) as progress:
        for count in range(1, 31):
            clock.now += 1.0
            progress.update(count, note=f"{count} answered")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "messages: 5 5 answered, 5s",
        "messages: 10 10 answered, 10s",
        "messages: 15 15 answered, 15s",
        "messages: 20 20 answered, 20s",
        "messages: 25 25 answered, 25s",
        "messages: 30 30 answered, 30s",
    ]


def test_plain_final_line_when_the_work_ends_between_steps() -> None:
    stream = StringIO()
    with ProgressReport("jobs", total=100, console=Console(file=stream)) as progress:
        progress.update(55, note="mac-1 slow")
        progress.update(57)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("jobs: 55/100 (55%) mac-1 slow")
    assert lines[-1].startswith("jobs: 57/100 (57%) mac-1 slow")
    assert len(lines) == 2


def test_default_goes_to_stderr_never_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with ProgressReport("posted", total=10) as progress:
        for _ in range(10):
            progress.advance()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "posted: 10/10 (100%)" in captured.err


def test_rich_bar_on_a_terminal() -> None:
    stream = StringIO()
    console = Console(force_terminal=True, file=stream, width=120)
    with ProgressReport("replies", total=10, console=console) as progress:
        progress.update(4, note="mac-studio busy")
        progress.advance(6)
    output = stream.getvalue()
    assert "\x1b[" in output  # drawn with terminal codes
    assert "━" in output  # the bar
    assert re.search(r"replies .*10/10", output)
    assert "mac-studio busy" in output
    assert "replies: " not in output  # no plain line besides the bar


def test_rich_bar_shown_in_a_live_display_of_ones_own() -> None:
    stream = StringIO()
    console = Console(force_terminal=True, file=stream, width=120)
    with ProgressReport("replies", total=8, console=console, live=False) as progress:
        progress.update(3)
        assert progress.renderable is not None
        console.print(progress.renderable)
    assert re.search(r"replies .*3/8", stream.getvalue())


def test_no_renderable_off_a_terminal() -> None:
    stream = StringIO()
    with ProgressReport("replies", total=8, console=Console(file=stream), live=False) as progress:
        progress.update(8)
        assert progress.renderable is None
    assert stream.getvalue().startswith("replies: 8/8 (100%)")


def test_no_plain_lines_for_a_caller_that_writes_its_own() -> None:
    stream = StringIO()
    with ProgressReport("jobs", total=10, console=Console(file=stream), plain=False) as progress:
        for _ in range(10):
            progress.advance()
    assert stream.getvalue() == ""
    terminal = StringIO()
    console = Console(force_terminal=True, file=terminal, width=120)
    with ProgressReport("jobs", total=10, console=console, plain=False) as progress:
        progress.update(10)
    assert "10/10" in terminal.getvalue()
