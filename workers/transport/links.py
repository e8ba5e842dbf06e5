"""The transport seam under every backend: a backend names its model servers by address
(`http://…` or `ssh://…`, see `workers.transport.address`) and calls each through the URL its
link gives. A plain address is its own URL; an `ssh://` one is a local port forwarded through
the node's SSH tunnel. The backend's httpx client takes `Links.transport`, which fails a
request at once while its tunnel is down and says why (TunnelDown); the bytes themselves
travel as over any local socket."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from workers.transport.address import HttpAddress, SshAddress, parse_address
from workers.transport.ssh import LOCAL_HOST, SshOptions, SshTunnel, Tunnels

FINISH_WAIT_S = 0.05  # what is left of an answer once its reply is read comes at once, or never
FINISH_BYTES = 4096


class Link:
    """One address as a backend calls it."""

    def __init__(self, address: str, base_url: str, url_for: Callable[[int], str]) -> None:
        self.address = address  # as written: for people, the logs and the server record
        self.base_url = base_url  # what the HTTP client calls
        self._url_for = url_for

    def url_for(self, port: int) -> str:
        """The URL of another port on the same host (a pool's model servers): the node's
        127.0.0.1:`port` through the same tunnel, for an `ssh://` address."""
        return self._url_for(port)

    def __repr__(self) -> str:
        return f"Link({self.address!r} → {self.base_url!r})"


class Links:
    """The links of one backend. Every `ssh://` address with the same SSH endpoint shares one
    tunnel (one SSH connection); `tunnels` shares them further, between backends (a mesh
    serving many nodes), and is then closed by whoever made it."""

    def __init__(
        self,
        ssh: SshOptions | None = None,
        *,
        tunnels: Tunnels | None = None,
        connect_wait_s: float = 3.0,
        server_id: str = "",
    ) -> None:
        self._own_tunnels = tunnels is None
        self._tunnels = tunnels or Tunnels(ssh)
        self.connect_wait_s = connect_wait_s
        self.server_id = server_id
        self._lock = threading.Lock()
        self._routes: dict[int, tuple[SshTunnel, int]] = {}  # local port → tunnel, node port

    def open(self, address: str, default_port: int) -> Link:
        """The link for `address`; `default_port` is the node's port when an `ssh://` address
        names none. Raises AddressError (a ValueError) for an address of neither form."""
        parsed = parse_address(address)
        if isinstance(parsed, HttpAddress):
            return Link(parsed.url, parsed.url, lambda port: _with_port(parsed.url, port))
        return self._open_ssh(parsed, default_port)

    def _open_ssh(self, address: SshAddress, default_port: int) -> Link:
        tunnel = self._tunnels.tunnel(address.endpoint, self.server_id)

        def url_for(port: int) -> str:
            local_port = tunnel.local_port(port)
            with self._lock:
                self._routes[local_port] = (tunnel, port)
            return f"http://{LOCAL_HOST}:{local_port}"

        node_port = address.node_port or default_port
        return Link(address.text, url_for(node_port), url_for)

    @property
    def tunnelled(self) -> bool:
        """Whether any address of this backend goes through SSH."""
        with self._lock:
            return bool(self._routes)

    def transport(
        self, inner: httpx.BaseTransport | None = None, *, max_connections: int = 64
    ) -> httpx.BaseTransport | None:
        """What the backend's httpx client sends through, once its addresses are open: `inner`
        itself when none is tunnelled (None: httpx's own, as before), else `inner` (or an
        HTTP transport of `max_connections`) watched by the tunnels."""
        if not self.tunnelled:
            return inner
        inner = inner or httpx.HTTPTransport(limits=httpx.Limits(max_connections=max_connections))
        return _TunnelledTransport(self, inner)

    def client(
        self,
        inner: httpx.BaseTransport | None = None,
        *,
        max_connections: int = 64,
        **options: Any,
    ) -> httpx.Client:
        """The backend's httpx client over these links (`transport`), with `max_connections`;
        `options` (a base URL, timeouts) as httpx takes them."""
        return httpx.Client(
            transport=self.transport(inner, max_connections=max_connections),
            limits=httpx.Limits(max_connections=max_connections),
            **options,
        )

    def route(self, url: httpx.URL) -> tuple[SshTunnel, int] | None:
        """The tunnel and node port behind a URL this backend calls; None for a direct one."""
        if url.host != LOCAL_HOST or url.port is None:
            return None
        with self._lock:
            return self._routes.get(url.port)

    def close(self) -> None:
        if self._own_tunnels:
            self._tunnels.close()


class _TunnelledTransport(httpx.BaseTransport):
    """Sends as `inner` does; a request through a tunnel that is down fails at once, and a
    connection the tunnel dropped or the node refused fails with the tunnel's reason, both as
    TunnelDown. A timeout stays a timeout: the backend tells a hang from a slow load."""

    def __init__(self, links: Links, inner: httpx.BaseTransport) -> None:
        self._links = links
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        route = self._links.route(request.url)
        if route is None:
            return self._inner.handle_request(request)
        tunnel, node_port = route
        tunnel.wait_usable(self._links.connect_wait_s)
        try:
            response = self._inner.handle_request(request)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            fault = tunnel.fault(node_port)
            if fault is None:
                raise
            raise fault from exc
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _FinishedOnClose(response.stream, request)
        return response

    def close(self) -> None:
        self._inner.close()


class _FinishedOnClose(httpx.SyncByteStream):
    """An answer's body that, closed before its end, reads the little left of it, briefly. A
    streamed reply is read up to its last chunk, not its terminator: without the rest, its
    connection is closed, and the next request opens another, a channel through the tunnel
    and a connection on the node."""

    def __init__(self, inner: httpx.SyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._chunks = iter(inner)
        self._request = request
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        # Not `yield from`: a reader that stops early would close the inner stream with it.
        for chunk in self._chunks:  # noqa: UP028
            yield chunk
        self._ended = True

    def close(self) -> None:
        if not self._ended:
            self._request.extensions["timeout"]["read"] = FINISH_WAIT_S
            deadline = time.monotonic() + FINISH_WAIT_S
            left = FINISH_BYTES
            with contextlib.suppress(httpx.HTTPError):
                for chunk in self._chunks:
                    left -= len(chunk)
                    if left < 0 or time.monotonic() > deadline:  # more than an ending
                        break
        self._inner.close()


def _with_port(url: str, port: int) -> str:
    """`url`'s scheme and host with another port, without its path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, f"{host}:{port}", "", "", ""))
