"""The system's Redis scripts: one `.lua` file each in `lua/`, loaded by name.

Each file opens with a header: what the script does, then one line for each of its KEYS and
ARGV, then what it returns. Job states appear in the scripts by their `JobState` names
(`DISPATCHED`, `WAITING`, ...): the loader defines them from the enum before the script's own
text, so a state is spelled in one place only.
"""

from __future__ import annotations

import functools
from pathlib import Path

import redis
from redis.commands.core import Script

from workers.contract.job import JobState

LUA_DIR = Path(__file__).with_name("lua")

# One line, so that a line number Redis reports is the file's line number plus one.
_STATES = "local " + ", ".join(state.name for state in JobState) + " = "
_STATES += ", ".join(f"'{state.value}'" for state in JobState)


def script_names() -> list[str]:
    return sorted(path.stem for path in LUA_DIR.glob("*.lua"))


@functools.cache
def script_source(name: str) -> str:
    """The script as Redis runs it: the states, then the file."""
    path = LUA_DIR / f"{name}.lua"
    if not path.is_file():
        raise KeyError(f"no Redis script named {name!r} in {LUA_DIR}")
    return f"{_STATES}\n{path.read_text(encoding='utf-8')}"


def register(client: redis.Redis, name: str) -> Script:
    """The script, sent by its digest (and loaded on first use) through `client`."""
    return client.register_script(script_source(name))


def pairs_to_dict(flat: list[str]) -> dict[str, str]:
    """A hash as a script returns it (`HGETALL`'s flat list of fields and values)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
