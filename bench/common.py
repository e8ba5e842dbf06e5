"""What the benches share: the models and entities they name, their messages, percentiles, command
lines and a simulated server's stats.

Each bench runs as a script (`python bench/e2e.py`) and is imported by the tests as
`bench.<name>`; either way it imports this module as `bench.common` (a script first puts the
project root on `sys.path`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import httpx

from orchestrator.domain.messages import BotParams, NewMessage

LLAMA = "llama3.2:3b"  # the-eternal's model, and the EQ scorer's
QWEN = "qwen2.5:7b"  # the-critic's
ETERNAL = "the-eternal"
CRITIC = "the-critic"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The system's Chromium, headless, as root, on a machine with no way out: what every start needs
# so it neither sandboxes (root) nor reaches for Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def system_chromium() -> str | None:
    """The system's Chromium (Debian's package: `make browser`); never a downloaded one."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    return found


def chat_message(
    message_id: str,
    text: str,
    entity: str,
    *,
    username: str = "bench",
    color: str = "",
    context: list[str] | None = None,
    human_username: str | None = None,
) -> NewMessage:
    """A human message for `entity`, as a bench posts it to the site queue."""
    return NewMessage(
        id=message_id,
        text=text,
        username=username,
        color=color,
        context=context,
        botParams=BotParams(entity=entity, humanUsername=human_username),
    )


def bench_message(prefix: str, index: int, label: str = "bench") -> NewMessage:
    """Message `index` of a bench's run, `{prefix}-{index}`, for the-eternal and the-critic in
    turn, with a short context."""
    return chat_message(
        f"{prefix}-{index}",
        f"{label} message {index}",
        ETERNAL if index % 2 else CRITIC,
        color="080150227",
        context=["other: hello", "bench: hi"],
        human_username="bench",
    )


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` (0..1) of the sorted values: the nearest rank, no interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A bench's command line, its module docstring as the help."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def kept_dir(text: str) -> Path:
    """`--keep-dir DIR`: the folder for the stack's logs and data, made if missing."""
    path = Path(text)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sim_stats(url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """A simulated server's `/sim/stats`; None when it does not answer (stopped, restarting)."""
    try:
        answer = httpx.get(f"{url}/sim/stats", timeout=timeout)
        answer.raise_for_status()
        stats = answer.json()
    except (httpx.HTTPError, ValueError):
        return None
    return stats if isinstance(stats, dict) else None
