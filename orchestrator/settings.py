"""The orchestrator's settings: OLLAMA_CLOUD_* environment variables, an optional TOML file
(`--config` or OLLAMA_CLOUD_CONFIG), and command-line flags on top."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator.domain.messages import MessageLimits
from orchestrator.domain.routing import POLICIES
from workers.contract.settings import ENV_PREFIX, CelerySettings

CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG"


def _default_bridge_id() -> str:
    """Unique to each bridge process, so two on one host never share one; recovery knows a
    claim by the id its note carries, whatever became of that bridge."""
    return f"bridge-{socket.gethostname()}-{secrets.token_hex(3)}"


class Settings(CelerySettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    queue_url: str = Field(default="http://127.0.0.1:8787", description="The site queue's base URL")
    queue_token: SecretStr | None = Field(default=None, description="Bearer token for the queue")
    queue_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one queue call")
    # What is taken from the site, read with a cap (never read whole, then checked).
    max_answer_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=64 * 1024,
        description="A site answer (claim-next, a claim) is read no further than this",
    )
    max_comments_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="The message list (recovery) is streamed, one message at a time, up to this",
    )
    max_message_bytes: int = Field(
        default=512 * 1024,
        ge=16 * 1024,
        description="A claimed message larger than this (as JSON) is refused with its reason",
    )
    max_text_chars: int = Field(
        default=32_000, ge=1000, description="A message's text longer than this is refused"
    )
    max_context_lines: int = Field(
        default=1000, ge=1, description="A message with more context lines is refused"
    )
    entities_dir: Path = Field(default=Path("entities"), description="Folder of entity JSON files")
    bridge_id: str = Field(
        default_factory=_default_bridge_id, description="workerId the bridge claims with"
    )
    eq_entity: str = Field(default="eq-score", description="Entity that scores messages (EQ)")
    eq_enabled: bool = Field(default=True, description="Score each message and PATCH eqScore")
    max_attempts: int = Field(default=3, ge=1, description="Servers tried before giving up")
    job_deadline_s: float = Field(default=900.0, gt=0, description="A job's whole allowance")
    apology_text: str | None = Field(
        default=None, description="Reply posted when every attempt failed; none when unset"
    )
    retry_backoff_s: float = Field(
        default=0.1, ge=0, description="Failover: pause before the second attempt, doubling after"
    )
    retry_backoff_max_s: float = Field(
        default=5.0, ge=0, description="Failover: longest pause between attempts"
    )
    cooldown_s: float = Field(
        default=2.0,
        ge=0,
        description="A failing server is left out this long, doubling per failure",
    )
    cooldown_max_s: float = Field(default=60.0, ge=0, description="Longest cooldown of a server")
    server_lost_after_s: float = Field(
        default=3.0, gt=0, description="A server silent this long is lost: its jobs go elsewhere"
    )
    start_lost_after_s: float = Field(
        default=15.0, gt=0, description="A dispatched job no worker began within this goes again"
    )
    delivery_stall_s: float = Field(
        default=20.0, gt=0, description="A result not delivered within this is delivered again"
    )
    bridge_lost_after_s: float = Field(
        default=10.0, gt=0, description="A bridge silent this long: its waiting jobs go to others"
    )
    recover_interval_s: float = Field(
        default=30.0, gt=0, description="Beat: how often to look for claims that may be lost"
    )
    recover_after_s: float = Field(
        default=30.0,
        ge=0,
        description="A claim whose jobs are not written this long after it began may be lost",
    )
    recover_window_s: float = Field(
        default=86400.0,
        gt=0,
        description="How old a lost claim's message may be, when its bridge never saw the site "
        "queue empty",
    )
    claim_idle_s: float = Field(
        default=0.5, gt=0, description="Wait before asking an empty queue again"
    )
    sweep_interval_s: float = Field(default=1.0, gt=0, description="Beat: sweep period")
    finished_retention_s: float = Field(
        default=86400.0,
        gt=0,
        description="A finished job's summary stays in the ledger this long",
    )
    dead_letter_retention_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="A dead letter (a reply given up) is kept this long for an operator",
    )
    default_tokens_per_s: float = Field(
        default=30.0, gt=0, description="Routing: a model's speed on a server until measured"
    )
    default_load_s: float = Field(
        default=20.0, ge=0, description="Routing: a model's load time on a server until measured"
    )
    routing_policy: str = Field(
        default="soonest",
        description="soonest finish (the router); random and least_inflight, which ignore "
        "capacity and speed, and yardstick, told the fleet's true speeds, exist to compare "
        "against (bench/fleet.py)",
    )
    routing_facts_file: Path | None = Field(
        default=None,
        description="The yardstick policy's true speeds and load times of every server (JSON)",
    )
    control_concurrency: int = Field(default=8, ge=1, description="Control worker threads")
    # The operator's eyes: the fleet page and its /metrics, and where Flower is.
    web_host: str = Field(
        default="127.0.0.1", description="`ollama-cloud web` listens on this address"
    )
    web_port: int = Field(default=8470, ge=1, le=65535, description="... and this port")
    web_basic_auth: SecretStr | None = Field(
        default=None,
        description="user:password asked by the fleet page and its /metrics (none when unset)",
    )
    web_url: str | None = Field(
        default=None,
        description="Where operators reach the fleet page (`check`); else http://web_host:web_port",
    )
    flower_url: str = Field(
        default="http://127.0.0.1:5555",
        description="Where operators reach Flower: the fleet page links there, `check` asks it",
    )

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> Settings:
        """Settings from command-line `flags` (None meaning not given), then the environment,
        then the TOML file (`config_file`, else OLLAMA_CLOUD_CONFIG) if there is one."""
        path = config_file or os.environ.get(CONFIG_FILE_VARIABLE)
        source: type[Settings] = cls
        if path:
            config = SettingsConfigDict(**cls.model_config)
            config["toml_file"] = Path(path)
            source = type(cls.__name__, (cls,), {"model_config": config})
        return source(**{name: value for name, value in flags.items() if value is not None})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @field_validator("routing_policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        if name not in POLICIES:
            raise ValueError(f"one of {', '.join(POLICIES)}")
        return name

    def message_limits(self) -> MessageLimits:
        return MessageLimits(
            max_bytes=self.max_message_bytes,
            max_text_chars=self.max_text_chars,
            max_context_lines=self.max_context_lines,
        )

    def web_basic_auth_value(self) -> tuple[str, str] | None:
        """The fleet page's (user, password), when it asks for them."""
        if self.web_basic_auth is None:
            return None
        user, _, password = self.web_basic_auth.get_secret_value().partition(":")
        return user, password

    def fleet_page_url(self) -> str:
        return self.web_url or f"http://{self.web_host}:{self.web_port}"

    def queue_token_value(self) -> str | None:
        return self.queue_token.get_secret_value() if self.queue_token else None
