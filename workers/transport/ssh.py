"""SSH tunnels: one persistent SSH connection per node, and a local port per model-server port
of the node, forwarded through it, so that an HTTP client calls `http://127.0.0.1:<local>` as
if the model server were here. No shell command runs on the node: each HTTP connection is one
SSH channel (`direct-tcpip`) to the node's 127.0.0.1:<port>.

- The connection honours the SSH config (HostName, User, Port, IdentityFile, ProxyJump) and
  checks the node's host key against known_hosts, always.
- It reconnects by itself when it drops: at once, then after 0.5 s doubled up to 30 s between
  failed tries (a link that drops within a second of connecting backs off too). Three
  unanswered keepalives, one each `keepalive_s`, end a dead link. A local port stays the same
  across reconnections: a URL once given stays valid.
- While the link is down a request fails at once, as TunnelDown with the reason (a server
  fault: the job goes elsewhere); while a connection is being made it waits for it, up to the
  backend's connect timeout.
- Each fault is one line in the log, when it first happens, not one per try.

Every tunnel of a `Tunnels` runs on its one event-loop thread: a mesh of many nodes shares one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from workers.errors import TunnelDown
from workers.transport._asyncssh import asyncssh
from workers.transport.address import SshEndpoint
from workers.transport.faults import NODE_HOST, connect_fault, lost_text, one_line
from workers.transport.forward import LocalSide

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# A link that stood this long is tried again at once when it drops (requests wait for it); one
# that drops sooner backs off, so a flapping link is never retried in a tight loop.
STABLE_S = 1.0
KEEPALIVE_MISSES = 3  # unanswered keepalives in a row that end a link
CONNECT_TIMEOUT_S = 15.0  # TCP, key exchange and login, over the Internet and a ProxyJump
LOOP_CALL_S = 10.0  # the longest a caller waits on the tunnels' thread (a listen, a close)
LOCAL_HOST = "127.0.0.1"  # where the forwarded ports listen, here


@dataclass(frozen=True)
class SshOptions:
    """How every SSH connection is made. Paths are read when a connection is made, so a
    `~` is the home of that moment."""

    config: str = "~/.ssh/config"  # the OpenSSH client config; a missing file is none
    known_hosts: str = ""  # empty: as the config says (UserKnownHostsFile), else ~/.ssh/known_hosts
    keepalive_s: float = 2.0
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    def config_paths(self) -> list[str]:
        path = Path(self.config).expanduser()
        return [str(path)] if path.is_file() else []

    def connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "config": self.config_paths(),
            "keepalive_interval": self.keepalive_s,
            "keepalive_count_max": KEEPALIVE_MISSES,
            "connect_timeout": self.connect_timeout_s,
        }
        if self.known_hosts:
            path = Path(self.known_hosts).expanduser()
            # A missing file trusts no host: the check is never skipped.
            options["known_hosts"] = (
                str(path) if path.is_file() else asyncssh.import_known_hosts("")
            )
        return options


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"  # waiting before the next try
    CLOSED = "closed"


class _LoopThread:
    """An event loop on a daemon thread, for the tunnels' sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ssh-tunnels", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = LOOP_CALL_S) -> T:
        """Run `coro` on the loop and wait for its result, from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(LOOP_CALL_S)


class SshTunnel:
    """One node's SSH connection, kept up, and the local ports forwarded through it."""

    def __init__(
        self, endpoint: SshEndpoint, options: SshOptions, loop: _LoopThread, server_id: str = ""
    ) -> None:
        self.endpoint = endpoint
        self.options = options
        self.server_id = server_id
        self.connections_made = 0  # each successful connection, the first and every reconnection
        self._loop = loop
        self._changed = threading.Condition()
        self._state = LinkState.CONNECTING
        self._reason = ""  # why the link is not up, or was not when last down
        self._retry_at = 0.0  # monotonic: the next try, while DOWN
        self._logged = ""  # the last fault logged, so a fault that persists is logged once
        self._local_ports: dict[int, int] = {}  # node port → local port
        self._faults: dict[int, str] = {}  # node port → why its last channel was refused
        self._conn: asyncssh.SSHClientConnection | None = None  # the loop's thread only
        self._servers: list[asyncio.Server] = []
        self.pipes: set[LocalSide] = set()  # open forwarded connections
        self._task = loop.run(self._start())

    def __str__(self) -> str:
        return str(self.endpoint)

    @property
    def state(self) -> LinkState:
        with self._changed:
            return self._state

    @property
    def reason(self) -> str:
        with self._changed:
            return self._reason

    def local_port(self, node_port: int) -> int:
        """The local port that forwards to the node's 127.0.0.1:`node_port`, listening from
        now on whether or not the link is up."""
        with self._changed:
            if node_port in self._local_ports:
                return self._local_ports[node_port]
        return self._loop.run(self._listen(node_port))

    def wait_usable(self, wait_s: float) -> None:
        """Return when the link is up; wait for a connection being made, up to `wait_s`; raise
        TunnelDown, with the reason, when it is down or not made in time."""
        with self._changed:
            deadline = time.monotonic() + wait_s
            while self._state is LinkState.CONNECTING:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            if self._state is not LinkState.UP:
                raise TunnelDown(self._down_text(wait_s))

    def fault(self, node_port: int) -> TunnelDown | None:
        """Why a request on `node_port` failed, if the tunnel knows: the link is down, or the
        node refused the port's last channel; None when the tunnel knows of no fault."""
        with self._changed:
            if self._state is not LinkState.UP:
                return TunnelDown(self._down_text())
            refused = self._faults.get(node_port)
        return TunnelDown(f"{self}: {refused}") if refused else None

    def close(self) -> None:
        with self._changed:
            if self._state is LinkState.CLOSED:
                return
        with contextlib.suppress(TimeoutError, RuntimeError):  # the loop already stopped
            self._loop.run(self._close())

    def _down_text(self, waited_s: float | None = None) -> str:
        """Why the link is not up, in one line (under the lock); `waited_s`: how long a
        request waited for a connection being made."""
        if self._state is LinkState.CLOSED:
            return f"{self}: closed"
        if self._state is LinkState.CONNECTING:
            if waited_s is None:
                return f"{self}: {self._reason or 'not connected yet'}; connecting again now"
            before = f" (last try: {self._reason})" if self._reason else ""
            return f"{self}: not connected after {waited_s:g}s{before}"
        left = max(0.0, self._retry_at - time.monotonic())
        return f"{self}: {self._reason}; next try in {left:.1f}s"

    def _set(self, state: LinkState, reason: str | None = None, retry_at: float = 0.0) -> None:
        with self._changed:
            if self._state is LinkState.CLOSED:
                return
            self._state = state
            if reason is not None:
                self._reason = reason
            self._retry_at = retry_at
            self._changed.notify_all()

    # On the loop's thread ----------------------------------------------------------------------

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.ensure_future(self._keep_connected())

    async def _listen(self, node_port: int) -> int:
        with self._changed:
            if node_port in self._local_ports:
                return self._local_ports[node_port]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: LocalSide(self, node_port), LOCAL_HOST, 0)
        local_port = int(server.sockets[0].getsockname()[1])
        self._servers.append(server)
        with self._changed:
            self._local_ports[node_port] = local_port
        log.debug("server=%s %s: 127.0.0.1:%d forwards to the node's %s:%d",
                  self.server_id, self, local_port, NODE_HOST, node_port)  # fmt: skip
        return local_port

    async def _keep_connected(self) -> None:
        delay = 0.0
        while True:
            if delay:
                self._set(LinkState.DOWN, retry_at=time.monotonic() + delay)
                await asyncio.sleep(delay)
            self._set(LinkState.CONNECTING)
            client = _Client()
            try:
                conn = await asyncssh.connect(
                    self.endpoint.host,
                    port=self.endpoint.port if self.endpoint.port is not None else (),
                    username=self.endpoint.user or (),
                    client_factory=lambda bound=client: bound,
                    **self.options.connect_options(),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever it was is explained, then tried again
                delay = _backoff(delay)
                self._note_fault(connect_fault(self.endpoint, self.options, exc), delay)
                continue
            began = time.monotonic()
            self._conn = conn
            self.connections_made += 1
            self._set(LinkState.UP)
            log.info("server=%s %s connected (%s)",
                     self.server_id, self, _peer(conn))  # fmt: skip
            self._logged = ""
            try:
                await conn.wait_closed()
            finally:
                self._conn = None
            delay = 0.0 if time.monotonic() - began >= STABLE_S else _backoff(delay)
            self._note_fault(lost_text(client.lost), delay)

    def _note_fault(self, reason: str, delay: float) -> None:
        self._set(LinkState.DOWN, reason, retry_at=time.monotonic() + delay)
        if reason != self._logged:
            log.warning("server=%s %s: %s", self.server_id, self, reason)
            self._logged = reason

    def connection(self) -> asyncssh.SSHClientConnection | None:
        return self._conn

    def note_channel(self, node_port: int, refused: str | None) -> None:
        """A channel to `node_port` was opened (None) or refused (why)."""
        with self._changed:
            before = self._faults.pop(node_port, None)
            if refused is not None:
                self._faults[node_port] = refused
        if refused is not None and refused != before:
            log.warning("server=%s %s: %s", self.server_id, self, refused)

    async def _close(self) -> None:
        with self._changed:
            self._state = LinkState.CLOSED
            self._changed.notify_all()
        conn = self._conn
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for server in self._servers:
            server.close()
        for pipe in list(self.pipes):
            pipe.abort()
        if conn is not None:
            conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), LOOP_CALL_S / 2)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), LOOP_CALL_S / 2)


class Tunnels:
    """The SSH tunnels of one part of a process (a backend, a mesh): one event-loop thread,
    one tunnel per SSH endpoint."""

    def __init__(self, options: SshOptions | None = None) -> None:
        self.options = options or SshOptions()
        self._lock = threading.Lock()
        self._tunnels: dict[SshEndpoint, SshTunnel] = {}
        self._loop: _LoopThread | None = None

    def tunnel(self, endpoint: SshEndpoint, server_id: str = "") -> SshTunnel:
        """The endpoint's tunnel, made (and its first connection begun) on first use."""
        with self._lock:
            found = self._tunnels.get(endpoint)
            if found is None:
                self._loop = self._loop or _LoopThread()
                found = SshTunnel(endpoint, self.options, self._loop, server_id)
                self._tunnels[endpoint] = found
            return found

    def close(self) -> None:
        with self._lock:
            tunnels, self._tunnels = list(self._tunnels.values()), {}
            loop, self._loop = self._loop, None
        for tunnel in tunnels:
            tunnel.close()
        if loop is not None:
            loop.stop()


class _Client(asyncssh.SSHClient):
    """Keeps why the connection ended."""

    def __init__(self) -> None:
        self.lost = ""

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.lost = one_line(exc)


def _peer(conn: asyncssh.SSHClientConnection) -> str:
    peer = conn.get_extra_info("peername")
    user = conn.get_extra_info("username")
    where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
    return f"{user}@{where}" if user else where


def _backoff(delay: float) -> float:
    return min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, delay * 2))
