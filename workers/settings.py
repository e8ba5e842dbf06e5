"""A Mac's worker settings: environment variables with the OLLAMA_CLOUD_ prefix."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, PositiveInt, field_validator
from pydantic_settings import NoDecode

from workers.contract.settings import CelerySettings
from workers.transport.address import parse_address

BackendKind = Literal["ollama", "openai", "models", "pool"]
# In a per-model setting, the entry for every model not named (the pool's PARALLEL_SLOTS way).
DEFAULT_ENTRY = "default"


class WorkerSettings(CelerySettings):
    """A worker needs the Redis URL and its queue (`-Q`); the rest has defaults or is asked."""

    server_id: str | None = Field(
        default=None, description="Server id; defaults to the queue given with -Q"
    )
    backend: BackendKind = Field(
        default="ollama",
        description="What the worker talks to: ollama (Ollama's API at ollama_url), openai (one "
        "OpenAI-compatible server at model_server_url, e.g. llama-server), models (one such "
        "server per model, model_map) or pool (a llama-server pool manager at pool_url)",
    )
    ollama_url: str = Field(
        default="http://127.0.0.1:11434",
        description="This server's Ollama: http://host:port, or ssh://alias (its 127.0.0.1:11434 "
        "through SSH; ssh://alias/127.0.0.1:PORT for another port)",
    )
    max_loaded_models: int = Field(
        default=0, ge=0, description="Most models Ollama keeps loaded at once (0: unknown)"
    )
    model_server_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The OpenAI-compatible server of the openai backend (http://host:port, or "
        "ssh://alias for the node's 127.0.0.1:8080)",
    )
    model_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="The models backend's servers: model=http://host:port (or "
        "ssh://alias/127.0.0.1:PORT), comma-separated, or a JSON object",
    )
    pool_url: str = Field(
        default="http://127.0.0.1:9000",
        description="The pool manager of the pool backend (http://host:port, or ssh://alias for "
        "the node's 127.0.0.1:9000; its model servers are reached the same way)",
    )
    pool_start_timeout_s: float = Field(
        default=90.0,
        gt=0,
        description="How long the pool may take to start a model's server (its own wait)",
    )
    model_slots: Annotated[dict[str, PositiveInt], NoDecode] = Field(
        default_factory=dict,
        description="Parallel slots per model where its server does not tell (model=n, "
        "comma-separated, or JSON; 'default' for the rest). The pool's servers have 1",
    )
    model_context: Annotated[dict[str, PositiveInt], NoDecode] = Field(
        default_factory=dict,
        description="Tokens of context per slot, per model, where its server does not tell "
        "(model=n, comma-separated, or JSON; 'default' for the rest)",
    )
    ssh_config: str = Field(
        default="~/.ssh/config",
        description="The OpenSSH client config that ssh:// addresses are read with (HostName, "
        "User, Port, IdentityFile, ProxyJump); a missing file is none",
    )
    ssh_known_hosts: str = Field(
        default="",
        description="The known_hosts file that nodes' host keys are checked against; empty: as "
        "the SSH config says (UserKnownHostsFile), else ~/.ssh/known_hosts",
    )
    ssh_keepalive_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between SSH keepalives; three unanswered end the link, which then "
        "reconnects",
    )
    mesh_nodes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The SSH aliases one worker serves as a mesh (comma-separated; set by "
        "`ollama-cloud mesh`): each a server of that id with its own queue, its backend at "
        "ssh://alias",
    )
    mesh_ports: Annotated[dict[str, PositiveInt], NoDecode] = Field(
        default_factory=dict,
        description="A mesh node's model server port on its 127.0.0.1 (alias=port, "
        "comma-separated, or JSON; 'default' for the rest; else the backend's usual port)",
    )
    location: str = Field(default="", description="Where the server is, for people")
    region: str = Field(default="", description="Region, for routing preference")
    priority: int = Field(default=0, description="Higher is preferred among equal servers")
    capacity: int | None = Field(
        default=None, ge=1, description="Parallel slots; defaults to the worker's concurrency"
    )
    concurrency: int = Field(default=4, ge=1, description="Worker threads (celery -c overrides)")
    heartbeat_interval_s: float = Field(default=1.0, gt=0, description="Seconds between beats")
    heartbeat_ttl_s: float = Field(default=5.0, gt=0, description="A record expires after this")
    connect_timeout_s: float = Field(default=3.0, gt=0, description="Give up connecting to Ollama")
    read_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Wait this long for the first token when the model must be loaded first",
    )
    first_token_timeout_s: float = Field(
        default=8.0,
        gt=0,
        description="With the model loaded, the first token's wait before the prompt's own "
        "time (measured per model); past it the server is hung and the job goes elsewhere",
    )
    stall_timeout_s: float = Field(
        default=5.0, gt=0, description="Once tokens flow, this long without one is a hang"
    )
    max_reply_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="A model's reply longer than this is cut off and the attempt failed",
    )

    @field_validator("ollama_url", "model_server_url", "pool_url")
    @classmethod
    def _address(cls, value: str) -> str:
        """An http:// or ssh:// address; an ambiguous or malformed one is refused here, with
        what to write instead."""
        parse_address(value)
        return value

    @field_validator("model_map")
    @classmethod
    def _addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for address in value.values():
            parse_address(address)
        return value

    @field_validator("mesh_nodes", mode="before")
    @classmethod
    def _aliases(cls, value: object) -> object:
        if isinstance(value, str):
            return [alias.strip() for alias in value.split(",") if alias.strip()]
        return value

    @field_validator("model_map", "model_slots", "model_context", "mesh_ports", mode="before")
    @classmethod
    def _per_model(cls, value: object) -> object:
        """`a=1,b=2` or a JSON object, from the environment; a mapping as it is."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            return json.loads(text)
        entries: dict[str, str] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            name, equals, setting = item.partition("=")
            if not equals or not name.strip() or not setting.strip():
                raise ValueError(f"expected model=value, got {item.strip()!r}")
            entries[name.strip()] = setting.strip()
        return entries


def per_model(table: dict[str, int], model: str) -> int | None:
    """A per-model setting's value for `model`: its own entry, else the default entry, else
    None."""
    return table.get(model, table.get(DEFAULT_ENTRY))
