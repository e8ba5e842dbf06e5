"""What one simulated server is (SimServerSpec) and the `key=value,...` text that describes it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from standins.simulator.models import MAX_NUM_CTX, canonical_model


class SimServerSpec(BaseModel):
    """One simulated Ollama server: its models, its speed and its limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    models: list[str] = Field(min_length=1)
    loaded: list[str] = []
    tokens_per_second: float = Field(default=0.0, ge=0)
    load_seconds: float = Field(default=0.0, ge=0)
    parallel: int = Field(default=4, ge=1)
    max_queue: int = Field(default=0, ge=0)
    max_loaded_models: int = Field(default=3, ge=1)
    context_length: int = Field(default=8192, ge=1, le=MAX_NUM_CTX)

    @model_validator(mode="after")
    def _loaded_are_installed(self) -> SimServerSpec:
        self.models = [canonical_model(name) for name in self.models]
        self.loaded = [canonical_model(name) for name in self.loaded]
        missing = [name for name in self.loaded if name not in self.models]
        if missing:
            raise ValueError(f"loaded models not among models: {', '.join(missing)}")
        if len(self.loaded) > self.max_loaded_models:
            raise ValueError(f"{len(self.loaded)} loaded models exceed max_loaded_models")
        return self


SPEC_KEYS = {
    "name": "name",
    "host": "host",
    "port": "port",
    "models": "models",
    "loaded": "loaded",
    "tps": "tokens_per_second",
    "load": "load_seconds",
    "parallel": "parallel",
    "queue": "max_queue",
    "max_loaded": "max_loaded_models",
    "ctx": "context_length",
}


def parse_server_spec(text: str) -> SimServerSpec:
    """`name=mac-1,port=11501,models=a:1b+b:7b,loaded=a:1b,tps=40,load=2.5,...` → a spec."""
    values: dict[str, Any] = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        key, sep, value = (item.strip() for item in part.partition("="))
        if not sep or not key:
            raise ValueError(f"server spec {text!r}: {part!r} is not key=value")
        if key not in SPEC_KEYS:
            raise ValueError(
                f"server spec {text!r}: unknown key {key!r} (keys: {', '.join(SPEC_KEYS)})"
            )
        if SPEC_KEYS[key] in values:
            raise ValueError(f"server spec {text!r}: {key!r} given twice")
        is_list = key in ("models", "loaded")
        values[SPEC_KEYS[key]] = [name for name in value.split("+") if name] if is_list else value
    for required in ("name", "models"):
        if not values.get(required):
            raise ValueError(f"server spec {text!r}: {required}= is required")
    try:
        return SimServerSpec.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(loc) for loc in error['loc']) or 'spec'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"server spec {text!r}: {problems}") from None
