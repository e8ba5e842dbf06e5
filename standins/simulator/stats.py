"""What a simulated server counts: requests, completions, cold loads, busy time, per model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelStats:
    requests: int = 0
    completed: int = 0
    eval_tokens: int = 0
    cold_loads: int = 0


@dataclass
class SimStats:
    requests: int = 0
    completed: int = 0
    max_active: int = 0
    refused_full: int = 0
    cold_loads: int = 0
    failures_injected: int = 0
    busy_seconds: float = 0.0
    per_model: dict[str, ModelStats] = field(default_factory=dict)

    def model(self, name: str) -> ModelStats:
        return self.per_model.setdefault(name, ModelStats())
