"""The faults a simulated server can be told to inject: by a `sim-error:NNN` directive in the
last user message, or through `/sim/faults` (fail or hang the next requests, or stall the next
streams after some tokens)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__package__)  # the simulator logs as one: standins.simulator

SIM_ERROR = re.compile(r"sim-error:(\d{3})")


class FaultsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_next: int | None = Field(default=None, ge=0)
    status: int | None = Field(default=None, ge=400, le=599)
    error: str | None = None
    hang_next: int | None = Field(default=None, ge=0)
    hang_model: str | None = None  # hang only requests for this model (any model when unset)
    # The next streamed requests send this many tokens' chunks, then nothing until the client
    # gives up. With 0 not even the headers are sent (Ollama writes them with the first chunk).
    stall_next: int | None = Field(default=None, ge=0)
    stall_after_tokens: int | None = Field(default=None, ge=0)  # 1 when unset
    stall_model: str | None = None  # stall only streams of this model (any model when unset)
    clear: bool = False


@dataclass
class Faults:
    fail_next: int = 0
    status: int = 500
    error: str | None = None
    hang_next: int = 0
    hang_model: str | None = None
    stall_next: int = 0
    stall_after_tokens: int = 1
    stall_model: str | None = None

    def take_stall(self, model: str, server: str) -> int | None:
        """How many tokens a stream of `model` sends before it stalls, when a stall is asked
        for (one fewer is left then); None: it does not stall."""
        if self.stall_next <= 0 or self.stall_model not in (None, model):
            return None
        self.stall_next -= 1
        log.warning(
            "server=%s stalling a stream after %d tokens until its client gives up",
            server, self.stall_after_tokens,
        )  # fmt: skip
        return self.stall_after_tokens


def changed_faults(
    faults: Faults, change: FaultsBody, model_name: Callable[[str], str] = str
) -> Faults:
    """The faults after a `/sim/faults` change; `model_name` spells a model as the server does."""
    if change.clear:
        faults = Faults()
    if change.fail_next is not None:
        faults.fail_next = change.fail_next
        faults.status = change.status or 500
        faults.error = change.error
    if change.hang_next is not None:
        faults.hang_next = change.hang_next
        faults.hang_model = model_name(change.hang_model) if change.hang_model else None
    if change.stall_next is not None:
        faults.stall_next = change.stall_next
        after = change.stall_after_tokens
        faults.stall_after_tokens = 1 if after is None else after
        faults.stall_model = model_name(change.stall_model) if change.stall_model else None
    return faults
