"""What went wrong with an SSH link, in one line an operator can act on: an unknown alias, a
refused key, a host key not in known_hosts, nothing listening on the node's port."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from workers.transport._asyncssh import asyncssh
from workers.transport.address import SshEndpoint

if TYPE_CHECKING:
    from workers.transport.ssh import SshOptions

NODE_HOST = "127.0.0.1"  # where the model server listens, on the node
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


def connect_fault(endpoint: SshEndpoint, options: SshOptions, exc: BaseException) -> str:
    """Why a connection to `endpoint` failed, in words an operator can act on."""
    host, port, user, known = _resolved(endpoint, options)
    where = f"{host}:{port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return (
            f"host key of {where} not verifiable (not in {known}, or changed since): check it, "
            f"then add it: ssh-keyscan -p {port} {host} >> {known}"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return (
            f"permission denied for user {user} at {where}: the node refused every key offered "
            "(IdentityFile in the SSH config, the default ~/.ssh/id_* keys, ssh-agent)"
        )
    if isinstance(exc, socket.gaierror):
        if host == endpoint.host:
            return (
                f"host {host!r} not found: no Host entry gives it a HostName in "
                f"{options.config}, and no such host name resolves"
            )
        return f"host name {host!r} (the HostName of {endpoint.host!r}) not found"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts SSH at {where} (connection refused): is sshd running there?"
    if isinstance(exc, TimeoutError):
        return f"no SSH answer from {where} in {options.connect_timeout_s:g}s"
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return f"cannot read an identity key: {one_line(exc)} (an encrypted key needs ssh-agent)"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"SSH to {where} refused: {exc.reason}"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or one_line(exc)}"
    return f"SSH to {where} failed: {type(exc).__name__}: {one_line(exc)}"


def channel_fault(node_port: int, exc: asyncssh.ChannelOpenError) -> str:
    """Why the node would not open a channel to its 127.0.0.1:`node_port`."""
    where = f"the node's {NODE_HOST}:{node_port}"
    if exc.code == asyncssh.OPEN_CONNECT_FAILED:
        return f"nothing listening on {where} (channel open failed: {exc.reason})"
    if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
        return f"the node's sshd does not forward to {where} ({exc.reason}): AllowTcpForwarding"
    return f"channel to {where} refused: {exc.reason}"


def _resolved(endpoint: SshEndpoint, options: SshOptions) -> tuple[str, int, str, str]:
    """The host name, port, user and known_hosts file the SSH config gives `endpoint`, as far
    as it tells."""
    known = options.known_hosts or DEFAULT_KNOWN_HOSTS
    try:
        told = asyncssh.SSHClientConnectionOptions(
            host=endpoint.host,
            port=endpoint.port if endpoint.port is not None else (),
            username=endpoint.user or (),
            config=options.config_paths(),
            client_keys=None,  # only the names are wanted, not the keys
        )
    except Exception:  # an unreadable config: the address alone tells the rest
        return endpoint.host, endpoint.port or 22, endpoint.user or "?", known
    files = told.known_hosts
    if not options.known_hosts and isinstance(files, list) and files:
        known = str(files[0])  # the config's UserKnownHostsFile
    return str(told.host), int(told.port), str(told.username), known


def lost_text(why: str) -> str:
    """Why a connection that was up ended, as the client saw it."""
    if not why:
        return "connection closed by the node"
    return "connection lost" if why.lower() == "connection lost" else f"connection lost: {why}"


def one_line(exc: BaseException) -> str:
    """An exception's text on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
