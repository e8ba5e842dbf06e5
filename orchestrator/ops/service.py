"""`ollama-cloud worker install` and `mesh install`: a worker or a mesh kept by the system's
service manager, so that it starts at boot and comes back when it dies or the power returns: a
launchd agent (or daemon) on macOS, a systemd unit on Linux.

Everything here builds text from values, except `install` and `uninstall`, which write the
files and ask `launchctl` or `systemctl` to load them through a runner (so that a caller may
run neither). The settings reach the service as environment variables; the file that holds
them (the plist, or the unit's environment file) is readable by its owner alone, as it may hold
the Redis password, which is never printed.

Imports only what a Mac's worker install has (no orchestrator host package).
"""

from __future__ import annotations

import getpass
import os
import plistlib
import pwd
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from workers.contract.settings import ENV_PREFIX
from workers.settings import WorkerSettings

Platform = Literal["launchd", "systemd"]
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

LABEL_PREFIX = "com.ollama-cloud"
UNIT_PREFIX = "ollama-cloud"
RESTART_DELAY_S = 5  # launchd's ThrottleInterval, systemd's RestartSec
STOP_TIMEOUT_S = 90  # a stop lets running jobs finish this long (systemd's own default)
SECRET_MODE = 0o600
UNIT_MODE = 0o644
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
# A queue or mesh name becomes part of a file name, a launchd label and a systemd unit name.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SEARCH_PATH = {
    "launchd": ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"),
    "systemd": ("/usr/local/bin", "/usr/bin", "/bin"),
}
# Settings whose whole value is a secret; in any URL, its password is.
SECRET_VARIABLE = re.compile(r"TOKEN|PASSWORD|SECRET|BASIC_AUTH", re.IGNORECASE)
# Up to a URL's last `@`: a password may hold one, and hiding too much is the safe side.
URL_PASSWORD = re.compile(r"(://[^:/@\s]*:).*@", re.DOTALL)
MASK = "***"


class ServiceError(Exception):
    """A service could not be built, written, loaded or removed; the message says why and
    names no secret."""


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a service manager's command and keep its output (its errors go in our message)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ServiceError(
            f"{argv[0]} is not on this system: write the files alone with --no-start"
        ) from None


def this_platform() -> Platform:
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux"):
        return "systemd"
    raise ServiceError(f"no service manager known on {sys.platform}: name one with --platform")


# What runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """What a service runs: its command (absolute paths) and its settings."""

    description: str
    argv: list[str]
    environment: dict[str, str]


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ServiceError(
            f"{name!r} cannot name a service: letters, digits, '.', '_', '-', starting with a "
            "letter or digit"
        )
    return name


def command_beside_interpreter(name: str, module: str) -> list[str]:
    """This install's `name` command (beside the interpreter, as a virtualenv has it), else the
    interpreter running `module`; absolute either way, as a service has no shell's PATH."""
    interpreter = Path(os.path.abspath(sys.executable))
    script = interpreter.parent / name
    if os.access(script, os.X_OK):
        return [str(script)]
    return [str(interpreter), "-m", module]


class _GivenSettings(WorkerSettings):
    """A worker's settings from the values given alone, never this process's environment."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings a service takes from `environ` (else this process's): every OLLAMA_CLOUD_*
    variable, the config file's path made absolute (the service runs elsewhere). Checked as a
    worker reads them, so a bad value is refused now rather than in a service that keeps
    failing; the message names the setting, never its value."""
    given = os.environ if environ is None else environ
    environment = {
        name: value for name, value in sorted(given.items()) if name.startswith(ENV_PREFIX)
    }
    if environment.get(CONFIG_VARIABLE):
        environment[CONFIG_VARIABLE] = os.path.abspath(environment[CONFIG_VARIABLE])
    values: dict[str, Any] = {
        name.removeprefix(ENV_PREFIX).lower(): value for name, value in environment.items()
    }
    try:
        _GivenSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise ServiceError(f"a setting is not valid: {problems}") from None
    return environment


def worker_program(
    queue: str, environment: dict[str, str], concurrency: int | None = None
) -> Program:
    """`celery -A workers worker -Q QUEUE -n QUEUE@%h`, as the README runs a Mac's worker, with
    the log at info and no mingle or gossip (the fleet learns of a server by its heartbeat)."""
    check_name(queue)
    argv = [
        *command_beside_interpreter("celery", "celery"),
        "-A", "workers", "worker", "-Q", queue, "-n", f"{queue}@%h",
        "--without-mingle", "--without-gossip", "-l", "info",
    ]  # fmt: skip
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    return Program(f"ollama-cloud worker {queue}", argv, environment)


def mesh_program(
    environment: dict[str, str],
    hosts: Sequence[str] = (),
    nodes: Sequence[str] = (),
    backend: str | None = None,
    ports: Sequence[str] = (),
) -> Program:
    """`ollama-cloud mesh` with the same choice of nodes, backend and ports."""
    if not hosts and not nodes:
        raise ServiceError("name the nodes: --hosts PATTERN or --node ALIAS")
    for entry in ports:
        port = entry.rpartition("=")[2]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ServiceError(f"--port takes PORT or alias=PORT, not {entry!r}")
    argv = [*command_beside_interpreter("ollama-cloud", "orchestrator"), "mesh"]
    argv += [arg for pattern in hosts for arg in ("--hosts", pattern)]
    argv += [arg for alias in nodes for arg in ("--node", alias)]
    if backend is not None:
        argv += ["--backend", backend]
    argv += [arg for entry in ports for arg in ("--port", entry)]
    argv += ["--log-level", "info"]
    chosen = ", ".join([*hosts, *nodes])
    return Program(f"ollama-cloud mesh of {chosen}", argv, environment)


# Where it lives --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One service: its name (`worker`, `mac-1`), the manager that keeps it, and for whom. A
    system service starts at boot without anyone logging in; a user's starts at their login
    (or at boot, on Linux, once lingering is on)."""

    parts: tuple[str, ...]
    platform: Platform
    user: str
    home: Path
    system: bool = False
    root: Path = Path("/")  # where the system's folders are

    @property
    def name(self) -> str:
        return "-".join(self.parts)

    @property
    def label(self) -> str:
        return ".".join((LABEL_PREFIX, *self.parts))

    @property
    def unit(self) -> str:
        return f"{UNIT_PREFIX}-{self.name}.service"

    @property
    def title(self) -> str:
        return self.label if self.platform == "launchd" else self.unit

    @property
    def definition_path(self) -> Path:
        if self.platform == "launchd":
            folder = (
                self.root / "Library/LaunchDaemons"
                if self.system
                else self.home / "Library/LaunchAgents"
            )
            return folder / f"{self.label}.plist"
        folder = (
            self.root / "etc/systemd/system" if self.system else self.home / ".config/systemd/user"
        )
        return folder / self.unit

    @property
    def environment_path(self) -> Path | None:
        """systemd's EnvironmentFile; a plist holds its environment itself."""
        if self.platform == "launchd":
            return None
        folder = (
            self.root / "etc/ollama-cloud" if self.system else self.home / ".config/ollama-cloud"
        )
        return folder / f"{self.name}.env"

    @property
    def log_path(self) -> Path | None:
        """launchd's log file (systemd's goes to the journal). In the user's own folder, also
        for a daemon, which runs as that user."""
        if self.platform == "systemd":
            return None
        return self.home / "Library/Logs/ollama-cloud" / f"{self.name}.log"

    @property
    def launchd_domain(self) -> str:
        return "system" if self.system else f"gui/{os.getuid()}"

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *(() if self.system else ("--user",)), *args]


def service_for(
    parts: tuple[str, ...],
    platform: Platform | None = None,
    *,
    system: bool = False,
    user: str | None = None,
    home: Path | None = None,
    root: Path = Path("/"),
) -> Service:
    """The service named `parts` on this system (or `platform`): the current user's, or with
    `system`, one that runs as `user` (else whoever ran sudo)."""
    for part in parts:
        check_name(part)
    if user is not None and not system:
        raise ServiceError("--user goes with --system: a user's service runs as its owner")
    account = user or (os.environ.get("SUDO_USER") if system else None) or getpass.getuser()
    if home is None:
        if system:
            try:
                home = Path(pwd.getpwnam(account).pw_dir)
            except KeyError:
                raise ServiceError(f"no user {account!r} on this system") from None
        else:
            home = Path.home()
    return Service(parts, platform or this_platform(), account, home, system, root)


# The files -------------------------------------------------------------------------------------


def service_environment(service: Service, program: Program) -> dict[str, str]:
    """The settings, a PATH that starts with this install's commands, and for a daemon the
    HOME and USER it runs as (launchd gives a daemon neither; `~/.ssh/config` needs HOME)."""
    bin_dir = str(Path(os.path.abspath(sys.executable)).parent)
    environment = dict(program.environment)
    environment["PATH"] = ":".join((bin_dir, *SEARCH_PATH[service.platform]))
    if service.system and service.platform == "launchd":
        environment.update(HOME=str(service.home), USER=service.user)
    return environment


def launchd_plist(service: Service, program: Program) -> dict[str, Any]:
    log = str(service.log_path)
    plist: dict[str, Any] = {
        "Label": service.label,
        "ProgramArguments": program.argv,
        "EnvironmentVariables": service_environment(service, program),
        "WorkingDirectory": str(service.home),
        "RunAtLoad": True,
        "KeepAlive": True,  # started again whenever it exits
        "ThrottleInterval": RESTART_DELAY_S,
        "ExitTimeOut": STOP_TIMEOUT_S,
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    if service.system:
        plist["UserName"] = service.user
    return plist


def systemd_specifiers(text: str) -> str:
    """`%` is systemd's specifier sign (`%h`: home); Celery's own `%h` is written `%%h`."""
    if "\n" in text:
        raise ServiceError("a unit's value cannot hold a line break")
    return text.replace("%", "%%")


def systemd_word(arg: str) -> str:
    """One argument of ExecStart, quoted where it must be, with `$` not expanded."""
    text = systemd_specifiers(arg).replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(service: Service, program: Program) -> str:
    environment_path = service.environment_path
    assert environment_path is not None
    lines = [
        "[Unit]",
        f"Description={systemd_specifiers(program.description)}",
        *(["Wants=network-online.target", "After=network-online.target"] if service.system else []),
        # Never give up starting it again: after a power cut the network may come up late.
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=exec",
        *([f"User={systemd_specifiers(service.user)}"] if service.system else []),
        f"EnvironmentFile={systemd_specifiers(str(environment_path))}",
        f"WorkingDirectory={systemd_specifiers(str(service.home))}",
        "ExecStart=" + " ".join(systemd_word(arg) for arg in program.argv),
        "Restart=always",
        f"RestartSec={RESTART_DELAY_S}",
        # SIGTERM to the main process alone: a worker, or a mesh that stops its own worker.
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if service.system else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def environment_file(service: Service, program: Program) -> str:
    """systemd's EnvironmentFile: one NAME="value" a line, escaped as in a shell's double
    quotes (which systemd reads the same way)."""
    lines = [f"# {program.description}: its settings. Readable by its owner alone."]
    for name, value in service_environment(service, program).items():
        if not VARIABLE.fullmatch(name) or "\0" in value:
            raise ServiceError(f"{name!r} cannot be written to an environment file")
        escaped = re.sub(r'([\\"$`])', r"\\\1", value)
        lines.append(f'{name}="{escaped}"')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ServiceFile:
    path: Path
    content: bytes
    mode: int


def service_files(service: Service, program: Program) -> list[ServiceFile]:
    """The files that define `service`, settings file first."""
    if service.platform == "launchd":
        plist = plistlib.dumps(launchd_plist(service, program))
        return [ServiceFile(service.definition_path, plist, SECRET_MODE)]
    environment_path = service.environment_path
    assert environment_path is not None
    return [
        ServiceFile(environment_path, environment_file(service, program).encode(), SECRET_MODE),
        ServiceFile(service.definition_path, systemd_unit(service, program).encode(), UNIT_MODE),
    ]


def masked_value(name: str, value: str) -> str:
    if SECRET_VARIABLE.search(name.removeprefix(ENV_PREFIX)):
        return MASK
    return URL_PASSWORD.sub(rf"\1{MASK}@", value)


def masked(program: Program) -> Program:
    """The program with its secrets masked (`redis://:***@host`), for showing."""
    environment = {name: masked_value(name, value) for name, value in program.environment.items()}
    return Program(program.description, program.argv, environment)


def preview(service: Service, program: Program) -> str:
    """The files `install` would write, secrets masked."""
    return "\n".join(
        f"# {file.path} (mode {file.mode:04o})\n{file.content.decode()}"
        for file in service_files(service, masked(program))
    )


# Installing ------------------------------------------------------------------------------------


def write_file(path: Path, content: bytes, mode: int) -> None:
    """Write `path` whole or not at all; a temporary file made 0600 first, so a secret is never
    readable by others, even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as output:
            output.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run_steps(runner: Runner, steps: list[tuple[list[str], bool]]) -> None:
    """Run each command; one that must succeed and fails ends with its own error output."""
    for argv, must_succeed in steps:
        result = runner(argv)
        if must_succeed and result.returncode != 0:
            output = (result.stderr or result.stdout or "").strip()
            raise ServiceError(f"`{' '.join(argv)}` failed ({result.returncode}): {output}")


def start_steps(service: Service) -> list[tuple[list[str], bool]]:
    """Load the service afresh, so that a second install takes its new settings."""
    if service.platform == "launchd":
        target = f"{service.launchd_domain}/{service.label}"
        return [
            (["launchctl", "bootout", target], False),  # fails when it was not loaded
            (["launchctl", "enable", target], True),
            (
                ["launchctl", "bootstrap", service.launchd_domain, str(service.definition_path)],
                True,
            ),
        ]
    return [
        (service.systemctl("daemon-reload"), True),
        (service.systemctl("enable", service.unit), True),
        (service.systemctl("restart", service.unit), True),
    ]


def manual_start(service: Service) -> str:
    return "; ".join(" ".join(argv) for argv, must in start_steps(service) if must)


def install(
    service: Service, program: Program, *, start: bool = True, runner: Runner = run_command
) -> list[str]:
    """Write the service's files and (with `start`) load it; the lines to show the operator."""
    report: list[str] = []
    for file in service_files(service, program):
        try:
            write_file(file.path, file.content, file.mode)
        except PermissionError:
            hint = " (a --system service is installed with sudo -E)" if service.system else ""
            raise ServiceError(f"cannot write {file.path}: permission denied{hint}") from None
        report.append(f"wrote {file.path} (mode {file.mode:04o})")
    if service.log_path is not None:
        prepare_log_folder(service, service.log_path.parent)
        report.append(f"log: {service.log_path}")
    else:
        report.append(f"log: journalctl {'' if service.system else '--user '}-u {service.unit}")
    if f"{ENV_PREFIX}REDIS_URL" not in program.environment:
        report.append(
            f"note: {ENV_PREFIX}REDIS_URL is not set: the service uses Redis on its own 127.0.0.1"
        )
    if start:
        run_steps(runner, start_steps(service))
        report.append(f"started {service.title}: it starts again at boot and whenever it exits")
    else:
        report.append(f"not started; to start it: {manual_start(service)}")
    if service.platform == "systemd" and not service.system:
        report.append(f"to start it at boot without a login: loginctl enable-linger {service.user}")
    return report


def prepare_log_folder(service: Service, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if service.system and os.geteuid() == 0:
        # Made by sudo, written by the daemon's user.
        account = pwd.getpwnam(service.user)
        os.chown(folder, account.pw_uid, account.pw_gid)


def uninstall(service: Service, *, stop: bool = True, runner: Runner = run_command) -> list[str]:
    """Stop the service and remove its files; nothing there is not an error."""
    report: list[str] = []
    if stop:
        if service.platform == "launchd":
            stopped = runner(["launchctl", "bootout", f"{service.launchd_domain}/{service.label}"])
        else:
            stopped = runner(service.systemctl("disable", "--now", service.unit))
        if stopped.returncode == 0:
            report.append(f"stopped {service.title}")
    for path in (service.definition_path, service.environment_path):
        if path is None or not path.exists():
            continue
        try:
            path.unlink()
        except PermissionError:
            raise ServiceError(f"cannot remove {path}: permission denied") from None
        report.append(f"removed {path}")
    if stop and service.platform == "systemd" and report:
        run_steps(runner, [(service.systemctl("daemon-reload"), False)])
    if not report:
        report.append(f"nothing installed as {service.title}")
    elif service.log_path is not None and service.log_path.exists():
        report.append(f"kept its log: {service.log_path}")
    return report
