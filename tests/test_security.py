"""Security by default, with real processes: a Redis that demands a password and speaks only
TLS is honoured by every process (workers, bridge, control, beat), the queue's bearer token is
required, and no secret appears in any log line."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.domain.messages import BotParams, NewMessage
from orchestrator.state.ledger import Ledger
from standins.embedded_redis import TlsFiles
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, wait_quiet
from workers.contract.celery_config import broker_ssl

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-redis-pässword"
TOKEN = "queue-token-4f9a"
BOTH = ["llama3.2:3b", "qwen2.5:7b"]


def make_certificates(folder: Path) -> TlsFiles:
    """A throwaway authority and a server certificate for 127.0.0.1, made with openssl."""

    def openssl(command: str) -> None:
        subprocess.run(["openssl", *command.split()], cwd=folder, check=True, capture_output=True)

    openssl("req -x509 -newkey rsa:2048 -nodes -days 1 -keyout ca.key -out ca.crt -subj /CN=ca")
    openssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1"
        " -out server.crt -extfile san.ext"
    )
    return TlsFiles(
        ca_cert=folder / "ca.crt", cert=folder / "server.crt", key=folder / "server.key"
    )


def redis_speaks_tls() -> bool:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        return False
    probe = subprocess.run([binary, "--help"], capture_output=True, text=True)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return "tls" in (probe.stdout + probe.stderr + version).lower() or "v=7" in version


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    if not redis_speaks_tls():
        pytest.skip("no redis-server with TLS, or no openssl, on this machine")
    tls = make_certificates(tmp_path_factory.mktemp("tls"))
    servers = [
        SimServerSpec(name=name, models=BOTH, loaded=BOTH, tokens_per_second=2000, parallel=2)
        for name in ("mac-1", "mac-2")
    ]
    with LocalStack(servers, queue_token=TOKEN, redis_password=PASSWORD, redis_tls=tls) as running:
        yield running


def test_every_process_works_over_tls_with_a_password(stack: LocalStack) -> None:
    assert stack.redis_url.startswith("rediss://")
    ids = [f"secure-{n}" for n in range(6)]
    with stack.queue_client() as queue:
        for n, message_id in enumerate(ids):
            queue.post_comment(
                NewMessage(
                    id=message_id,
                    text=f"question {n}",
                    username="ada",
                    color="080150227",
                    botParams=BotParams(entity="the-eternal" if n % 2 else "the-critic"),
                )
            )
    wait_quiet(stack, expected=len(ids), timeout=60)
    with stack.queue_client() as queue:
        replies = Counter(
            str(c.get("replyTo")) for c in queue.comments_after(0) if c.get("message-type") == "AI"
        )
    assert {message_id: replies[message_id] for message_id in ids} == dict.fromkeys(ids, 1)
    servers = {job.server_id for job in Ledger(stack.redis, stack.keys).get_many(ids)}
    assert servers <= {"mac-1", "mac-2"} and servers


def test_the_queue_demands_its_token(stack: LocalStack) -> None:
    answer = httpx.post(f"{stack.queue_url}/api/queue/claim-next", json={"workerId": "intruder"})
    assert answer.status_code == 401


def test_no_secret_in_any_log_line(stack: LocalStack) -> None:
    logs = sorted((stack.work_dir / "logs").glob("*.log"))
    assert {path.stem for path in logs} >= {"bridge", "control", "beat", "worker-mac-1"}
    for path in logs:
        content = path.read_text(errors="replace")
        assert PASSWORD not in content, path.name
        assert TOKEN not in content, path.name


def test_the_broker_takes_its_tls_options_from_the_url() -> None:
    url = "rediss://:pw@host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    options = broker_ssl(url)
    assert options is not None
    assert options["ssl_ca_certs"] == "/etc/ca.pem"
    assert broker_ssl("redis://host:6379/0") is None
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        broker_ssl("rediss://host/0?ssl_cert_reqs=sometimes")
