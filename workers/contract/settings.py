"""What every process of the system shares: the environment's prefix, Redis and the broker's
delivery guarantees."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.contract.keys import DEFAULT_PREFIX

ENV_PREFIX = "OLLAMA_CLOUD_"


class CelerySettings(BaseSettings):
    """The broker and the shared state, for the workers, the bridge and control alike."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for the Celery broker and the shared state; redis:// or rediss://",
    )
    key_prefix: str = Field(
        default=DEFAULT_PREFIX,
        min_length=1,
        description="Prefix of every Redis key, the broker's included",
    )
    visibility_timeout_s: int = Field(
        default=3600,
        ge=60,
        description="Seconds before an unacked task is redelivered; longer than any generation",
    )
    max_broker_item_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        description="A queue item larger than this is a poison item (dead-lettered, not run)",
    )
    broker_dead_letters_kept: int = Field(
        default=1000,
        ge=1,
        description="How many poison items the broker's dead-letter list keeps (newest first)",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text, or one JSON object per line for a log shipper",
    )
