"""A stand-in for the `tailscale` command: `tailscale status --json` as a Mac on a tailnet
prints it (the shape of tailscale's ipnstate.Status, trimmed of nothing a reader looks at).

`install(folder)` copies it into `folder` as an executable named `tailscale`, run by this
interpreter; what it answers comes from `tailscale.json` beside it (`set_answer`): its backend
state, addresses and names, or an exit code, bad output or a hang. Standard library only: it
runs as its own process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ANSWER_FILE = "tailscale.json"
IPS = ["100.101.102.103", "fd7a:115c:a1e0::6a01:6667"]
HOST_NAME = "mac-studio"
TAILNET = "tail1a2b3c.ts.net"
DNS_NAME = f"{HOST_NAME}.{TAILNET}."
PEER_IPS = ["100.64.0.7", "fd7a:115c:a1e0::7"]


def status(
    *,
    backend_state: str = "Running",
    ips: list[str] | None = None,
    host_name: str = HOST_NAME,
    dns_name: str = DNS_NAME,
) -> dict[str, Any]:
    """`tailscale status --json` of this Mac with one peer (the orchestrator host)."""
    ips = IPS if ips is None else ips
    running = backend_state == "Running"
    me = {
        "ID": "nX1cR2m3CNTRL",
        "PublicKey": "nodekey:4c1f0d1e6a2b9f3c5d7e8a1b2c3d4e5f60718293a4b5c6d7e8f90112233445",
        "HostName": host_name,
        "DNSName": dns_name,
        "OS": "macOS",
        "UserID": 4201,
        "TailscaleIPs": ips,
        "AllowedIPs": [f"{ip}/32" if "." in ip else f"{ip}/128" for ip in ips],
        "Addrs": ["192.168.1.23:41641", "[2a02:1210::23]:41641"] if running else None,
        "CurAddr": "",
        "Relay": "fra",
        "RxBytes": 0,
        "TxBytes": 0,
        "Created": "2024-11-02T09:14:21.123456Z",
        "LastWrite": "0001-01-01T00:00:00Z",
        "LastSeen": "0001-01-01T00:00:00Z",
        "LastHandshake": "0001-01-01T00:00:00Z",
        "Online": running,
        "ExitNode": False,
        "ExitNodeOption": False,
        "Active": False,
        "PeerAPIURL": [f"http://{ips[0]}:54631"] if ips else None,
        "Capabilities": ["https://tailscale.com/cap/file-sharing", "https"],
        "InNetworkMap": True,
        "InMagicSock": False,
        "InEngine": False,
        "KeyExpiry": "2025-05-01T09:14:21Z",
    }
    host = {
        **me,
        "ID": "nY7kP4q5CNTRL",
        "PublicKey": "nodekey:9a8b7c6d5e4f30211203948576a6b5c4d3e2f1009182736455463728190a0b0c",
        "HostName": "orchestrator",
        "DNSName": f"orchestrator.{TAILNET}.",
        "OS": "linux",
        "TailscaleIPs": PEER_IPS,
        "AllowedIPs": [f"{PEER_IPS[0]}/32", f"{PEER_IPS[1]}/128"],
        "Addrs": ["203.0.113.9:41641"],
        "CurAddr": "203.0.113.9:41641",
        "Relay": "ams",
        "RxBytes": 148_204,
        "TxBytes": 90_331,
        "LastSeen": "2025-01-20T10:01:02Z",
        "LastHandshake": "2025-01-20T10:00:41.5Z",
        "Active": True,
        "PeerAPIURL": [f"http://{PEER_IPS[0]}:41234"],
    }
    return {
        "Version": "1.78.1-t8c9b1d7a2-g3f4e5d6c7",
        "TUN": True,
        "BackendState": backend_state,
        "HaveNodeKey": True,
        "AuthURL": "",
        "TailscaleIPs": ips if running else None,
        "Self": me,
        "Health": [] if running else ["Tailscale is stopped."],
        "MagicDNSSuffix": TAILNET,
        "CurrentTailnet": {
            "Name": "ada@example.com",
            "MagicDNSSuffix": TAILNET,
            "MagicDNSEnabled": True,
        },
        "CertDomains": [dns_name.rstrip(".")],
        "Peer": {host["PublicKey"]: host} if running else None,
        "User": {
            "4201": {
                "ID": 4201,
                "LoginName": "ada@example.com",
                "DisplayName": "Ada",
                "ProfilePicURL": "",
                "Roles": [],
            }
        },
        "ClientVersion": None,
    }


def install(folder: Path) -> Path:
    """This stand-in as `folder/tailscale`, executable, run by this interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    command = folder / "tailscale"
    command.write_text(f"#!{sys.executable}\n" + Path(__file__).read_text())
    command.chmod(0o755)
    return command


def set_answer(
    folder: Path,
    *,
    exit_code: int = 0,
    stdout: str | None = None,
    hang: bool = False,
    **status_fields: Any,
) -> None:
    """What the stand-in in `folder` answers next: `status(**status_fields)`, or `stdout` as
    given; exiting `exit_code`; or nothing at all, ever (`hang`)."""
    answer = {"exit_code": exit_code, "stdout": stdout, "hang": hang, "status": status_fields}
    (folder / ANSWER_FILE).write_text(json.dumps(answer))


def main(argv: list[str]) -> int:
    if argv != ["status", "--json"]:
        print(f"this stand-in answers only `status --json`, not {argv}", file=sys.stderr)
        return 2
    answer_path = Path(__file__).resolve().parent / ANSWER_FILE
    answer = json.loads(answer_path.read_text()) if answer_path.exists() else {}
    if answer.get("hang"):
        while True:  # a daemon that never answers; the caller's timeout ends this process
            time.sleep(3600)
    if answer.get("exit_code"):
        print(
            "failed to connect to local tailscaled; it doesn't appear to be running",
            file=sys.stderr,
        )
        return int(answer["exit_code"])
    stdout = answer.get("stdout")
    print(
        stdout if stdout is not None else json.dumps(status(**answer.get("status", {})), indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
