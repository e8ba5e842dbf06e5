"""Where a model server is: an address as an operator writes it, read once.

Two forms, in every setting that names a model server (`OLLAMA_CLOUD_OLLAMA_URL`,
`OLLAMA_CLOUD_MODEL_SERVER_URL`, `OLLAMA_CLOUD_POOL_URL`, the values of
`OLLAMA_CLOUD_MODEL_MAP`):

- `http://host:port` (or `https://`): the server itself, called directly. A Tailscale address
  or MagicDNS name is written the same way: `http://mac-3.tailnet.ts.net:11434`.
- `ssh://[user@]host[:ssh-port][/127.0.0.1:PORT]`: a node reached over SSH, its model server
  listening on the node's own 127.0.0.1:PORT.
  - Before the path is the SSH endpoint, as `ssh` takes it: `host` is an alias of the SSH
    config (its HostName, User, Port, IdentityFile and ProxyJump apply) or a host name; a
    port there is always SSH's own.
  - The path is the model server's port on the node: `ssh://mac-3/127.0.0.1:11434`, or for
    short `ssh://mac-3/:11434` (`localhost` is accepted for 127.0.0.1). Without it, the
    backend's usual port: Ollama's 11434, llama-server's 8080, the pool manager's 9000.
  - A port after the host is the model server's on a bare alias (`ssh://mac-3:11434`, the
    short form), and SSH's own when a user or the node's port is written too
    (`ssh://bob@203.0.113.5:2222`, `ssh://mac-3:2222/:11434`).
  - No password, query or fragment: SSH authenticates with keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

HTTP_SCHEMES = ("http", "https")
SSH_SCHEME = "ssh"
NODE_HOSTS = ("", "127.0.0.1", "localhost")  # the node's loopback, as the path may name it


class AddressError(ValueError):
    """An address that is not one of the two forms, or says something ambiguous."""


@dataclass(frozen=True)
class HttpAddress:
    """A model server called directly."""

    url: str  # as written, without a trailing slash

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class SshEndpoint:
    """Where one SSH connection goes: a config alias or a host name, and what the address
    itself says of the user and SSH's port (None: as the SSH config says, else the defaults).
    Every address with the same endpoint shares one connection."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{user}{host}{port}"


@dataclass(frozen=True)
class SshAddress:
    """A model server on a node's 127.0.0.1, reached through an SSH connection to the node."""

    endpoint: SshEndpoint
    node_port: int | None  # the model server's port on the node; None: the backend's usual one
    text: str  # as written

    def __str__(self) -> str:
        return self.text


Address = HttpAddress | SshAddress


def parse_address(text: str) -> Address:
    """The address `text` names; AddressError, with what to write instead, when it is not one."""
    written = text.strip().rstrip("/")
    scheme, sep, _ = written.partition("://")
    if not sep:
        raise AddressError(f"{text!r}: expected http://host:port or ssh://alias")
    scheme = scheme.lower()
    if scheme in HTTP_SCHEMES:
        return _http(written)
    if scheme == SSH_SCHEME:
        return _ssh(written)
    raise AddressError(f"{text!r}: unknown scheme {scheme!r}; expected http:// or ssh://")


def _http(text: str) -> HttpAddress:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError as exc:
        raise AddressError(f"{text!r}: {exc}") from exc
    if not parts.hostname:
        raise AddressError(f"{text!r}: no host")
    return HttpAddress(text)


def _ssh(text: str) -> SshAddress:
    rest = text.split("://", 1)[1]
    authority, slash, path = rest.partition("/")
    if any(mark in rest for mark in "?#"):
        raise AddressError(f"{text!r}: an ssh:// address has no query or fragment")
    user: str | None = None
    if "@" in authority:
        user, _, authority = authority.rpartition("@")
        if ":" in user:
            raise AddressError(f"{text!r}: no password in an address; SSH logs in with a key")
        if not user:
            raise AddressError(f"{text!r}: empty user name before '@'")
    host, port = _host_and_port(text, authority)
    node_port = _node_port(text, path) if slash else None
    if port is not None and node_port is None and user is None:
        return SshAddress(SshEndpoint(host), port, text)  # ssh://alias:11434
    return SshAddress(SshEndpoint(host, user, port), node_port, text)


def _host_and_port(text: str, authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):  # an IPv6 address
        host, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise AddressError(f"{text!r}: unclosed '[' around an IPv6 address")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_found = authority.partition(":")
        port_text = port_text_found if colon else None
    if not host:
        raise AddressError(f"{text!r}: no host or SSH config alias")
    return host, None if port_text is None else _port(text, port_text)


def _node_port(text: str, path: str) -> int | None:
    if not path:
        return None
    node_host, colon, port_text = path.rpartition(":")
    if not colon or "/" in path or node_host not in NODE_HOSTS:
        raise AddressError(
            f"{text!r}: after the host, write the model server's port on the node as "
            f"/127.0.0.1:PORT (or /:PORT); it must listen on the node's 127.0.0.1"
        )
    return _port(text, port_text)


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AddressError(f"{text!r}: {port_text!r} is not a port")
    return int(port_text)
