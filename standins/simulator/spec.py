"""What one simulated server is (SimServerSpec) and the `key=value,...` text that describes it.

Three kinds: `ollama` (the default) is one Ollama server with many models; `llamacpp` is one
llama.cpp `llama-server` with one model; `pool` is the operator's pool manager, which starts a
llama-server per model on demand (see pool.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from standins.simulator.models import MAX_NUM_CTX, canonical_model

SimKind = Literal["ollama", "llamacpp", "pool"]

# The operator's pool manager gives the scorer 10 slots and every other model one [doc 228].
DEFAULT_POOL_SLOTS = {"eq-score-f16": 10}
# Fields that only a pool reads: set on another kind they are a mistake in the spec.
POOL_ONLY = frozenset(
    {
        "max_servers",
        "idle_seconds",
        "idle_check_seconds",
        "slots",
        "hazards",
        "model_load_seconds",
        "health_timeout_seconds",
    }
)
OLLAMA_ONLY = frozenset({"max_queue", "max_loaded_models"})


class SimServerSpec(BaseModel):
    """One simulated server: its kind, its models, its speed and its limits.

    For `llamacpp` and `pool`, model names are the operator's keys (`the-eternal-f16`), kept
    as given; `parallel` defaults to 1 and `context_length` is llama-server's `--ctx-size`,
    split among the slots.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: SimKind = "ollama"
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
    # Pool only.
    max_servers: int = Field(default=24, ge=1)
    idle_seconds: float = Field(default=1800.0, gt=0)
    idle_check_seconds: float = Field(default=60.0, gt=0)
    slots: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_POOL_SLOTS))
    hazards: bool = True
    model_load_seconds: dict[str, float] = {}
    health_timeout_seconds: float = Field(default=90.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> SimServerSpec:
        given = self.model_fields_set
        if self.kind == "ollama":
            misplaced = _spec_keys(given & POOL_ONLY)
            if misplaced:
                raise ValueError(f"{misplaced}: only a pool has these")
            self.models = [canonical_model(name) for name in self.models]
            self.loaded = [canonical_model(name) for name in self.loaded]
        else:
            misplaced = _spec_keys(given & (OLLAMA_ONLY | (POOL_ONLY - _pool_fields(self.kind))))
            if misplaced:
                raise ValueError(f"{misplaced}: not read by a {self.kind} server")
            if "parallel" not in given:
                self.parallel = 1
            if len(set(self.models)) != len(self.models):
                raise ValueError("models are listed twice")
        missing = [name for name in self.loaded if name not in self.models]
        if missing:
            raise ValueError(f"loaded models not among models: {', '.join(missing)}")
        if self.kind == "ollama" and len(self.loaded) > self.max_loaded_models:
            raise ValueError(f"{len(self.loaded)} loaded models exceed max_loaded_models")
        if self.kind == "llamacpp" and len(self.models) != 1:
            raise ValueError("a llamacpp server serves exactly one model")
        if self.kind == "pool" and len(self.loaded) > self.max_servers:
            raise ValueError(f"{len(self.loaded)} loaded models exceed max_servers")
        if self.kind != "ollama" and self.context_length < max(self.slot_counts()):
            raise ValueError("ctx is smaller than the number of slots")
        if any(count < 1 for count in self.slots.values()):
            raise ValueError("slots must be at least 1")
        if any(seconds < 0 for seconds in self.model_load_seconds.values()):
            raise ValueError("model_load seconds must not be negative")
        return self

    def slot_count(self, model: str) -> int:
        """A pool's parallel slots for a model's server: its entry in `slots`, else `parallel`."""
        return self.slots.get(model, self.parallel)

    def slot_counts(self) -> list[int]:
        return [self.slot_count(model) for model in self.models]

    def load_seconds_of(self, model: str) -> float:
        return self.model_load_seconds.get(model, self.load_seconds)


SPEC_KEYS = {
    "name": "name",
    "kind": "kind",
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
    "max_servers": "max_servers",
    "idle": "idle_seconds",
    "idle_check": "idle_check_seconds",
    "slots": "slots",
    "hazards": "hazards",
    "model_load": "model_load_seconds",
    "health_timeout": "health_timeout_seconds",
}


def _pool_fields(kind: SimKind) -> frozenset[str]:
    return POOL_ONLY if kind == "pool" else frozenset()


def _spec_keys(fields: set[str] | frozenset[str]) -> str:
    """Field names as the spec text spells them (`idle=` for idle_seconds)."""
    keys = {field: key for key, field in SPEC_KEYS.items()}
    return ", ".join(sorted(f"{keys.get(field, field)}=" for field in fields))


LIST_KEYS = frozenset({"models", "loaded"})
MAP_KEYS = frozenset({"slots", "model_load"})  # `a-f16:10+b-f16:2`


def _model_map(text: str, key: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in (piece.strip() for piece in text.split("+")):
        if not item:
            continue
        model, sep, value = item.rpartition(":")
        if not sep or not model or not value:
            raise ValueError(f"{key}=: {item!r} is not model:value")
        values[model] = value
    return values


def parse_server_spec(text: str) -> SimServerSpec:
    """`name=mac-1,port=11501,models=a:1b+b:7b,loaded=a:1b,tps=40,load=2.5,...` → a spec.

    A pool: `name=pool,kind=pool,models=a-f16+eq-score-f16,max_servers=24,idle=1800,
    slots=eq-score-f16:10,hazards=on`; one llama-server: `name=l,kind=llamacpp,models=a-f16`.
    """
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
        if key in LIST_KEYS:
            values[SPEC_KEYS[key]] = [name for name in value.split("+") if name]
        elif key in MAP_KEYS:
            try:
                values[SPEC_KEYS[key]] = _model_map(value, key)
            except ValueError as exc:
                raise ValueError(f"server spec {text!r}: {exc}") from None
        else:
            values[SPEC_KEYS[key]] = value
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


def format_server_spec(spec: SimServerSpec) -> str:
    """The text `parse_server_spec` reads back as `spec`: name, models and what differs from
    the defaults."""
    given = spec.model_dump(exclude_defaults=True)
    # parallel too: its default depends on the kind.
    given.update(name=spec.name, models=spec.models, parallel=spec.parallel)
    parts = []
    for key, field in SPEC_KEYS.items():
        if field not in given:
            continue
        value = given[field]
        if isinstance(value, list):
            text = "+".join(value)
        elif isinstance(value, dict):
            text = "+".join(f"{model}:{count}" for model, count in value.items())
        elif isinstance(value, bool):
            text = "on" if value else "off"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return ",".join(parts)
