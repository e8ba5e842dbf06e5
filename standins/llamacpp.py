"""The demo's world on llama.cpp, as the site's operator runs it: one llama-server per model,
started on demand by a pool manager, and the same entities named as their llama.cpp files
name their models (`baseModel` and `defaultQuantization`: the key `the-eternal-f16`)."""

from __future__ import annotations

import json
from pathlib import Path

from standins import SAMPLE_ENTITIES_DIR
from standins.simulator import SimServerSpec

QUANTIZATION = "f16"
SCORER_SLOTS = 10  # the pool's PARALLEL_SLOTS for the scorer; every other model has one


def model_key(entity_id: str) -> str:
    return f"{entity_id}-{QUANTIZATION}"


def write_entities(target: Path) -> Path:
    """The sample entities in `target`, each naming its model by `baseModel` and
    `defaultQuantization` instead of an Ollama model name."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(SAMPLE_ENTITIES_DIR.glob("*.json")):
        fields = json.loads(source.read_text())
        if source.stem != "global":
            fields.pop("model", None)
            fields["baseModel"] = source.stem
            fields["defaultQuantization"] = QUANTIZATION
        (target / source.name).write_text(json.dumps(fields, indent=2) + "\n")
    return target


def entity_models() -> list[str]:
    return [model_key(path.stem) for path in sorted(SAMPLE_ENTITIES_DIR.glob("*.json"))]


def llamacpp_fleet() -> list[SimServerSpec]:
    """A Mac Studio with a pool manager that runs two model servers at once (so the three
    models take turns, with evictions), and a Mac mini with one llama-server for one model."""
    models = entity_models()
    return [
        SimServerSpec(
            name="mac-studio", kind="pool", models=models, tokens_per_second=90,
            load_seconds=2.0, max_servers=2, slots={model_key("eq-score"): SCORER_SLOTS},
        ),
        SimServerSpec(
            name="mac-mini", kind="llamacpp", models=[model_key("the-eternal")],
            tokens_per_second=40, load_seconds=1.5, parallel=2,
        ),
    ]  # fmt: skip
