"""`ollama-cloud check`: what is wrong before the system starts, one line per problem saying
what is wrong and how to fix it.

A problem is something that keeps messages from being answered, or a Redis that could lose or
evict the ledger; any problem makes the exit status 1. A warning is something an operator expects
to work but that no message needs (Flower, the fleet page, a server whose model server does not
answer while others do); warnings count only with `--strict`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry
from rich.console import Console
from rich.text import Text

from orchestrator.domain.entities import GLOBAL_FILE, Entity
from orchestrator.domain.servers import ServerView
from orchestrator.entity_folder import read_file
from orchestrator.errors import (
    BadQueueAnswer,
    QueueClientError,
    QueueError,
    QueueServerError,
    QueueUnreachable,
)
from orchestrator.settings import Settings
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.fleet import Fleet
from workers.contract.keys import Keys
from workers.contract.model_names import model_key
from workers.contract.settings import ENV_PREFIX
from workers.heartbeat import redis_hint

TIMEOUT_S = 2.0  # each probe: the whole check ends in seconds even when everything is down
MASK = "***"
MIN_SCRUBBED_CHARS = 8
CUT_OFF = ("reset by peer", "closed by server")  # a plain connection to a TLS port
START_WORKER = "celery -A workers worker -Q mac-1 -n mac-1@%h"
# The checks, in the order they are shown.
CHECKS = (
    "settings",
    "redis",
    "redis-persistence",
    "redis-eviction",
    "site-queue",
    "entities",
    "fleet",
    "models",
    "flower",
    "fleet-page",
)


class Level(StrEnum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"
    SKIPPED = "skipped"  # could not be looked at, because of a problem said elsewhere


@dataclass(frozen=True)
class Finding:
    """One line of the report: what a check found and, unless it is ok, how to fix it."""

    check: str
    level: Level
    text: str


@dataclass(frozen=True)
class Report:
    findings: list[Finding]

    def count(self, level: Level) -> int:
        return sum(finding.level is level for finding in self.findings)

    def exit_status(self, *, strict: bool = False) -> int:
        failing = self.count(Level.PROBLEM) + (self.count(Level.WARNING) if strict else 0)
        return 1 if failing else 0

    def as_json(self, *, strict: bool = False) -> dict[str, Any]:
        return {
            "ok": self.exit_status(strict=strict) == 0,
            "problems": self.count(Level.PROBLEM),
            "warnings": self.count(Level.WARNING),
            "findings": [asdict(finding) for finding in self.findings],
        }


def masked_url(url: str) -> str:
    """The URL with its password (or a lone user, which Redis takes as one) replaced by ***."""
    try:
        parts = urlsplit(url)
        if not parts.netloc or "@" not in parts.netloc:
            return url
        user_part, _, host = parts.netloc.rpartition("@")
        user, colon, _ = user_part.partition(":")
        userinfo = f"{user}:{MASK}" if colon else MASK
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))
    except ValueError:
        return "(unparsable URL)"


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold, so that none of them is ever printed."""
    found = [settings.queue_token_value() or ""]
    auth = settings.web_basic_auth_value()
    if auth is not None:
        found.append(auth[1])
    for url in (settings.redis_url, settings.queue_url, settings.flower_url, settings.web_url):
        try:
            parts = urlsplit(url or "")
            # A lone user is Redis's password (redis://PASSWORD@host).
            found.append((parts.username if parts.password is None else parts.password) or "")
        except ValueError:
            continue
    # A safety net behind the masked URLs: only what could not turn up by chance in a line (a
    # short password such as "wrong" would mask the word wherever it is said).
    return [secret for secret in found if len(secret) >= MIN_SCRUBBED_CHARS]


def listed(names: Iterable[str], most: int = 12) -> str:
    """Names for one line: the first `most`, and how many more."""
    names = list(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def scrubbed(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


# Redis -------------------------------------------------------------------------------------------


def quick_redis(url: str, timeout_s: float) -> redis.Redis:
    """A client that gives up at once: no retries, short timeouts (the services' client rides
    out a Redis restart, which is not what a check wants)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def redis_failure(client: redis.Redis, url: str, exc: redis.RedisError) -> str:
    """What to do about a Redis that does not answer, by what went wrong."""
    shown = masked_url(url)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc):
        return (
            f"Redis at {shown} refused the password ({exc}): put Redis's requirepass in "
            "OLLAMA_CLOUD_REDIS_URL as redis://:PASSWORD@host:6379/0"
        )
    reason = str(exc)
    if "ssl" in reason.lower() or "tls" in reason.lower():
        if url.startswith("rediss://"):
            fix = (
                "check that Redis speaks TLS on that port and that ssl_ca_certs= in the URL "
                "names the authority that signed its certificate"
            )
        else:
            fix = "a Redis that speaks TLS is reached with rediss:// in OLLAMA_CLOUD_REDIS_URL"
        return f"Redis at {shown}: TLS failed ({reason}): {fix}"
    if url.startswith("redis://") and any(cut in reason.lower() for cut in CUT_OFF):
        # Something listens there but drops a plain connection: a Redis that speaks only TLS.
        return (
            f"Redis at {shown} closed the connection ({reason}): if it speaks TLS, use rediss:// "
            "in OLLAMA_CLOUD_REDIS_URL (with ssl_ca_certs=/path/to/ca.crt for a private authority)"
        )
    hint = redis_hint(client)
    return f"Redis at {shown} does not answer ({type(exc).__name__}: {reason}): {hint}"


def config_value(client: redis.Redis, name: str, section: str, field: str) -> str | None:
    """A setting from CONFIG GET, else from INFO (a managed Redis may refuse CONFIG)."""
    try:
        found = client.config_get(name)
        if isinstance(found, dict) and name in found:
            return str(found[name])
    except redis.ResponseError:
        pass
    try:
        info = client.info(section)
    except redis.ResponseError:
        return None
    value = info.get(field)
    return None if value is None else str(value)


def check_persistence(client: redis.Redis) -> list[Finding]:
    findings = []
    appendonly = config_value(client, "appendonly", "persistence", "aof_enabled")
    if appendonly is None:
        findings.append(
            Finding(
                "redis-persistence",
                Level.WARNING,
                "cannot tell whether Redis keeps an append-only file (neither CONFIG GET "
                "appendonly nor INFO persistence answers): make sure it runs with appendonly yes",
            )
        )
    elif appendonly.lower() in ("yes", "1"):
        findings.append(Finding("redis-persistence", Level.OK, "append-only file on"))
    else:
        findings.append(
            Finding(
                "redis-persistence",
                Level.PROBLEM,
                "Redis keeps no append-only file, so a restart loses claimed messages: run "
                "`redis-cli CONFIG SET appendonly yes` and put `appendonly yes` in redis.conf "
                "(or `--appendonly yes` in redis-server's command, as in docker-compose.yml)",
            )
        )
    policy = config_value(client, "maxmemory-policy", "memory", "maxmemory_policy")
    if policy is None:
        findings.append(
            Finding(
                "redis-eviction",
                Level.WARNING,
                "cannot tell Redis's maxmemory-policy (neither CONFIG GET nor INFO memory "
                "answers): make sure it is noeviction",
            )
        )
    elif policy == "noeviction":
        findings.append(Finding("redis-eviction", Level.OK, "maxmemory-policy noeviction"))
    else:
        findings.append(
            Finding(
                "redis-eviction",
                Level.PROBLEM,
                f"Redis's maxmemory-policy is {policy}, so it may evict the ledger's keys: run "
                "`redis-cli CONFIG SET maxmemory-policy noeviction` and put `maxmemory-policy "
                "noeviction` in redis.conf (or `--maxmemory-policy noeviction` in redis-server's "
                "command)",
            )
        )
    return findings


# The site queue ----------------------------------------------------------------------------------


def check_site_queue(settings: Settings, timeout_s: float) -> Finding:
    """Asks for one pending message, which claims nothing, with the bridge's own token."""
    shown = masked_url(settings.queue_url)
    token = settings.queue_token_value()
    try:
        with SiteQueueClient(
            settings.queue_url, token, connect_timeout=timeout_s, timeout=timeout_s
        ) as queue:
            queue.pending(limit=1)
    except QueueClientError as exc:
        if exc.status_code in (401, 403):
            if token is None:
                fix = "it asks for a token: set OLLAMA_CLOUD_QUEUE_TOKEN to the site's queue token"
            else:
                fix = "the token is wrong: set OLLAMA_CLOUD_QUEUE_TOKEN to the site's queue token"
            text = f"site queue at {shown} answered HTTP {exc.status_code}: {fix}"
        else:
            text = (
                f"site queue at {shown} answered HTTP {exc.status_code} to GET "
                "/api/queue/pending: check OLLAMA_CLOUD_QUEUE_URL (the queue's base URL, without "
                "/api/...)"
            )
        return Finding("site-queue", Level.PROBLEM, text)
    except QueueUnreachable as exc:
        why = type(exc.__cause__).__name__ if exc.__cause__ else "no answer"
        return Finding(
            "site-queue",
            Level.PROBLEM,
            f"site queue at {shown} does not answer ({why}): check "
            "OLLAMA_CLOUD_QUEUE_URL (address, port, https) and that the queue is up",
        )
    except QueueServerError as exc:
        return Finding(
            "site-queue",
            Level.PROBLEM,
            f"site queue at {shown} fails (HTTP {exc.status_code}): the site's queue is down or "
            "broken; see its logs",
        )
    except BadQueueAnswer:
        return Finding(
            "site-queue",
            Level.PROBLEM,
            f"{shown} answers, but not as the site queue: check OLLAMA_CLOUD_QUEUE_URL (the "
            "queue's base URL, without /api/...)",
        )
    except QueueError as exc:
        return Finding("site-queue", Level.PROBLEM, f"site queue at {shown}: {exc}")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
        return Finding(
            "site-queue",
            Level.PROBLEM,
            f"OLLAMA_CLOUD_QUEUE_URL {shown} is not an http(s) URL ({exc})",
        )
    tokened = "token accepted" if token else "no token asked"
    return Finding("site-queue", Level.OK, f"site queue at {shown} answers ({tokened})")


# Entities and the fleet --------------------------------------------------------------------------


def read_entities(folder: Path) -> tuple[list[Entity], list[Finding]]:
    """Every entity of the folder as the bridge reads it, and a problem per file it skips."""
    if not folder.is_dir():
        return [], [
            Finding(
                "entities",
                Level.PROBLEM,
                f"entities folder {folder} does not exist: set OLLAMA_CLOUD_ENTITIES_DIR to the "
                "folder of entity files",
            )
        ]
    findings = []
    entities: dict[str, tuple[Entity, str]] = {}
    try:
        paths = sorted(path for path in folder.iterdir() if path.suffix == ".json")
    except OSError as exc:
        return [], [Finding("entities", Level.PROBLEM, f"entities folder {folder}: {exc}")]
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            findings.append(Finding("entities", Level.PROBLEM, f"entity file {path.name}: {exc}"))
            continue
        reading = read_file(path, (stat.st_mtime_ns, stat.st_size))
        if reading.problem:
            skipped = "is skipped" if not reading.entities else "has parts that are skipped"
            findings.append(
                Finding(
                    "entities",
                    Level.PROBLEM,
                    f"entity file {path.name} {skipped}: {reading.problem}: fix the file "
                    "(the bridge reads it again within a second)",
                )
            )
        for entity in reading.entities:
            if entity.id in entities:
                findings.append(
                    Finding(
                        "entities",
                        Level.PROBLEM,
                        f"entity file {path.name}: id {entity.id!r} is already in "
                        f"{entities[entity.id][1]}, so this one is skipped: rename one of them",
                    )
                )
                continue
            entities[entity.id] = (entity, path.name)
    loaded = [entity for entity, _ in entities.values()]
    if not loaded and not findings:
        only_global = [path.name for path in paths] == [GLOBAL_FILE]
        findings.append(
            Finding(
                "entities",
                Level.PROBLEM,
                f"no entity files in {folder}{' but global.json' if only_global else ''}: "
                "add one <id>.json per entity, or point OLLAMA_CLOUD_ENTITIES_DIR at them",
            )
        )
    return loaded, findings


def check_scorer(settings: Settings, entities: list[Entity]) -> list[Finding]:
    if not settings.eq_enabled:
        return []
    scorer = next((entity for entity in entities if entity.id == settings.eq_entity), None)
    if scorer is None:
        return [
            Finding(
                "entities",
                Level.PROBLEM,
                f"scoring is on but no entity {settings.eq_entity!r} is loaded: add "
                f"{settings.eq_entity}.json to the entities folder, or name the scorer in "
                "OLLAMA_CLOUD_EQ_ENTITY, or set OLLAMA_CLOUD_EQ_ENABLED=false",
            )
        ]
    if not scorer.enabled:
        return [
            Finding(
                "entities",
                Level.PROBLEM,
                f'scoring is on but the scorer {scorer.id!r} is disabled: set "enabled": true '
                f"in its file, or set OLLAMA_CLOUD_EQ_ENABLED=false",
            )
        ]
    return []


def wanted_models(settings: Settings, entities: list[Entity]) -> dict[str, list[str]]:
    """Each model by its key, as routing matches it, with the entities that need it."""
    wanted: dict[str, list[str]] = {}
    for entity in entities:
        scores = settings.eq_enabled and entity.id == settings.eq_entity and entity.enabled
        if (entity.answers or scores) and entity.model:
            wanted.setdefault(model_key(entity.model), []).append(entity.id)
    return wanted


def check_fleet(servers: list[ServerView]) -> list[Finding]:
    online = [server for server in servers if server.online]
    if not online:
        known = f" ({len(servers)} known, all offline)" if servers else ""
        return [
            Finding(
                "fleet",
                Level.PROBLEM,
                f"no server is online{known}: start a worker beside each model server "
                f"(`{START_WORKER}`) with OLLAMA_CLOUD_REDIS_URL pointing at this Redis",
            )
        ]
    findings = [
        Finding(
            "fleet",
            Level.OK,
            f"{len(online)} of {len(servers)} servers online: "
            + listed(server.id for server in online),
        )
    ]
    for server in online:
        if not server.healthy:
            fault = f" ({server.fault})" if server.fault else ""
            findings.append(
                Finding(
                    "fleet",
                    Level.WARNING,
                    f"server {server.id} is online but its model server does not answer{fault}: "
                    "start it there, or check that worker's OLLAMA_CLOUD_OLLAMA_URL (or its "
                    "backend's address)",
                )
            )
    return findings


def check_models(wanted: dict[str, list[str]], servers: list[ServerView]) -> list[Finding]:
    online = [server for server in servers if server.online]
    if not online:
        return []  # said once by the fleet's check
    served: set[str] = set().union(*(server.models for server in online))
    findings = []
    for model, entity_ids in sorted(wanted.items()):
        if model in served:
            continue
        close = difflib.get_close_matches(model, sorted(served), n=1)
        maybe = f" (did you mean {close[0]}?)" if close else ""
        findings.append(
            Finding(
                "models",
                Level.PROBLEM,
                f"model {model} of {', '.join(sorted(entity_ids))} is on no online server{maybe}: "
                f"install it on a server (Ollama: `ollama pull {model}`), or change the entity's "
                "model",
            )
        )
    if not findings and wanted:
        findings.append(
            Finding(
                "models",
                Level.OK,
                f"every entity's model is on an online server ({len(wanted)} models)",
            )
        )
    return findings


# Flower and the fleet page -----------------------------------------------------------------------


def reachable(
    check: str, what: str, base_url: str, paths: list[str], fix: str, timeout_s: float
) -> Finding:
    """A page that answers 200 (or 401: it is there, behind its password) at one of `paths`."""
    shown = masked_url(base_url)
    answered: list[str] = []
    try:
        with httpx.Client(timeout=timeout_s) as client:
            for path in paths:
                response = client.get(f"{base_url.rstrip('/')}{path}")
                if response.status_code in (200, 401):
                    behind = " (behind its password)" if response.status_code == 401 else ""
                    return Finding(check, Level.OK, f"{what} answers at {shown}{behind}")
                answered.append(f"HTTP {response.status_code} on {path}")
    except httpx.HTTPError as exc:
        return Finding(
            check, Level.WARNING, f"{what} does not answer at {shown} ({type(exc).__name__}): {fix}"
        )
    return Finding(check, Level.WARNING, f"{what} at {shown} answered {', '.join(answered)}: {fix}")


def check_flower(settings: Settings, timeout_s: float) -> Finding:
    return reachable(
        "flower",
        "Flower",
        settings.flower_url,
        ["/healthcheck"],
        "start it (`celery -A orchestrator flower`, in the Procfile) or set "
        "OLLAMA_CLOUD_FLOWER_URL to where it listens",
        timeout_s,
    )


def check_fleet_page(settings: Settings, timeout_s: float) -> Finding:
    return reachable(
        "fleet-page",
        "the fleet page",
        settings.fleet_page_url(),
        ["/healthz", "/"],
        "start it (`ollama-cloud web`) or set OLLAMA_CLOUD_WEB_URL to where it listens",
        timeout_s,
    )


# The whole check ---------------------------------------------------------------------------------


def check_redis_side(settings: Settings, timeout_s: float) -> list[Finding]:
    """Redis, its persistence, then the entities and whether the fleet serves their models."""
    entities, findings = read_entities(settings.entities_dir)
    if entities:
        findings += check_scorer(settings, entities)
    if entities and not findings:
        findings.append(
            Finding(
                "entities",
                Level.OK,
                f"{len(entities)} entities from {settings.entities_dir}: "
                + listed(sorted(entity.id for entity in entities)),
            )
        )
    try:
        client = quick_redis(settings.redis_url, timeout_s)
    except ValueError as exc:
        return [
            Finding(
                "redis",
                Level.PROBLEM,
                f"OLLAMA_CLOUD_REDIS_URL is not a Redis URL ({exc}): redis://:PASSWORD@host:6379/0 "
                "or rediss:// for TLS",
            ),
            Finding("redis-persistence", Level.SKIPPED, "not looked at: Redis does not answer"),
            *findings,
            Finding("fleet", Level.SKIPPED, "not looked at: Redis does not answer"),
        ]
    try:
        try:
            client.ping()
        except redis.RedisError as exc:
            return [
                Finding("redis", Level.PROBLEM, redis_failure(client, settings.redis_url, exc)),
                Finding("redis-persistence", Level.SKIPPED, "not looked at: Redis does not answer"),
                *findings,
                Finding("fleet", Level.SKIPPED, "not looked at: Redis does not answer"),
            ]
        version = ""
        with contextlib.suppress(redis.RedisError):
            version = f" (Redis {client.info('server').get('redis_version', '?')})"
        redis_findings = [
            Finding(
                "redis", Level.OK, f"Redis answers at {masked_url(settings.redis_url)}{version}"
            ),
            *check_persistence(client),
        ]
        fleet = Fleet(client, Keys(settings.key_prefix), lost_after_s=settings.server_lost_after_s)
        try:
            servers = fleet.read()
        except redis.RedisError as exc:
            return [
                *redis_findings,
                *findings,
                Finding("fleet", Level.PROBLEM, f"the fleet registry cannot be read: {exc}"),
            ]
        return [
            *redis_findings,
            *findings,
            *check_fleet(servers),
            *check_models(wanted_models(settings, entities), servers),
        ]
    finally:
        client.close()


def run_checks(settings: Settings, timeout_s: float = TIMEOUT_S) -> Report:
    """Every check, the HTTP ones beside Redis's, so the whole takes one timeout or two."""
    probes: list[Callable[[Settings, float], Finding]] = [
        check_site_queue,
        check_flower,
        check_fleet_page,
    ]
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        futures = [pool.submit(probe, settings, timeout_s) for probe in probes]
        redis_side = check_redis_side(settings, timeout_s)
        site_queue, flower, fleet_page = (future.result() for future in futures)
    findings = sorted([*redis_side, site_queue, flower, fleet_page], key=shown_order)
    secrets = secrets_of(settings)
    return Report([Finding(f.check, f.level, scrubbed(f.text, secrets)) for f in findings])


def shown_order(finding: Finding) -> int:
    return CHECKS.index(finding.check)


# Showing it --------------------------------------------------------------------------------------

MARKS = {
    Level.OK: ("✓", "green"),
    Level.WARNING: ("!", "yellow"),
    Level.PROBLEM: ("✗", "bold red"),
    Level.SKIPPED: ("-", "dim"),
}
WORDS = {Level.OK: "ok", Level.WARNING: "warn", Level.PROBLEM: "FAIL", Level.SKIPPED: "skip"}


def summary(report: Report, *, strict: bool) -> str:
    problems, warnings = report.count(Level.PROBLEM), report.count(Level.WARNING)
    if not problems and not warnings:
        return "all good"
    said = f"{problems} problem{'s' * (problems != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if not problems and not strict:
        return f"{said}: nothing keeps messages from being answered"
    return said


def print_report(report: Report, console: Console, *, strict: bool) -> None:
    """Marks and colours on a terminal; a plain `word check: text` line per finding elsewhere."""
    for finding in report.findings:
        if console.is_terminal:
            mark, style = MARKS[finding.level]
            line = Text.assemble((f"{mark} ", style), (f"{finding.check}: ", "bold"))
            line.append(finding.text, style="dim" if finding.level is Level.SKIPPED else "")
            console.print(line, overflow="fold")
        else:
            console.print(
                f"{WORDS[finding.level]:<4} {finding.check}: {finding.text}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    failed = report.exit_status(strict=strict)
    style = ("bold red" if failed else "bold green") if console.is_terminal else ""
    console.print(Text(summary(report, strict=strict), style=style), soft_wrap=True)


def load_settings(config: Path | None, **flags: Any) -> Settings | str:
    """The settings, or what is wrong with them, in one line."""
    try:
        return Settings.load(config, **flags)
    except ValidationError as exc:
        wrong = []
        for error in exc.errors()[:5]:
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            wrong.append(
                f"{field}: {error['msg']}: fix {ENV_PREFIX}{field.upper()} or `{field}` in the "
                "--config file"
            )
        return "; ".join(wrong)
    except (OSError, ValueError) as exc:
        return f"cannot be read ({exc}): fix the --config file"


def check_command(
    config: Path | None, *, as_json: bool, strict: bool, timeout_s: float = TIMEOUT_S, **flags: Any
) -> int:
    """Check everything, print the report, and return the exit status: 1 when anything is
    wrong (with `strict`, also when anything warns), else 0."""
    settings = load_settings(config, **flags)
    if isinstance(settings, str):
        report = Report([Finding("settings", Level.PROBLEM, settings)])
    else:
        report = run_checks(settings, timeout_s)
    if as_json:
        print(json.dumps(report.as_json(strict=strict)))
    else:
        print_report(report, Console(file=sys.stdout), strict=strict)
    return report.exit_status(strict=strict)
