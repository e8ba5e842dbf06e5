"""The faults a simulated server can be told to inject: by a `sim-error:NNN` directive in the
last user message, or through `/sim/faults` (fail or hang the next requests)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

SIM_ERROR = re.compile(r"sim-error:(\d{3})")


class FaultsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_next: int | None = Field(default=None, ge=0)
    status: int | None = Field(default=None, ge=400, le=599)
    error: str | None = None
    hang_next: int | None = Field(default=None, ge=0)
    hang_model: str | None = None  # hang only requests for this model (any model when unset)
    clear: bool = False


@dataclass
class Faults:
    fail_next: int = 0
    status: int = 500
    error: str | None = None
    hang_next: int = 0
    hang_model: str | None = None
