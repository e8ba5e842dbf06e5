"""`ollama-cloud`: a thin layer that parses flags, builds settings and calls one function."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.settings import Settings
from workers.contract import logs
from workers.contract.settings import CelerySettings

if TYPE_CHECKING:
    from orchestrator.ops.service import Program

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
queue_app = typer.Typer(no_args_is_help=True, help="The local site queue.")
app.add_typer(queue_app, name="queue")
jobs_app = typer.Typer(
    invoke_without_command=True,
    help="In-flight jobs and dead letters (`jobs` alone lists them): list, show, retry, drop.",
)
app.add_typer(jobs_app, name="jobs")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (else OLLAMA_CLOUD_CONFIG)")
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


LogFormatOption = Annotated[
    LogFormat | None,
    typer.Option(
        "--log-format", help="text, or one JSON object per line (else OLLAMA_CLOUD_LOG_FORMAT)"
    ),
]


class DemoBackend(StrEnum):
    OLLAMA = "ollama"
    LLAMACPP = "llamacpp"


def setup_logging(level: str, log_format: str | None = None, process: str = "") -> None:
    """`log_format`: text or json; when not given, the setting (OLLAMA_CLOUD_LOG_FORMAT)."""
    logs.configure(level, log_format or CelerySettings().log_format, process)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so a loop ends its current step and exits cleanly."""
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


@app.command()
def bridge(
    config: ConfigOption = None,
    queue_url: Annotated[str | None, typer.Option(help="The site queue's URL")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
    entities_dir: Annotated[Path | None, typer.Option(help="Folder of entity files")] = None,
    bridge_id: Annotated[str | None, typer.Option(help="workerId to claim with")] = None,
    log_level: LogLevel = "info",
    log_format: LogFormatOption = None,
) -> None:
    """Claim messages from the site queue and dispatch them to the fleet."""
    from orchestrator.bridge import run_bridge  # noqa: PLC0415 - keep `--help` fast

    settings = Settings.load(
        config,
        queue_url=queue_url,
        redis_url=redis_url,
        entities_dir=entities_dir,
        bridge_id=bridge_id,
        log_format=log_format,
    )
    setup_logging(log_level, settings.log_format, "bridge")
    run_bridge(settings, stop_on_signals())


@app.command()
def status(
    config: ConfigOption = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts")] = False,
) -> None:
    """The fleet: one row per server (online, load, latency, models, heartbeat, queue)."""
    from orchestrator.ops.status import status_command  # noqa: PLC0415

    settings = Settings.load(config, redis_url=redis_url)
    stop = stop_on_signals() if watch else None
    raise typer.Exit(status_command(settings, as_json=as_json, watch=stop))


@app.command()
def check(
    config: ConfigOption = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
    queue_url: Annotated[str | None, typer.Option(help="The site queue's URL")] = None,
    entities_dir: Annotated[Path | None, typer.Option(help="Folder of entity files")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Warnings (Flower, the fleet page) fail too")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts")] = False,
) -> None:
    """What is wrong before starting: Redis (reachable, AOF, noeviction), the site queue and
    its token, the entity files and their models on online servers, Flower and the fleet page.
    One line per problem with its fix; exit status 1 when anything is wrong."""
    from orchestrator.ops.check import check_command  # noqa: PLC0415

    raise typer.Exit(
        check_command(
            config,
            as_json=as_json,
            strict=strict,
            redis_url=redis_url,
            queue_url=queue_url,
            entities_dir=entities_dir,
        )
    )


@app.command()
def web(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (else 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (else 8470)")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
    log_level: LogLevel = "info",
    log_format: LogFormatOption = None,
) -> None:
    """The fleet page, read-only: servers, jobs in flight, recent replies, dead letters and
    totals per minute, refreshed every second; /metrics for Prometheus, /healthz for checks.
    Basic auth when OLLAMA_CLOUD_WEB_BASIC_AUTH=user:password is set."""
    from orchestrator.ops.web import run_web  # noqa: PLC0415

    settings = Settings.load(
        config, web_host=host, web_port=port, redis_url=redis_url, log_format=log_format
    )
    setup_logging(log_level, settings.log_format, "web")
    raise typer.Exit(run_web(settings, stop_on_signals()))


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
    add_help_option=False,
)
def supervise(ctx: typer.Context) -> None:
    """Run `-- COMMAND ...` and start it again whenever it exits (`supervise --help`)."""
    from orchestrator.ops.supervise import main  # noqa: PLC0415

    raise typer.Exit(main(list(ctx.args)))


class MeshBackend(StrEnum):
    OLLAMA = "ollama"
    OPENAI = "openai"
    POOL = "pool"


mesh_app = typer.Typer(invoke_without_command=True)
app.add_typer(mesh_app, name="mesh")


MeshHosts = Annotated[
    list[str] | None,
    typer.Option("--hosts", help="Serve the config's aliases matching this pattern (mac-*)"),
]
MeshNodes = Annotated[
    list[str] | None, typer.Option("--node", help="Serve this alias (repeat for more)")
]
MeshBackendOption = Annotated[
    MeshBackend | None,
    typer.Option("--backend", help="What listens on each node (else OLLAMA_CLOUD_BACKEND, ollama)"),
]
MeshPorts = Annotated[
    list[str] | None,
    typer.Option(
        "--port",
        help="The model server's port on each node's 127.0.0.1: PORT, or alias=PORT "
        "(repeat); else the backend's usual one",
    ),
]


@mesh_app.callback()
def mesh(
    ctx: typer.Context,
    hosts: MeshHosts = None,
    node: MeshNodes = None,
    backend: MeshBackendOption = None,
    port: MeshPorts = None,
    log_level: LogLevel = "info",
    log_format: LogFormatOption = None,
) -> None:
    """Serve many SSH nodes from this host: each alias of ~/.ssh/config (OLLAMA_CLOUD_SSH_CONFIG)
    chosen by --hosts or --node is a server of that id with its own queue, reached at
    ssh://alias; adding or removing a Host entry brings a node in or takes it out.
    `mesh install` keeps one running as a service that starts at boot."""
    if ctx.invoked_subcommand is not None:
        if hosts or node or backend or port:
            raise typer.BadParameter(f"give the options after `mesh {ctx.invoked_subcommand}`")
        return
    from workers.mesh import run_mesh  # noqa: PLC0415
    from workers.settings import DEFAULT_ENTRY, WorkerSettings  # noqa: PLC0415

    if not hosts and not node:
        raise typer.BadParameter("name the nodes: --hosts PATTERN or --node ALIAS")
    ports = {
        (entry.partition("=")[0] if "=" in entry else DEFAULT_ENTRY): entry.rpartition("=")[2]
        for entry in port or []
    }
    overrides: dict[str, Any] = {"mesh_ports": ports} if ports else {}
    if backend is not None:
        overrides["backend"] = backend.value
    if log_format is not None:
        overrides["log_format"] = log_format.value
    settings = WorkerSettings(**overrides)
    setup_logging(log_level, settings.log_format, "mesh")
    run_mesh(settings, list(hosts or []), list(node or []), stop_on_signals())


# Services: a worker or a mesh kept by launchd or systemd ---------------------------------------


class ServiceManager(StrEnum):
    LAUNCHD = "launchd"
    SYSTEMD = "systemd"


ServicePlatform = Annotated[
    ServiceManager | None,
    typer.Option(
        help="launchd or systemd; else this system's (launchd on macOS, systemd on Linux)"
    ),
]
SystemService = Annotated[
    bool,
    typer.Option(
        "--system",
        help="A system service, run as --user, that starts at boot with nobody logged in: what "
        "a Mac without automatic login needs to come back after a power cut (a LaunchDaemon; on "
        "Linux a system unit). Needs root: `sudo -E`, so that your settings come along",
    ),
]
ServiceUser = Annotated[
    str | None, typer.Option("--user", help="With --system: the account it runs as (else sudo's)")
]
NoStart = Annotated[bool, typer.Option("--no-start", help="Write the files; load nothing")]
PrintOnly = Annotated[
    bool,
    typer.Option("--print", "--dry-run", help="Show the files (secrets masked); write nothing"),
]
NoStop = Annotated[bool, typer.Option("--no-stop", help="Remove the files; stop nothing")]
ServiceQueue = Annotated[
    str, typer.Option("--queue", "-Q", help="The server's id and its queue (mac-1)")
]
MeshName = Annotated[str | None, typer.Option("--name", help="Tells two meshes on one host apart")]

worker_app = typer.Typer(
    no_args_is_help=True,
    help="This machine's worker as a service that starts at boot and again whenever it exits: "
    "install, uninstall.",
)
app.add_typer(worker_app, name="worker")


def service_command(action: Callable[[], list[str]]) -> None:
    """Show what `action` did, line by line; its refusal is one line on stderr and status 1."""
    from orchestrator.ops.service import ServiceError  # noqa: PLC0415

    try:
        lines = action()
    except ServiceError as exc:
        typer.echo(f"ollama-cloud: {exc}", err=True)
        raise typer.Exit(1) from None
    for line in lines:
        typer.echo(line)


def install_service(
    parts: tuple[str, ...],
    program: Callable[[], Program],
    platform: ServiceManager | None,
    system: bool,
    user: str | None,
    start: bool,
    print_only: bool,
) -> None:
    from orchestrator.ops import service  # noqa: PLC0415

    def act() -> list[str]:
        target = service.service_for(
            parts, platform.value if platform else None, system=system, user=user
        )
        if print_only:
            return [service.preview(target, program())]
        return service.install(target, program(), start=start)

    service_command(act)


def uninstall_service(
    parts: tuple[str, ...],
    platform: ServiceManager | None,
    system: bool,
    user: str | None,
    stop: bool,
) -> None:
    from orchestrator.ops import service  # noqa: PLC0415

    service_command(
        lambda: service.uninstall(
            service.service_for(
                parts, platform.value if platform else None, system=system, user=user
            ),
            stop=stop,
        )
    )


@worker_app.command("install")
def worker_install(
    queue: ServiceQueue,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", min=1, help="Worker threads (else the setting, 4)"),
    ] = None,
    system: SystemService = False,
    user: ServiceUser = None,
    platform: ServicePlatform = None,
    no_start: NoStart = False,
    print_only: PrintOnly = False,
) -> None:
    """Run `celery -A workers worker -Q QUEUE` as a service that starts at boot.

    With this environment's OLLAMA_CLOUD_* settings: a launchd agent on macOS
    (~/Library/LaunchAgents), a systemd user unit on Linux; started now, at login (or boot),
    and again whenever it exits. Installing again replaces it. The file with the settings is
    readable by you alone: it may hold the Redis password."""
    from orchestrator.ops import service  # noqa: PLC0415

    install_service(
        ("worker", queue),
        lambda: service.worker_program(queue, service.settings_environment(), concurrency),
        platform, system, user, not no_start, print_only,
    )  # fmt: skip


@worker_app.command("uninstall")
def worker_uninstall(
    queue: ServiceQueue,
    system: SystemService = False,
    user: ServiceUser = None,
    platform: ServicePlatform = None,
    no_stop: NoStop = False,
) -> None:
    """Stop the worker's service and remove its files (its log stays)."""
    uninstall_service(("worker", queue), platform, system, user, not no_stop)


@mesh_app.command("install")
def mesh_install(
    hosts: MeshHosts = None,
    node: MeshNodes = None,
    backend: MeshBackendOption = None,
    port: MeshPorts = None,
    name: MeshName = None,
    system: SystemService = False,
    user: ServiceUser = None,
    platform: ServicePlatform = None,
    no_start: NoStart = False,
    print_only: PrintOnly = False,
) -> None:
    """Run `ollama-cloud mesh` with these nodes as a service that starts at boot.

    With this environment's OLLAMA_CLOUD_* settings, as `worker install` does a worker."""
    from orchestrator.ops import service  # noqa: PLC0415

    install_service(
        ("mesh", name) if name else ("mesh",),
        lambda: service.mesh_program(
            service.settings_environment(),
            hosts or [], node or [], backend.value if backend else None, port or [],
        ),
        platform, system, user, not no_start, print_only,
    )  # fmt: skip


@mesh_app.command("uninstall")
def mesh_uninstall(
    name: MeshName = None,
    system: SystemService = False,
    user: ServiceUser = None,
    platform: ServicePlatform = None,
    no_stop: NoStop = False,
) -> None:
    """Stop the mesh's service and remove its files (its log stays)."""
    uninstall_service(("mesh", name) if name else ("mesh",), platform, system, user, not no_stop)


RedisUrl = Annotated[str | None, typer.Option(help="Redis URL")]
JobId = Annotated[str, typer.Argument(help="The job's id (the site message's id)")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object, for scripts")]
Limit = Annotated[int, typer.Option("--limit", min=1, help="Show at most N of each list")]


@jobs_app.callback()
def jobs_main(
    ctx: typer.Context,
    config: ConfigOption = None,
    redis_url: RedisUrl = None,
    as_json: AsJson = False,
    limit: Limit = 50,
) -> None:
    """In-flight jobs and dead letters: `jobs` alone lists them (as `jobs list`)."""
    if ctx.invoked_subcommand is None:
        jobs_list(config, redis_url, as_json, limit)


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = None,
    redis_url: RedisUrl = None,
    as_json: AsJson = False,
    limit: Limit = 50,
) -> None:
    """Active jobs (state, attempt, server, age, deadline, last error) and dead letters."""
    from orchestrator.ops.jobs import list_command  # noqa: PLC0415

    settings = Settings.load(config, redis_url=redis_url)
    raise typer.Exit(list_command(settings, limit=limit, as_json=as_json))


@jobs_app.command("show")
def jobs_show(
    job_id: JobId, config: ConfigOption = None, redis_url: RedisUrl = None, as_json: AsJson = False
) -> None:
    """One job whole: its fields, its message, every attempt."""
    from orchestrator.ops.jobs import show_command  # noqa: PLC0415

    settings = Settings.load(config, redis_url=redis_url)
    raise typer.Exit(show_command(settings, job_id, as_json=as_json))


@jobs_app.command("retry")
def jobs_retry(job_id: JobId, config: ConfigOption = None, redis_url: RedisUrl = None) -> None:
    """Place a dead letter again: its failures forgiven, a new deadline, any server."""
    from orchestrator.ops.jobs import retry_command  # noqa: PLC0415

    settings = Settings.load(config, redis_url=redis_url)
    raise typer.Exit(retry_command(settings, job_id))


@jobs_app.command("drop")
def jobs_drop(
    job_id: JobId,
    config: ConfigOption = None,
    redis_url: RedisUrl = None,
    queue_url: Annotated[str | None, typer.Option(help="The site queue's URL")] = None,
) -> None:
    """End an active or dead job without a reply, and complete it on the site."""
    from orchestrator.ops.jobs import drop_command  # noqa: PLC0415

    settings = Settings.load(config, redis_url=redis_url, queue_url=queue_url)
    raise typer.Exit(drop_command(settings, job_id))


@queue_app.command("serve")
def queue_serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8787,
    db: Annotated[Path, typer.Option(help="SQLite file")] = Path("queue.sqlite3"),
    log_level: LogLevel = "info",
) -> None:
    """Serve the site queue's API from SQLite (token: OLLAMA_CLOUD_QUEUE_TOKEN, optional)."""
    from standins.local_queue import serve  # noqa: PLC0415

    setup_logging(log_level, process="queue")
    settings = Settings.load(config)
    serve(host, port, db, settings.queue_token_value())


@app.command()
def sim(
    server: Annotated[
        list[str] | None,
        typer.Option(
            "--server",
            help="name=mac-1,port=11501,models=llama3.2:3b+qwen2.5:7b,loaded=...,tps=40,"
            "load=2.5,parallel=2,queue=0,max_loaded=2,ctx=8192 (repeat for more servers)",
        ),
    ] = None,
    log_level: LogLevel = "warning",
) -> None:
    """Serve simulated Ollama servers, each on its own port."""
    import uvloop  # noqa: PLC0415

    from standins.simulator import parse_server_spec, serve  # noqa: PLC0415
    from standins.stack import demo_fleet  # noqa: PLC0415

    setup_logging(log_level, process="sim")
    specs = [parse_server_spec(text) for text in server] if server else demo_fleet()
    for spec in specs:
        typer.echo(
            f"{spec.name}: http://{spec.host}:{spec.port or 'auto'} models={','.join(spec.models)}"
        )
    uvloop.run(serve(specs))


@app.command()
def demo(
    messages: Annotated[
        int | None,
        typer.Option(help="Post N messages, wait for every reply, print a summary and exit"),
    ] = None,
    rate: Annotated[float, typer.Option(help="Messages per second while running live")] = 2.0,
    timeout: Annotated[
        float, typer.Option(help="With --messages: give up after this many seconds")
    ] = 300.0,
    backend: Annotated[
        DemoBackend,
        typer.Option(help="Simulated Ollama servers, or llama.cpp's pool manager and server"),
    ] = DemoBackend.OLLAMA,
) -> None:
    """The whole system on this machine: local queue, embedded Redis, simulated Macs."""
    from standins.demo import run_demo  # noqa: PLC0415

    raise typer.Exit(run_demo(messages=messages, rate=rate, timeout=timeout, backend=backend.value))
