"""What the model says: the deterministic reply text, cut at stop sequences."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from standins.simulator.requests import Ask

VOCABULARY = (
    "the", "river", "light", "quiet", "stone", "morning", "we", "carry", "small", "bright",
    "and", "over", "garden", "slowly", "open", "sky", "of", "kind", "wind", "remember",
    "a", "window", "warm", "listen", "between", "paths", "gentle", "home", "is", "soft",
    "mountain", "together",
)  # fmt: skip
SIM_SAY = re.compile(r"sim-say:(.*)", re.DOTALL)
TOKEN = re.compile(r"\s*\S+")


@dataclass
class Reply:
    tokens: list[str]
    done_reason: str

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _cut_at_stop(text: str, stop: list[str]) -> str | None:
    cuts = [text.index(sequence) for sequence in stop if sequence in text]
    return text[: min(cuts)] if cuts else None


def compose_reply(ask: Ask) -> Reply:
    """The deterministic reply: a directive's text, a score, or hashed vocabulary words."""
    said = SIM_SAY.search(ask.last_user)
    if said:
        text, done_reason = said.group(1).strip(), "stop"
    elif "score" in ask.system.lower():
        seed = hashlib.sha256(ask.last_user.encode()).digest()
        text, done_reason = f"Score: {int.from_bytes(seed[:4], 'big') % 100 + 1}", "stop"
    else:
        seed = hashlib.sha256(f"{ask.model}\0{ask.variant}\0{ask.last_user}".encode()).digest()
        rng = random.Random(int.from_bytes(seed[:8], "big"))
        text = " ".join(rng.choice(VOCABULARY) for _ in range(ask.num_predict))
        done_reason = "length"
    cut = _cut_at_stop(text, ask.stop)
    if cut is not None:
        text, done_reason = cut.rstrip(), "stop"
    return Reply(TOKEN.findall(text), done_reason)
