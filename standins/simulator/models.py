"""Model names as Ollama reads them, and fake but well-formed metadata: digests, sizes, details."""

from __future__ import annotations

import hashlib
import re
from typing import Any

# Ollama clamps num_ctx to what the model was trained for; this also bounds num_predict.
MAX_NUM_CTX = 131_072


def canonical_model(name: str) -> str:
    """Ollama's name rule: a model without a tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def model_digest(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()


def parameter_billions(model: str) -> float:
    found = re.search(r":(\d+(?:\.\d+)?)b\b", model.lower())
    return float(found.group(1)) if found else 7.0


def model_size(model: str) -> int:
    # About 0.6 bytes per parameter at Q4_K_M, plus a name-derived spread so sizes differ.
    return int(parameter_billions(model) * 0.6e9) + int(model_digest(model)[:6], 16)


def model_details(model: str) -> dict[str, Any]:
    found = re.match(r"[a-z]+", model.rsplit("/", 1)[-1].lower())
    family = found.group(0) if found else "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": f"{parameter_billions(model):g}B",
        "quantization_level": "Q4_K_M",
    }
