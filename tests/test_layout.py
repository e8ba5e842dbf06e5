"""The shape of the project: what installs where, and what each public surface offers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import workers
from workers.contract.celery_config import celery_config
from workers.settings import CelerySettings

ROOT = Path(__file__).resolve().parents[1]


def test_workers_imports_nothing_from_orchestrator() -> None:
    probe = (
        "import sys, workers, workers.celery, workers.tasks, workers.heartbeat;"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'orchestrator');"
        "print(leaked); sys.exit(1 if leaked else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_names_exist() -> None:
    for name in workers.__all__:
        assert hasattr(workers, name), name


def test_celery_speaks_json_only_and_keeps_tasks_until_done() -> None:
    config = celery_config(CelerySettings())
    assert config["accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is True
    assert config["broker_transport_options"]["visibility_timeout"] >= 3600


def test_celery_apps_are_found_as_operators_start_them() -> None:
    for app_name in ("workers", "orchestrator"):
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", app_name, "report"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "pickle" not in result.stdout.split("accept_content")[1].split("\n")[0]


def test_procfile_runs_the_orchestrator_host() -> None:
    entries = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    assert set(entries) == {"bridge", "control", "beat", "flower"}
    assert "-Q control" in entries["control"]
    assert "ollama-cloud bridge" in entries["bridge"]


@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("docker")), reason="no compose tool here"
)
def test_compose_file_is_valid() -> None:
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    probe = subprocess.run([*command, "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker has no compose plugin here")
    env = {
        **os.environ,
        "REDIS_PASSWORD": "pw",
        "OLLAMA_CLOUD_QUEUE_URL": "http://queue.example",
        "FLOWER_BASIC_AUTH": "admin:pw",
    }
    result = subprocess.run(
        [*command, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
