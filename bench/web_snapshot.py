"""What one fleet-page snapshot costs Redis: round trips, commands and time, for a small and a
large fleet with full lists (jobs in flight, dead letters, lost scores, recent replies).

    .venv/bin/python bench/web_snapshot.py [--servers 3 100] [--reads 200]

Round trips are the requests the client sends (a pipeline is one); commands are Redis's own
count (INFO commandstats). A snapshot is read at most once a second however many pages are
open, so this is the page's whole load on Redis.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import redis

from orchestrator.domain.job import Attempt, Outcome, score_job_id
from orchestrator.ops.web import JOBS_LISTED, RECENT_LISTED, read_snapshot
from orchestrator.services import State
from orchestrator.state.delivered import Delivered, DeliveredRecord
from orchestrator.state.fleet import Fleet
from orchestrator.state.ledger import Ledger
from standins.embedded_redis import EmbeddedRedis
from workers.contract.job import JobState
from workers.contract.keys import Keys
from workers.contract.protocol import ChatTimings, ErrorKind
from workers.contract.server_record import ServerRecord
from workers.heartbeat import write_record

BRIDGE = "bench"
MODEL = "llama3.2:3b"


class CountingConnection(redis.Connection):
    """Counts the requests sent: one per command, one per pipeline."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def fill(state: State, servers: int) -> None:
    for index in range(servers):
        server_id = f"mac-{index}"
        record = ServerRecord(id=server_id, capacity=4, models=[MODEL], loaded=[MODEL],
                              last_beat=time.time(), location="bench")  # fmt: skip
        write_record(state.redis, state.keys, record, ttl_s=600)
        pipe = state.redis.pipeline()
        timings = ChatTimings(wall_ms=900, eval_count=100, eval_ms=800)
        state.fleet.queue_latency(pipe, server_id, MODEL, timings)
        pipe.execute()
    ledger = state.ledger
    for index in range(2 * JOBS_LISTED):
        job_id = f"job-{index}"
        message = {"id": job_id, "text": "hello " * 50, "username": "ada", "timestamp": 1}
        ledger.record_claim(job_id, message, BRIDGE, 600, scored=True)
        for one in (job_id, score_job_id(job_id)):
            ledger.mark_waiting(one, BRIDGE, entity="the-eternal", model=MODEL, priority=5)
        if index % 2:  # half end dead, with their scores lost
            for one, outcome in (
                (job_id, Outcome.DEAD),
                (score_job_id(job_id), Outcome.SCORE_LOST),
            ):
                job = ledger.get(one)
                assert job is not None
                failed = Attempt(attempt=1, server_id="mac-0", error_kind=ErrorKind.TIMEOUT,
                                 error="no answer in 30s")  # fmt: skip
                job = job.with_attempt(failed)
                ledger.begin_ending(job, f"1 attempt failed: {job.history()}", (JobState.WAITING,))
                ledger.finish(one, JobState.DEAD, reason="given up", outcome=outcome)
    recent = DeliveredRecord(state.redis, state.keys)
    for index in range(4 * RECENT_LISTED):
        recent.note(Delivered(at=time.time(), job_id=f"done-{index}", kind="reply",
                              outcome="answered", server_id="mac-0", entity="the-eternal",
                              model=MODEL, attempt=1, latency_ms=900.0))  # fmt: skip


def measure(url: str, servers: int, reads: int) -> None:
    client = redis.Redis.from_url(url, decode_responses=True, connection_class=CountingConnection)
    keys = Keys("bench-" + str(servers))
    state = State(client, keys, Ledger(client, keys), Fleet(client, keys))
    fill(state, servers)
    read_snapshot(state, "http://127.0.0.1:5555")  # scripts loaded, connection open
    client.config_resetstat()
    CountingConnection.sent = 0
    times = []
    size = 0
    for _ in range(reads):
        started = time.perf_counter()
        snapshot = read_snapshot(state, "http://127.0.0.1:5555")
        times.append((time.perf_counter() - started) * 1000)
        size = len(str(snapshot))
    stats = client.info("commandstats")
    commands = sum(entry["calls"] for name, entry in stats.items() if name != "cmdstat_info")
    commands -= 1  # the CONFIG RESETSTAT
    print(
        f"{servers:4d} servers: {CountingConnection.sent / reads:.0f} round trips, "
        f"{commands / reads:.0f} commands, median {statistics.median(times):.1f} ms, "
        f"p95 {sorted(times)[int(0.95 * len(times))]:.1f} ms, ~{size // 1024} KB of JSON"
    )
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, nargs="+", default=[3, 100])
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        for count in args.servers:
            measure(server.url, count, args.reads)


if __name__ == "__main__":
    main()
