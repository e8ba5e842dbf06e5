"""How a backend's requests reach a model server: directly over HTTP, or through a persistent
SSH tunnel to the node (`ssh://alias`). The backends take their URLs from `Links`."""

from workers.transport.address import (
    AddressError,
    HttpAddress,
    SshAddress,
    SshEndpoint,
    parse_address,
)
from workers.transport.links import Link, Links
from workers.transport.ssh import LinkState, SshOptions, SshTunnel, Tunnels

__all__ = [
    "AddressError",
    "HttpAddress",
    "Link",
    "LinkState",
    "Links",
    "SshAddress",
    "SshEndpoint",
    "SshOptions",
    "SshTunnel",
    "Tunnels",
    "parse_address",
]
