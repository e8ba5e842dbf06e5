"""A Mac's worker settings: environment variables with the OLLAMA_CLOUD_ prefix."""

from __future__ import annotations

from pydantic import Field

from workers.contract.settings import CelerySettings


class WorkerSettings(CelerySettings):
    """A worker needs the Redis URL and its queue (`-Q`); the rest has defaults or is asked."""

    server_id: str | None = Field(
        default=None, description="Server id; defaults to the queue given with -Q"
    )
    ollama_url: str = Field(
        default="http://127.0.0.1:11434", description="This server's Ollama (http://host:port)"
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
