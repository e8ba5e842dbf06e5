"""Settings: environment, then a TOML file, with flags on top; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import Settings
from workers.settings import WorkerSettings


def test_defaults_need_nothing() -> None:
    settings = Settings.load()
    assert settings.queue_url == "http://127.0.0.1:8787"
    assert settings.queue_token is None
    assert settings.max_attempts == 3


def test_environment_then_file_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ollama-cloud.toml"
    config.write_text(
        'queue_url = "http://from-file:1"\nredis_url = "redis://from-file:6379/0"\n'
        'apology_text = "Sorry, try again."\nmax_attempts = 5\n'
    )
    monkeypatch.setenv("OLLAMA_CLOUD_REDIS_URL", "redis://from-env:6379/1")
    settings = Settings.load(config, queue_url="http://from-flag:2", max_attempts=None)
    assert settings.queue_url == "http://from-flag:2"  # a flag beats the file
    assert settings.redis_url == "redis://from-env:6379/1"  # the environment beats the file
    assert settings.apology_text == "Sorry, try again."
    assert settings.max_attempts == 5  # an unset flag (None) does not hide the file


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "site.toml"
    config.write_text('bridge_id = "bridge-west"\n')
    monkeypatch.setenv("OLLAMA_CLOUD_CONFIG", str(config))
    assert Settings.load().bridge_id == "bridge-west"


def test_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_CLOUD_QUEUE_TOKEN", "s3cret-token")
    settings = Settings()
    assert settings.queue_token_value() == "s3cret-token"
    assert "s3cret-token" not in repr(settings)
    assert "s3cret-token" not in str(settings.model_dump())


def test_worker_needs_only_redis_and_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_CLOUD_REDIS_URL", "redis://orchestrator:6379/0")
    settings = WorkerSettings()
    assert settings.redis_url == "redis://orchestrator:6379/0"
    assert settings.ollama_url == "http://127.0.0.1:11434"  # Ollama stays on localhost
    assert settings.server_id is None  # taken from -Q


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_CLOUD_MAX_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="max_attempts"):
        Settings()
