"""Forwarding: one local connection of the HTTP client, one SSH channel (`direct-tcpip`) to
the node's 127.0.0.1:<port>, bytes both ways, with flow control, and either side's end ending
the other."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from workers.transport._asyncssh import asyncssh
from workers.transport.faults import NODE_HOST, channel_fault


class Tunnel(Protocol):
    """What a forwarded connection asks of its tunnel."""

    pipes: set[LocalSide]  # the open forwarded connections

    def connection(self) -> asyncssh.SSHClientConnection | None:
        """The SSH connection now up; None while the link is down."""

    def note_channel(self, node_port: int, refused: str | None) -> None:
        """A channel to `node_port` was opened (None) or refused (why)."""


class LocalSide(asyncio.Protocol):
    """A local connection of the HTTP client; its bytes travel on one SSH channel. Nothing here
    raises: an error in a callback would end the whole SSH connection (asyncssh) or be logged
    as fatal (asyncio). Either side's end ends the other."""

    def __init__(self, tunnel: Tunnel, node_port: int) -> None:
        self.tunnel = tunnel
        self.node_port = node_port
        self.transport: asyncio.Transport | None = None
        self.channel: asyncssh.SSHTCPChannel[bytes] | None = None
        self._early: list[bytes] = []  # sent before the channel opened
        self._eof = False
        self._closed = False
        self._opening: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        conn = self.tunnel.connection()
        if conn is None:  # the link is down: the request's transport knows why
            transport.abort()
            return
        self.tunnel.pipes.add(self)
        transport.pause_reading()  # until the channel is open
        self._opening = asyncio.ensure_future(self._open(conn))

    async def _open(self, conn: asyncssh.SSHClientConnection) -> None:
        assert self.transport is not None
        try:
            channel, _ = await conn.create_connection(
                lambda: ChannelSide(self), NODE_HOST, self.node_port
            )
        except asyncssh.ChannelOpenError as exc:
            if not conn.is_closed():  # a link going down is the tunnel's to tell
                self.tunnel.note_channel(self.node_port, channel_fault(self.node_port, exc))
            self.abort()
            return
        except (asyncssh.Error, OSError):
            self.abort()
            return
        self.tunnel.note_channel(self.node_port, None)
        if self._closed:
            channel.close()
            return
        self.channel = channel
        try:
            if self._early:
                channel.write(b"".join(self._early))
                self._early.clear()
            if self._eof:
                channel.write_eof()
        except OSError:  # the node closed it already
            self.abort()
            return
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.channel is None:
            self._early.append(data)
            return
        try:
            self.channel.write(data)
        except OSError:  # the node closed the channel
            self.abort()

    def eof_received(self) -> bool:
        if self.channel is None:
            self._eof = True
        else:
            with contextlib.suppress(OSError):
                self.channel.write_eof()
        return True  # the answer may still be coming

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.pause_reading()

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.tunnel.pipes.discard(self)
        if self.channel is not None:
            self.channel.close()

    def abort(self) -> None:
        self._closed = True
        self.tunnel.pipes.discard(self)
        if self.transport is not None:
            self.transport.abort()
        if self.channel is not None:
            self.channel.close()

    def writable(self) -> asyncio.Transport | None:
        """The local transport, while it takes data."""
        transport = self.transport
        return transport if transport is not None and not transport.is_closing() else None


class ChannelSide(asyncssh.SSHTCPSession[bytes]):
    """The node's side of a forwarded connection: what it sends goes to the local one."""

    def __init__(self, local: LocalSide) -> None:
        self.local = local

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        transport = self.local.writable()
        if transport is not None:
            transport.write(data)

    def eof_received(self) -> bool:
        transport = self.local.writable()
        if transport is not None and transport.can_write_eof():
            with contextlib.suppress(OSError):  # the client has gone meanwhile
                transport.write_eof()
        return True

    def pause_writing(self) -> None:
        transport = self.local.writable()
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self.local.writable()
        if transport is not None:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.local.transport is not None:
            self.local.transport.close()
