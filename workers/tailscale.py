"""Where this machine is on its tailnet, as the `tailscale` command tells: its address and its
name, for the server's record. Asked now and then, never required: a Mac without Tailscale, or
with Tailscale stopped, reports neither.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The CLI inside the macOS app, for a Mac where the app is installed but its command is not on PATH.
APP_CLI_PATHS = ("/Applications/Tailscale.app/Contents/MacOS/Tailscale",)
# An address changes when a Mac changes network, rarely next to a beat a second.
ASK_EVERY_S = 30.0
# The command answers from its daemon at once; one that hangs must not hold the beat long
# (a server silent for OLLAMA_CLOUD_SERVER_LOST_AFTER_S, 3 s, is taken for lost).
ASK_TIMEOUT_S = 0.5
MAX_NAME_CHARS = 253  # a DNS name's longest


@dataclass(frozen=True)
class TailnetAddress:
    """This machine on its tailnet: an address (its first IPv4, else its first) and its MagicDNS
    name (else its host name); both empty when it is not on one."""

    ip: str = ""
    name: str = ""


NOT_ON_TAILNET = TailnetAddress()


def find_cli(search_path: str | None = None) -> str | None:
    """The `tailscale` command on `search_path` (PATH when None), else the macOS app's."""
    found = shutil.which("tailscale", path=search_path)
    if found:
        return found
    return next((path for path in APP_CLI_PATHS if os.access(path, os.X_OK)), None)


def address_from_status(status: object) -> tuple[TailnetAddress, str]:
    """What `tailscale status --json` says of this machine, and why it says nothing when it
    does not. Only a running backend counts: a stopped one still lists its old addresses."""
    if not isinstance(status, dict):
        return NOT_ON_TAILNET, "its status is not a JSON object"
    state = status.get("BackendState")
    if state != "Running":
        return NOT_ON_TAILNET, f"tailscale is {state or 'in no state'}, not Running"
    me = status.get("Self")
    if not isinstance(me, dict):
        return NOT_ON_TAILNET, "its status has no Self"
    ips = _addresses(me.get("TailscaleIPs")) or _addresses(status.get("TailscaleIPs"))
    name = _text(me.get("DNSName")).rstrip(".") or _text(me.get("HostName"))
    address = TailnetAddress(ip=preferred_ip(ips), name=name[:MAX_NAME_CHARS])
    if address == NOT_ON_TAILNET:
        return NOT_ON_TAILNET, "its status has neither an address nor a name"
    return address, ""


def preferred_ip(ips: list[str]) -> str:
    """The first IPv4 address (what people type and read), else the first."""
    return next((ip for ip in ips if ipaddress.ip_address(ip).version == 4), ips[0] if ips else "")


def _addresses(raw: object) -> list[str]:
    """The valid IP addresses in a JSON list; anything else in it is left out."""
    if not isinstance(raw, list):
        return []
    kept = []
    for entry in raw:
        try:
            kept.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            continue
    return kept


def _text(raw: object) -> str:
    return raw.strip() if isinstance(raw, str) else ""


def ask_tailscale(cli: str, timeout_s: float = ASK_TIMEOUT_S) -> tuple[TailnetAddress, str]:
    """Run `tailscale status --json` once: this machine's place, and why it is empty when it
    is. Never raises: no answer is no address."""
    try:
        done = subprocess.run(
            [cli, "status", "--json"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return NOT_ON_TAILNET, f"{cli} status did not answer in {timeout_s:g}s"
    except (OSError, subprocess.SubprocessError) as exc:
        return NOT_ON_TAILNET, f"{cli} status could not run: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        return NOT_ON_TAILNET, f"{cli} status exited {done.returncode}: {said[0] if said else ''}"
    try:
        status = json.loads(done.stdout)
    except ValueError as exc:
        return NOT_ON_TAILNET, f"{cli} status printed no JSON: {exc}"
    return address_from_status(status)


class TailscaleProbe:
    """This machine's tailnet address, asked of `tailscale` at most every `ask_every_s` and
    remembered between. One log line per ask: INFO when what it reports changes, else DEBUG."""

    def __init__(
        self,
        server_id: str = "",
        *,
        ask_every_s: float = ASK_EVERY_S,
        timeout_s: float = ASK_TIMEOUT_S,
        search_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server_id = server_id
        self.ask_every_s = ask_every_s
        self.timeout_s = timeout_s
        self.search_path = search_path
        self.clock = clock
        self._address = NOT_ON_TAILNET
        self._asked_at: float | None = None

    def address(self) -> TailnetAddress:
        now = self.clock()
        if self._asked_at is not None and now - self._asked_at < self.ask_every_s:
            return self._address
        self._asked_at = now
        cli = find_cli(self.search_path)
        if cli is None:
            address, why = NOT_ON_TAILNET, "no tailscale command"
        else:
            address, why = ask_tailscale(cli, self.timeout_s)
        level = logging.DEBUG if address == self._address else logging.INFO
        if address == NOT_ON_TAILNET:
            log.log(level, "server=%s not on a tailnet: %s", self.server_id, why)
        else:
            log.log(level, "server=%s tailnet %s at %s", self.server_id, address.name, address.ip)
        self._address = address
        return address
