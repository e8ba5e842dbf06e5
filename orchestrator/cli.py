"""`ollama-cloud`: a thin layer that parses flags, builds settings and calls one function."""

from __future__ import annotations

import logging
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.settings import Settings
from workers.contract import logs

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


class DemoBackend(StrEnum):
    OLLAMA = "ollama"
    LLAMACPP = "llamacpp"


def setup_logging(level: str) -> None:
    logs.install()
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
) -> None:
    """Claim messages from the site queue and dispatch them to the fleet."""
    from orchestrator.bridge import run_bridge  # noqa: PLC0415 - keep `--help` fast

    setup_logging(log_level)
    settings = Settings.load(
        config,
        queue_url=queue_url,
        redis_url=redis_url,
        entities_dir=entities_dir,
        bridge_id=bridge_id,
    )
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


@app.command(context_settings={"allow_interspersed_args": False})
def supervise(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --")],
    max_backoff: Annotated[
        float, typer.Option(min=0.1, help="Longest pause between restarts, in seconds")
    ] = 30.0,
    grace: Annotated[
        float, typer.Option(min=0.0, help="Seconds to exit after a stop signal, else SIGKILL")
    ] = 10.0,
    log_level: LogLevel = "info",
) -> None:
    """Run COMMAND and start it again whenever it exits (after 1 s, 2 s, 4 s ... up to
    --max-backoff); SIGTERM, SIGINT and SIGHUP go to it, then supervise exits with 0."""
    from orchestrator.ops.supervise import supervise_command  # noqa: PLC0415

    setup_logging(log_level)
    raise typer.Exit(supervise_command(command, max_backoff=max_backoff, grace=grace))


class MeshBackend(StrEnum):
    OLLAMA = "ollama"
    OPENAI = "openai"
    POOL = "pool"


@app.command()
def mesh(
    hosts: Annotated[
        list[str] | None,
        typer.Option("--hosts", help="Serve the config's aliases matching this pattern (mac-*)"),
    ] = None,
    node: Annotated[
        list[str] | None, typer.Option("--node", help="Serve this alias (repeat for more)")
    ] = None,
    backend: Annotated[
        MeshBackend | None,
        typer.Option(help="What listens on each node (else OLLAMA_CLOUD_BACKEND, ollama)"),
    ] = None,
    port: Annotated[
        list[str] | None,
        typer.Option(
            "--port",
            help="The model server's port on each node's 127.0.0.1: PORT, or alias=PORT "
            "(repeat); else the backend's usual one",
        ),
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Serve many SSH nodes from this host: each alias of ~/.ssh/config (OLLAMA_CLOUD_SSH_CONFIG)
    chosen by --hosts or --node is a server of that id with its own queue, reached at
    ssh://alias; adding or removing a Host entry brings a node in or takes it out."""
    from workers.mesh import run_mesh  # noqa: PLC0415
    from workers.settings import DEFAULT_ENTRY, WorkerSettings  # noqa: PLC0415

    setup_logging(log_level)
    if not hosts and not node:
        raise typer.BadParameter("name the nodes: --hosts PATTERN or --node ALIAS")
    ports = {
        (entry.partition("=")[0] if "=" in entry else DEFAULT_ENTRY): entry.rpartition("=")[2]
        for entry in port or []
    }
    overrides: dict[str, Any] = {"mesh_ports": ports} if ports else {}
    if backend is not None:
        overrides["backend"] = backend.value
    settings = WorkerSettings(**overrides)
    run_mesh(settings, list(hosts or []), list(node or []), stop_on_signals())


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

    setup_logging(log_level)
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

    setup_logging(log_level)
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
