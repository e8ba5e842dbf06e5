"""`ollama-cloud check` against real parts: private Redis servers (one as it should be, one
without AOF and with eviction, one that refuses CONFIG as a managed Redis does), the local site
queue with a token, fleet records as a worker's heartbeat writes them, entity files in a
folder, and small loopback servers in the places of Flower and the fleet page."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from orchestrator.ops.check import (
    Level,
    Report,
    check_command,
    masked_url,
    print_report,
    run_checks,
)
from orchestrator.settings import Settings
from standins import SAMPLE_ENTITIES_DIR
from standins.embedded_redis import EmbeddedRedis, free_port, redis_server_binary
from standins.http_server import ThreadedServer
from standins.local_queue import QueueStore, build_app
from standins.waiting import wait_for
from tests.test_security import make_certificates, redis_speaks_tls
from workers.contract.keys import Keys
from workers.contract.server_record import ServerRecord
from workers.heartbeat import write_record

pytestmark = pytest.mark.e2e

PASSWORD = "redis-pass-7f3a9c"
TOKEN = "queue-token-51b2e8"
CLI = Path(sys.executable).parent / "ollama-cloud"
# The sample entities' models: the-eternal and eq-score on llama3.2:3b, the-critic on qwen2.5:7b.
SAMPLE_MODELS = ["llama3.2:3b", "qwen2.5:7b"]


# Real parts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_redis() -> Iterator[EmbeddedRedis]:
    """AOF on, noeviction, a password: as the README asks."""
    with EmbeddedRedis(password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def bare_redis() -> Iterator[EmbeddedRedis]:
    """A Redis as it comes: no append-only file, and free to evict."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("appendonly", "no")
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        yield server


@pytest.fixture(scope="module")
def managed_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis that refuses CONFIG, as managed ones do; AOF off, evicting."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("managed-redis")
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--save", "", "--appendonly", "no", "--maxmemory-policy", "volatile-lru",
            "--rename-command", "CONFIG", "",
            "--logfile", str(data_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        assert process.poll() is None, "redis-server exited"
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, timeout=10, what="the managed-like Redis")
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def site_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local site queue, asking for TOKEN."""
    store = QueueStore(tmp_path_factory.mktemp("queue") / "queue.sqlite3")
    server = ThreadedServer(build_app(store, TOKEN))
    server.start()
    yield server.url
    server.stop()
    store.close()


@pytest.fixture(scope="module")
def flower() -> Iterator[str]:
    """Answers Flower's /healthcheck as Flower does."""
    app = Starlette(routes=[Route("/healthcheck", lambda _: PlainTextResponse("OK"))])
    with ThreadedServer(app) as server:
        yield server.url


def fleet_page_app(*, healthz: bool) -> Starlette:
    """The fleet page behind a password: /healthz open (unless left out), the rest 401."""

    def page(request: Request) -> Response:
        return Response(status_code=401, headers={"WWW-Authenticate": "Basic"})

    routes = [Route("/", page)]
    if healthz:
        routes.append(Route("/healthz", lambda _: PlainTextResponse("ok")))
    return Starlette(routes=routes)


@pytest.fixture(scope="module")
def fleet_page() -> Iterator[str]:
    with ThreadedServer(fleet_page_app(healthz=True)) as server:
        yield server.url


@pytest.fixture
def entities(tmp_path: Path) -> Path:
    folder = tmp_path / "entities"
    shutil.copytree(SAMPLE_ENTITIES_DIR, folder)
    return folder


def online(redis_url: str, server_id: str, models: list[str], *, healthy: bool = True) -> None:
    """A server's record as its worker's heartbeat writes it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    record = ServerRecord(
        id=server_id,
        capacity=2,
        models=models,
        ollama_healthy=healthy,
        fault="" if healthy else "connection refused",
        last_beat=time.time(),
    )
    write_record(client, Keys(), record, ttl_s=60)
    client.close()


@pytest.fixture
def fleet(good_redis: EmbeddedRedis) -> Iterator[str]:
    """The good Redis, emptied, with one server online that has the sample entities' models."""
    client = redis.Redis.from_url(good_redis.url)
    client.flushall()
    client.close()
    online(good_redis.url, "mac-1", SAMPLE_MODELS)
    yield good_redis.url


def settings_for(redis_url: str, queue_url: str, entities: Path, **more: object) -> Settings:
    fields: dict[str, object] = {
        "redis_url": redis_url,
        "queue_url": queue_url,
        "queue_token": TOKEN,
        "entities_dir": entities,
        "flower_url": f"http://127.0.0.1:{free_port()}",
        "web_url": f"http://127.0.0.1:{free_port()}",
        "server_lost_after_s": 60.0,  # the records above are written once, not every second
        **more,
    }
    return Settings(**fields)  # type: ignore[arg-type]


def found(report: Report, check: str) -> list[tuple[Level, str]]:
    return [(f.level, f.text) for f in report.findings if f.check == check]


def problems(report: Report) -> dict[str, list[str]]:
    wrong: dict[str, list[str]] = {}
    for finding in report.findings:
        if finding.level is Level.PROBLEM:
            wrong.setdefault(finding.check, []).append(finding.text)
    return wrong


# Everything as it should be --------------------------------------------------------------------


def test_all_good_exits_0_from_the_command_line(
    fleet: str, site_queue: str, entities: Path, flower: str, fleet_page: str
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OLLAMA_CLOUD_")}
    env.update(
        OLLAMA_CLOUD_REDIS_URL=fleet,
        OLLAMA_CLOUD_QUEUE_URL=site_queue,
        OLLAMA_CLOUD_QUEUE_TOKEN=TOKEN,
        OLLAMA_CLOUD_ENTITIES_DIR=str(entities),
        OLLAMA_CLOUD_FLOWER_URL=flower,
        OLLAMA_CLOUD_WEB_URL=fleet_page,
        OLLAMA_CLOUD_SERVER_LOST_AFTER_S="60",
    )
    result = subprocess.run(
        [str(CLI), "check"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "all good"
    assert all(line.startswith("ok ") for line in lines[:-1]), result.stdout
    checks = {line.split()[1].rstrip(":") for line in lines[:-1]}
    assert checks == {
        "redis", "redis-persistence", "redis-eviction", "site-queue", "entities", "fleet",
        "models", "flower", "fleet-page",
    }  # fmt: skip
    assert "redis://:***@127.0.0.1" in result.stdout
    assert "token accepted" in result.stdout
    assert "mac-1" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr

    as_json = subprocess.run(
        [str(CLI), "check", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["ok"] is True and report["problems"] == 0 and report["warnings"] == 0
    assert {f["level"] for f in report["findings"]} == {"ok"}

    # One thing wrong, and the same command says so and fails.
    env["OLLAMA_CLOUD_QUEUE_TOKEN"] = "not-the-token"
    wrong = subprocess.run([str(CLI), "check"], capture_output=True, text=True, env=env, timeout=60)
    assert wrong.returncode == 1
    assert "FAIL site-queue:" in wrong.stdout and "OLLAMA_CLOUD_QUEUE_TOKEN" in wrong.stdout
    assert "not-the-token" not in wrong.stdout
    assert wrong.stdout.splitlines()[-1] == "1 problem, 0 warnings"


# Redis -----------------------------------------------------------------------------------------


def test_a_redis_without_aof_and_free_to_evict_is_two_problems_with_their_fixes(
    bare_redis: EmbeddedRedis, site_queue: str, entities: Path
) -> None:
    online(bare_redis.url, "mac-1", SAMPLE_MODELS)
    report = run_checks(settings_for(bare_redis.url, site_queue, entities))
    wrong = problems(report)
    assert set(wrong) == {"redis-persistence", "redis-eviction"}
    [aof] = wrong["redis-persistence"]
    assert "no append-only file" in aof
    assert (
        "`redis-cli CONFIG SET appendonly yes`" in aof and "`appendonly yes` in redis.conf" in aof
    )
    [eviction] = wrong["redis-eviction"]
    assert "allkeys-lru" in eviction
    assert "`redis-cli CONFIG SET maxmemory-policy noeviction`" in eviction
    assert report.exit_status() == 1


def test_a_redis_that_refuses_config_is_read_from_info(
    managed_redis: str, site_queue: str, entities: Path
) -> None:
    report = run_checks(settings_for(managed_redis, site_queue, entities))
    assert found(report, "redis")[0][0] is Level.OK
    [(level, aof)] = found(report, "redis-persistence")
    assert level is Level.PROBLEM and "appendonly yes" in aof
    [(level, eviction)] = found(report, "redis-eviction")
    assert level is Level.PROBLEM and "volatile-lru" in eviction


def test_a_redis_that_does_not_answer_says_what_to_check_and_returns_quickly(
    site_queue: str, entities: Path
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    began = time.monotonic()
    report = run_checks(settings_for(url, site_queue, entities))
    assert time.monotonic() - began < 5
    [(level, text)] = found(report, "redis")
    assert level is Level.PROBLEM
    assert "ssh -N -L" in text  # the worker's own hint: a tunnel, else Redis here
    assert "redis://:***@127.0.0.1" in text and PASSWORD not in text
    assert found(report, "redis-persistence")[0][0] is Level.SKIPPED
    assert found(report, "fleet")[0][0] is Level.SKIPPED
    assert found(report, "models") == []
    assert found(report, "site-queue")[0][0] is Level.OK  # the rest is still looked at


def test_a_wrong_redis_password_is_named_as_such(
    good_redis: EmbeddedRedis, site_queue: str, entities: Path
) -> None:
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{good_redis.port}/0"
    report = run_checks(settings_for(url, site_queue, entities))
    [(level, text)] = found(report, "redis")
    assert level is Level.PROBLEM
    assert "refused the password" in text and "redis://:PASSWORD@host" in text
    assert PASSWORD not in text


# The site queue --------------------------------------------------------------------------------


def test_a_wrong_or_missing_token_is_a_problem_naming_the_setting(
    fleet: str, site_queue: str, entities: Path
) -> None:
    report = run_checks(settings_for(fleet, site_queue, entities, queue_token="guessed-wrong"))
    [(level, text)] = found(report, "site-queue")
    assert level is Level.PROBLEM
    assert "HTTP 401" in text and "token is wrong" in text and "OLLAMA_CLOUD_QUEUE_TOKEN" in text
    assert "guessed-wrong" not in text

    report = run_checks(settings_for(fleet, site_queue, entities, queue_token=None))
    [(level, text)] = found(report, "site-queue")
    assert level is Level.PROBLEM and "asks for a token" in text


def test_a_queue_url_where_nothing_listens_names_the_url_setting(
    fleet: str, entities: Path
) -> None:
    report = run_checks(settings_for(fleet, f"http://127.0.0.1:{free_port()}", entities))
    [(level, text)] = found(report, "site-queue")
    assert level is Level.PROBLEM
    assert "does not answer (ConnectError)" in text and "OLLAMA_CLOUD_QUEUE_URL" in text


def test_a_queue_url_that_is_not_the_queue_api_says_so(
    fleet: str, entities: Path, flower: str
) -> None:
    report = run_checks(settings_for(fleet, flower, entities))
    [(level, text)] = found(report, "site-queue")
    assert level is Level.PROBLEM
    assert "HTTP 404" in text and "without /api/..." in text


# Entities and models ---------------------------------------------------------------------------


def test_an_entity_whose_model_no_server_has_is_named_with_its_fix(
    fleet: str, site_queue: str, entities: Path
) -> None:
    (entities / "the-poet.json").write_text(
        json.dumps({"id": "the-poet", "username": "ThePoet", "model": "mistral:7b"})
    )
    (entities / "the-muse.json").write_text(
        json.dumps({"id": "the-muse", "baseModel": "Qwen2.5", "defaultQuantization": "8b"})
    )
    (entities / "the-typo.json").write_text(json.dumps({"id": "the-typo", "model": "lama3.2:3b"}))
    # Routing's normalisation: `LLAMA3.2:3B` is the server's llama3.2:3b, so no problem.
    (entities / "the-twin.json").write_text(json.dumps({"id": "the-twin", "model": "LLAMA3.2:3B"}))
    # Nothing is asked of a disabled entity's model.
    (entities / "the-sleeper.json").write_text(
        json.dumps({"id": "the-sleeper", "enabled": False, "model": "nowhere:1b"})
    )
    report = run_checks(settings_for(fleet, site_queue, entities))
    wrong = problems(report)
    assert set(wrong) == {"models"}
    assert len(wrong["models"]) == 3
    [poet] = [text for text in wrong["models"] if "the-poet" in text]
    assert "model mistral:7b of the-poet is on no online server: install it" in poet
    assert "`ollama pull mistral:7b`" in poet
    assert "did you mean" not in poet
    [muse] = [text for text in wrong["models"] if "the-muse" in text]
    assert "model qwen2.5-8b:latest of the-muse" in muse  # baseModel-defaultQuantization
    [typo] = [text for text in wrong["models"] if "the-typo" in text]
    assert "(did you mean llama3.2:3b?)" in typo
    assert report.exit_status() == 1


def test_a_broken_entity_file_is_named_with_its_reason(
    fleet: str, site_queue: str, entities: Path
) -> None:
    (entities / "half.json").write_text('{"id": "half", "model": ')
    (entities / "no-model.json").write_text(json.dumps({"id": "no-model", "username": "X"}))
    (entities / "hot.json").write_text(json.dumps({"model": "llama3.2:3b", "enabled": "perhaps"}))
    report = run_checks(settings_for(fleet, site_queue, entities))
    texts = problems(report)["entities"]
    by_file = {text.split()[2]: text for text in texts}
    assert set(by_file) == {"half.json", "no-model.json", "hot.json"}
    assert "Expecting value" in by_file["half.json"]
    assert "no model" in by_file["no-model.json"]
    assert "enabled: Input should be a valid boolean" in by_file["hot.json"]
    assert all("is skipped" in text and "fix the file" in text for text in texts)
    assert found(report, "models")[0][0] is Level.OK  # the good files are still checked


def test_the_scorer_must_be_there_while_scoring_is_on(
    fleet: str, site_queue: str, entities: Path
) -> None:
    (entities / "eq-score.json").unlink()
    report = run_checks(settings_for(fleet, site_queue, entities))
    [text] = problems(report)["entities"]
    assert "no entity 'eq-score'" in text and "OLLAMA_CLOUD_EQ_ENABLED=false" in text

    report = run_checks(settings_for(fleet, site_queue, entities, eq_enabled=False))
    assert not problems(report)


def test_the_scorers_model_is_checked_too(fleet: str, site_queue: str, entities: Path) -> None:
    scorer = json.loads((entities / "eq-score.json").read_text())
    scorer["model"] = "scorer-only:1b"
    (entities / "eq-score.json").write_text(json.dumps(scorer))
    report = run_checks(settings_for(fleet, site_queue, entities))
    [text] = problems(report)["models"]
    assert "model scorer-only:1b of eq-score" in text


def test_no_server_online_is_said_once_not_per_entity(
    good_redis: EmbeddedRedis, site_queue: str, entities: Path
) -> None:
    client = redis.Redis.from_url(good_redis.url)
    client.flushall()
    client.close()
    report = run_checks(settings_for(good_redis.url, site_queue, entities))
    wrong = problems(report)
    assert set(wrong) == {"fleet"}
    [text] = wrong["fleet"]
    assert "no server is online" in text and "celery -A workers worker -Q mac-1" in text
    assert found(report, "models") == []


def test_a_server_whose_model_server_is_down_is_a_warning(
    fleet: str, site_queue: str, entities: Path
) -> None:
    online(fleet, "mac-2", SAMPLE_MODELS, healthy=False)
    report = run_checks(settings_for(fleet, site_queue, entities))
    warnings = [text for level, text in found(report, "fleet") if level is Level.WARNING]
    assert len(warnings) == 1 and "server mac-2" in warnings[0]
    assert "connection refused" in warnings[0]
    assert report.exit_status() == 0 and report.exit_status(strict=True) == 1


# Flower and the fleet page ---------------------------------------------------------------------


def test_flower_and_the_fleet_page_missing_are_warnings_that_fail_only_when_strict(
    fleet: str, site_queue: str, entities: Path
) -> None:
    report = run_checks(settings_for(fleet, site_queue, entities))
    [(level, flower_text)] = found(report, "flower")
    assert level is Level.WARNING and "celery -A orchestrator flower" in flower_text
    [(level, page_text)] = found(report, "fleet-page")
    assert level is Level.WARNING and "ollama-cloud web" in page_text
    assert not problems(report)
    assert report.exit_status() == 0 and report.exit_status(strict=True) == 1


def test_a_fleet_page_behind_its_password_counts_as_reachable(
    fleet: str, site_queue: str, entities: Path, flower: str
) -> None:
    with ThreadedServer(fleet_page_app(healthz=False)) as page:
        report = run_checks(settings_for(fleet, site_queue, entities, web_url=page.url))
    [(level, text)] = found(report, "fleet-page")
    assert level is Level.OK and "behind its password" in text


# Showing it ------------------------------------------------------------------------------------


def test_a_terminal_gets_marks_and_never_a_secret(
    good_redis: EmbeddedRedis, site_queue: str, entities: Path
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    report = run_checks(settings_for(url, site_queue, entities, queue_token="wrong-token-9d"))
    out = io.StringIO()
    print_report(report, Console(file=out, force_terminal=True, width=100), strict=False)
    shown = out.getvalue()
    assert "✗" in shown and "redis" in shown
    assert PASSWORD not in shown and "wrong-token-9d" not in shown


def test_masked_url_hides_only_the_password() -> None:
    assert masked_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert masked_url("rediss://user:pw@host/0?ssl_cert_reqs=required") == (
        "rediss://user:***@host/0?ssl_cert_reqs=required"
    )
    assert masked_url("redis://pw@host") == "redis://***@host"
    assert masked_url("http://127.0.0.1:8787") == "http://127.0.0.1:8787"


def test_addresses_that_accept_but_never_answer_time_out_within_seconds(entities: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts connections; nothing ever reads or answers
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = settings_for(
            f"redis://{url}/0", f"http://{url}", entities, flower_url=f"http://{url}"
        )
        began = time.monotonic()
        report = run_checks(settings, timeout_s=0.5)
        took = time.monotonic() - began
    assert took < 3, took
    assert "TimeoutError" in found(report, "redis")[0][1]
    [(level, text)] = found(report, "site-queue")
    assert level is Level.PROBLEM and "ReadTimeout" in text
    assert found(report, "flower")[0][0] is Level.WARNING


def test_settings_that_do_not_load_are_one_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_CLOUD_ROUTING_POLICY", "fastest")
    assert check_command(None, as_json=True, strict=False) == 1
    report = json.loads(capsys.readouterr().out)
    [finding] = report["findings"]
    assert finding["check"] == "settings"
    assert "fix OLLAMA_CLOUD_ROUTING_POLICY or `routing_policy`" in finding["text"]

    monkeypatch.delenv("OLLAMA_CLOUD_ROUTING_POLICY")
    config = tmp_path / "ollama-cloud.toml"
    config.write_text('redis_url = "redis://127.0.0.1:6379/0\n')  # an unclosed string
    assert check_command(config, as_json=False, strict=False) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL settings: cannot be read") and out.endswith(
        "1 problem, 0 warnings\n"
    )


def test_a_redis_that_speaks_only_tls_is_named_as_such(
    tmp_path: Path, site_queue: str, entities: Path
) -> None:
    if not redis_speaks_tls():
        pytest.skip("no redis-server with TLS, or no openssl, on this machine")
    with EmbeddedRedis(tls=make_certificates(tmp_path), password=PASSWORD) as tls_redis:
        plain = f"redis://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0"
        [(level, text)] = found(run_checks(settings_for(plain, site_queue, entities)), "redis")
        assert level is Level.PROBLEM
        assert "closed the connection" in text and "use rediss://" in text

        unsigned = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0"
        [(level, text)] = found(run_checks(settings_for(unsigned, site_queue, entities)), "redis")
        assert level is Level.PROBLEM
        assert "TLS failed" in text and "CERTIFICATE_VERIFY_FAILED" in text
        assert "ssl_ca_certs=" in text

        report = run_checks(settings_for(tls_redis.url, site_queue, entities))
        assert found(report, "redis")[0][0] is Level.OK
        assert PASSWORD not in json.dumps(report.as_json())
