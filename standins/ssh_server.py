"""An SSH server on loopback, standing in for a node's sshd (tests and benches), and a home
folder set up as an operator's (`~/.ssh/config` with an alias per node, a key, known_hosts).

The server is asyncssh, with a host key made for it; it lets in the client keys it is told
to trust and forwards `direct-tcpip` channels to 127.0.0.1 only, as a node's sshd forwards to
its model server. It counts its connections, can drop them all (a cut link), and can run a
command the way the old orchestrator's `ssh alias curl …` did (the transport bench)."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import threading
from pathlib import Path
from types import TracebackType

from workers.transport._asyncssh import asyncssh

LOOPBACK = ("127.0.0.1", "localhost")
STOP_S = 10.0


def new_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


class _NodeSshd(asyncssh.SSHServer):
    """One connection's server side: key logins for the trusted keys, forwarding to
    loopback."""

    def __init__(self, sshd: LoopbackSshd) -> None:
        self.sshd = sshd
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.sshd.note_connection(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.sshd.note_gone(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        offered = key.export_public_key()
        return any(offered == trusted.export_public_key() for trusted in self.sshd.trusted)

    def auth_completed(self) -> None:
        self.sshd.note_login()

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return dest_host in LOOPBACK


async def _run_command(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """The command of an `ssh alias COMMAND` session, run here with its standard input."""
    argv = shlex.split(process.command or "")
    if not argv:
        process.exit(1)
        return
    given = await process.stdin.read()
    child = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate(given)
    process.stdout.write(out)
    process.stderr.write(err)
    process.exit(child.returncode or 0)


class LoopbackSshd:
    """An SSH server on 127.0.0.1, served from a background thread and event loop."""

    def __init__(
        self, trusted: list[asyncssh.SSHKey], *, run_commands: bool = False, port: int = 0
    ) -> None:
        self.host_key = new_key()
        self.trusted = list(trusted)
        self.run_commands = run_commands
        self.port = port
        self.connections_made = 0  # every TCP connection it accepted, logged in or not
        self.logins = 0
        self._lock = threading.Lock()
        self._open: set[asyncssh.SSHServerConnection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sshd", daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None

    def start(self) -> LoopbackSshd:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(STOP_S)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: _NodeSshd(self),
            "127.0.0.1",
            self.port,
            server_host_keys=[self.host_key],
            process_factory=_run_command if self.run_commands else None,
            encoding=None,
        )

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        """Its entry in a known_hosts file (another key's, for a changed host key)."""
        public = (key or self.host_key).export_public_key().decode().strip()
        return f"[127.0.0.1]:{self.port} {public}\n"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def note_connection(self, conn: asyncssh.SSHServerConnection) -> None:
        with self._lock:
            self.connections_made += 1
            self._open.add(conn)

    def note_gone(self, conn: asyncssh.SSHServerConnection) -> None:
        with self._lock:
            self._open.discard(conn)

    def note_login(self) -> None:
        with self._lock:
            self.logins += 1

    def drop_all(self) -> int:
        """Close every connection from the server's side, as a cut link; how many it closed."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            self._loop.call_soon_threadsafe(conn.abort)
        return len(conns)

    def silence_all(self) -> int:
        """Stop reading every open connection without closing it, as a link that went dead
        (the client's keepalives go unanswered); how many it silenced."""

        def silence(conn: asyncssh.SSHServerConnection) -> None:
            transport = conn._transport  # asyncssh offers no pause of its own
            if transport is not None:
                transport.pause_reading()

        with self._lock:
            conns = list(self._open)
        for conn in conns:
            self._loop.call_soon_threadsafe(silence, conn)
        return len(conns)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(STOP_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_S)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            conn.abort()
        for conn in conns:
            await conn.wait_closed()

    def __enter__(self) -> LoopbackSshd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SshHome:
    """A home folder with an operator's SSH set-up: `~/.ssh/config` with an alias per node, a
    key, and known_hosts. The config names files by absolute path, so the `ssh` command (which
    finds the home by the user's account, not $HOME) reads the same ones."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ssh_dir = root / ".ssh"
        self.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config = self.ssh_dir / "config"
        self.known_hosts = self.ssh_dir / "known_hosts"
        self.key = new_key()
        self.identity = self.write_key("id_ed25519", self.key)
        for path in (self.config, self.known_hosts):
            path.touch(mode=0o600)

    def write_key(self, name: str, key: asyncssh.SSHKey) -> Path:
        path = self.ssh_dir / name
        key.write_private_key(str(path))
        path.chmod(0o600)
        return path

    def add_node(
        self,
        alias: str,
        sshd: LoopbackSshd,
        *,
        user: str = "node",
        identity: Path | None = None,
        trust: bool = True,
        extra: str = "",
    ) -> None:
        """A Host entry for `alias` (HostName 127.0.0.1, the server's port, `user`, the key,
        and an `extra` line such as `ProxyJump jump-1`), and the server's host key in
        known_hosts unless `trust` is False."""
        entry = (
            f"Host {alias}\n"
            f"  HostName 127.0.0.1\n"
            f"  Port {sshd.port}\n"
            f"  User {user}\n"
            f"  IdentityFile {identity or self.identity}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            f"  StrictHostKeyChecking yes\n" + (f"  {extra}\n" if extra else "")
        )
        with self.config.open("a") as config:
            config.write(entry)
        if trust:
            self.trust(sshd.known_hosts_line())

    def trust(self, line: str) -> None:
        with self.known_hosts.open("a") as known:
            known.write(line)
