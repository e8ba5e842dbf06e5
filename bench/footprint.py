"""The orchestrator host's footprint: the resident memory of its processes, idle and at 50
messages a second, against a 1 GB machine.

    python bench/footprint.py [--rate 50] [--seconds 30] [--without-web]

The host's processes run as the Procfile runs them, each under `ollama-cloud supervise`: the
bridge, the control worker (Celery's thread pool, `control_concurrency` threads), beat (`-l
warning`), Flower (its basic auth from FLOWER_BASIC_AUTH in its environment) and the fleet page
(`ollama-cloud web`, behind basic auth); and Redis (the embedded redis-server the demo runs,
with its AOF). The local site queue and simulated Macs (three zero-latency servers of 4 slots,
each with its worker) give the host its work: they are not the host's and are not counted.

A process's memory is its VmRSS (/proc/<pid>/status) with its descendants' (the command
`supervise` runs; a Celery pool's children, should one have any). RSS counts a page shared
between processes once in each; the PSS figures (/proc/<pid>/smaps_rollup) share it out, and
are what the processes take together.

Idle: warm-up messages go through first (every code path loaded, every connection open); once
the system is quiet it settles for `SETTLE_S`, then each process's largest reading over
`IDLE_S`. Loaded: `--rate` messages a second posted for `--seconds`, while a viewer fetches the
fleet page, its snapshot (/api/fleet) and /metrics every 2 s and Flower's dashboard every 5 s;
each process's memory is read every half second, and its peak kept, until every message's jobs
have finished.

Prints one JSON object as the last line of stdout (progress goes to stderr):
  idle_mb, loaded_mb     each host process's RSS (with its supervisor and descendants)
  supervisor_mb          what `ollama-cloud supervise` itself takes, per process (at the end); a
                         service manager (systemd, compose) in its place takes none of it
  total_rss_mb_idle, total_rss_mb_loaded, total_pss_mb_idle, total_pss_mb_loaded
  messages_posted, messages_answered, post_rate_per_s, answer_rate_per_s (the first claim to
                         the last reply), most_unfinished (messages posted and not yet finished,
                         at worst, while posting: small when the fleet keeps up)
  flower_events          the task events Flower took in over the run (it keeps each task in
                         memory, up to its `--max_tasks`)
  fits_1gb               total_rss_mb_loaded <= 600 (room left on a 1 GB machine for the
                         system and Redis's growth)
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: the project root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib
import json
import os
import secrets
import signal
import threading
import time
from typing import Any

import httpx

from bench.common import LLAMA, QWEN, bench_message, bench_parser, kept_dir
from orchestrator.domain.job import Outcome
from orchestrator.domain.messages import NewMessage
from standins.embedded_redis import free_port
from standins.processes import ManagedProcess, python_command
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec
from standins.stack import LocalStack, stop_on_sigterm
from standins.waiting import wait_for

FITS_MB = 600
MB = 1024  # /proc counts in kB
WARM_UP_MESSAGES = 30
SETTLE_S = 10.0
IDLE_S = 5.0
SAMPLE_S = 0.5
HOST_PROCESSES = ("bridge", "control", "beat", "flower", "web")
MODELS = [LLAMA, QWEN]


def zero_latency_fleet() -> list[SimServerSpec]:
    return [
        SimServerSpec(
            name=f"zero-{index}", models=MODELS, loaded=MODELS, tokens_per_second=0, parallel=4
        )
        for index in range(3)
    ]


# Reading a process's memory ----------------------------------------------------------------------


def children_by_parent() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:  # the command's name may hold spaces: the fields after its closing parenthesis
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found.setdefault(parent, []).append(int(entry.name))
    return found


def process_tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def field_kb(path: Path, name: str) -> int:
    """A `Name:   1234 kB` line of a /proc file; 0 when the process is gone."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    return field_kb(Path(f"/proc/{pid}/status"), "VmRSS")


def pss_kb(pid: int) -> int:
    return field_kb(Path(f"/proc/{pid}/smaps_rollup"), "Pss")


class Meter:
    """Each host process's memory (RSS and PSS, with its descendants), read on demand; each
    reading is kept as the process's peak of the phase under way."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_rss: dict[str, int] = {}
        self.peak_pss: dict[str, int] = {}
        self.peak_total_pss = 0
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.peak_rss, self.peak_pss, self.peak_total_pss = {}, {}, 0

    def read(self) -> None:
        children = children_by_parent()
        rss: dict[str, int] = {}
        pss: dict[str, int] = {}
        for name, pid in self.pids.items():
            tree = process_tree(pid, children)
            rss[name] = sum(rss_kb(one) for one in tree)
            pss[name] = sum(pss_kb(one) for one in tree)
        with self.lock:
            for name in self.pids:
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss[name])
                self.peak_pss[name] = max(self.peak_pss.get(name, 0), pss[name])
            self.peak_total_pss = max(self.peak_total_pss, sum(pss.values()))

    def figures(self) -> tuple[dict[str, float], float, float]:
        """Each process's peak RSS in MB, their sum, and the peak of their PSS's sum."""
        with self.lock:
            each = {name: round(self.peak_rss.get(name, 0) / MB, 1) for name in self.pids}
            return each, round(sum(each.values()), 1), round(self.peak_total_pss / MB, 1)


# The host, as the Procfile runs it ---------------------------------------------------------------


class HostStack(LocalStack):
    """The local stack with the host's processes each under `ollama-cloud supervise`, with the
    Procfile's arguments, and Flower and the fleet page beside them."""

    def __init__(self, servers: list[SimServerSpec], *, web: bool, work_dir: Path | None) -> None:
        super().__init__(servers, work_dir=work_dir, web=web)
        self.flower_port = free_port()
        self.flower_auth = ("bench", secrets.token_urlsafe(12))
        self.web_auth = ("bench", secrets.token_urlsafe(12))

    def supervised(self, name: str, command: list[str], env: dict[str, str]) -> ManagedProcess:
        argv = python_command("-m", "orchestrator", "supervise", "--", *command)
        return self._start(name, argv, env)

    def start_control(self, name: str = "control") -> ManagedProcess:
        command = python_command(
            "-m", "celery", "-A", "orchestrator", "worker", "-Q", "control", "-n", f"{name}@%h",
            "--without-mingle", "--without-gossip", "-l", "info",
        )  # fmt: skip
        return self.supervised(name, command, self.env())

    def start_beat(self, name: str = "beat") -> ManagedProcess:
        command = python_command(
            "-m", "celery", "-A", "orchestrator", "--quiet", "beat", "-l", "warning"
        )  # fmt: skip
        return self.supervised(name, command, self.env())

    def start_bridge(self, index: int = 0) -> ManagedProcess:
        return self.supervised("bridge", python_command("-m", "orchestrator", "bridge"), self.env())

    def start_web(self) -> ManagedProcess:
        """`ollama-cloud web`, its address and basic auth from the environment."""
        env = self.env(
            WEB_HOST="127.0.0.1",
            WEB_PORT=str(self.web_port),
            WEB_BASIC_AUTH=":".join(self.web_auth),
        )
        return self.supervised("web", python_command("-m", "orchestrator", "web"), env)

    def start(self, *, workers: bool = True) -> HostStack:
        super().start(workers=workers)
        flower = python_command(
            "-m", "celery", "-A", "orchestrator", "flower",
            "--address=127.0.0.1", f"--port={self.flower_port}", "--max_tasks=10000",
        )  # fmt: skip
        flower_env = {**self.env(), "FLOWER_BASIC_AUTH": ":".join(self.flower_auth)}
        self.supervised("flower", flower, flower_env)
        for url, auth in self.viewer_urls():
            self.wait_answer(url, auth)
        return self

    def viewer_urls(self) -> list[tuple[str, tuple[str, str]]]:
        """What a viewer fetches: the fleet page, its snapshot and /metrics, Flower's dashboard."""
        urls = [(f"http://127.0.0.1:{self.flower_port}/", self.flower_auth)]
        if self.web:
            web = self.web_url
            urls = [
                (f"{web}{path}", self.web_auth) for path in ("/", "/api/fleet", "/metrics")
            ] + urls
        return urls

    def wait_answer(self, url: str, auth: tuple[str, str]) -> None:
        def answers() -> bool:
            self.check_alive()
            try:
                return httpx.get(url, auth=auth, timeout=2.0).status_code < 400
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, interval=0.1, what=url)

    def flower_events(self) -> int | None:
        """The task events Flower has taken in (its /metrics), each of which it keeps in
        memory up to its `max_tasks`; None when it does not say."""
        url = f"http://127.0.0.1:{self.flower_port}/metrics"
        try:
            answer = httpx.get(url, auth=self.flower_auth, timeout=10.0)
        except httpx.HTTPError:
            return None
        counts = [
            float(line.rsplit(" ", 1)[1])
            for line in answer.text.splitlines()
            if line.startswith("flower_events_total{")
        ]
        return round(sum(counts)) if answer.status_code == 200 else None

    def host_pids(self) -> dict[str, int]:
        names = [name for name in HOST_PROCESSES if name != "web" or self.web]
        pids = {name: self.processes[name].pid for name in names}
        redis_process = self.redis_server.process
        pids["redis"] = redis_process.pid if redis_process else None
        return {name: pid for name, pid in pids.items() if pid is not None}

    def stop(self) -> None:
        """Every process by its pid, and then any descendant of one still there (a command
        its supervisor did not take down)."""
        children = children_by_parent()
        left = [
            pid
            for process in self.processes.processes.values()
            if process.pid is not None
            for pid in process_tree(process.pid, children)[1:]
        ]
        try:
            super().stop()
        finally:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# The run -----------------------------------------------------------------------------------------


class Sampler:
    """Reads the host's memory every half second, and fetches what a viewer would, in a thread
    of its own."""

    def __init__(self, stack: HostStack, meter: Meter) -> None:
        self.stack = stack
        self.meter = meter
        self.viewing = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.viewer_errors = 0

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        fetched_at: dict[str, float] = {}
        with httpx.Client(timeout=5.0) as client:
            while not self.stopping.wait(SAMPLE_S):
                self.meter.read()
                if self.viewing:
                    self._view(client, fetched_at)

    def _view(self, client: httpx.Client, fetched_at: dict[str, float]) -> None:
        now = time.monotonic()
        for url, auth in self.stack.viewer_urls():
            period = 5.0 if str(self.stack.flower_port) in url else 2.0
            if now - fetched_at.get(url, 0.0) < period:
                continue
            fetched_at[url] = now
            try:
                if client.get(url, auth=auth).status_code >= 400:
                    self.viewer_errors += 1
            except httpx.HTTPError:
                self.viewer_errors += 1


def post_messages(stack: LocalStack, prefix: str, count: int) -> list[str]:
    with stack.queue_client() as queue:
        for index in range(count):
            queue.post_comment(message(prefix, index))
    return [f"{prefix}-{index}" for index in range(count)]


def message(prefix: str, index: int) -> NewMessage:
    return bench_message(prefix, index, "footprint")


def wait_finished(stack: LocalStack, messages: int, what: str, timeout: float) -> None:
    """Wait until the jobs of `messages` messages have finished, showing how many have."""
    jobs = messages * stack.jobs_per_message
    with ProgressReport(what, total=jobs) as progress:

        def finished() -> bool:
            stack.check_alive()
            done = stack.ledger.finished_count()
            progress.update(min(done, jobs))
            return done >= jobs

        wait_for(finished, timeout, interval=0.1, what=f"{jobs} jobs finished")


def steady_load(stack: HostStack, rate: float, seconds: float, already: int) -> dict[str, Any]:
    """Post `rate` messages a second for `seconds`; the most messages unfinished meanwhile."""
    count = round(rate * seconds)
    most_unfinished = 0
    with stack.queue_client() as queue, ProgressReport("posted", total=count) as progress:
        started = time.monotonic()
        for index in range(count):
            # Pacing the posts at the rate asked: a schedule, not a synchronisation.
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
            queue.post_comment(message("load", index))
            if index % 10 == 0:
                stack.check_alive()
                finished = stack.ledger.finished_count() // stack.jobs_per_message - already
                most_unfinished = max(most_unfinished, index + 1 - finished)
                progress.update(index + 1, note=f"{max(finished, 0)} finished")
        progress.update(count)
        posting_s = time.monotonic() - started
    return {"count": count, "posting_s": posting_s, "most_unfinished": most_unfinished}


def answered(stack: LocalStack, ids: list[str]) -> tuple[int, float]:
    """How many were answered, and at what rate from the first claim to the last finish."""
    jobs = stack.ledger.get_many(ids)
    done = [job for job in jobs if job.outcome == Outcome.ANSWERED]
    if not done:
        return 0, 0.0
    span = max(job.finished_at or 0.0 for job in done) - min(job.claimed_at for job in done)
    return len(done), len(done) / span if span > 0 else 0.0


def say(line: str) -> None:
    print(f"[footprint] {line}", file=sys.stderr, flush=True)


def measure(rate: float, seconds: float, web: bool, work_dir: Path | None) -> dict[str, Any]:
    stack = HostStack(zero_latency_fleet(), web=web, work_dir=work_dir)
    try:
        say("starting Redis, the local queue, the simulated servers and the host's processes")
        stack.start()
        meter = Meter(stack.host_pids())
        with Sampler(stack, meter) as sampler:
            post_messages(stack, "warm", WARM_UP_MESSAGES)
            wait_finished(stack, WARM_UP_MESSAGES, "warm-up jobs", timeout=120)
            with ProgressReport("settling", total=SETTLE_S + IDLE_S) as progress:
                settle_started = time.monotonic()

                def settled(until: float) -> bool:
                    stack.check_alive()
                    progress.update(round(min(time.monotonic() - settle_started, until), 1))
                    return time.monotonic() >= settle_started + until

                wait_for(lambda: settled(SETTLE_S), SETTLE_S + 30, interval=0.5, what="settled")
                meter.reset()
                wait_for(lambda: settled(SETTLE_S + IDLE_S), IDLE_S + 30, interval=0.5)
            meter.read()
            idle, idle_total, idle_pss = meter.figures()
            say(f"idle: {idle_total} MB ({idle})")
            meter.reset()
            sampler.viewing = True
            load = steady_load(stack, rate, seconds, WARM_UP_MESSAGES)
            wait_finished(stack, WARM_UP_MESSAGES + load["count"], "load jobs", timeout=600)
            sampler.viewing = False
            meter.read()
            loaded, loaded_total, loaded_pss = meter.figures()
            say(f"loaded: {loaded_total} MB ({loaded})")
            flower_events = stack.flower_events()
        ids = [f"load-{index}" for index in range(load["count"])]
        answered_count, answer_rate = answered(stack, ids)
        supervisors = {
            name: round(rss_kb(pid) / MB, 1)
            for name, pid in stack.host_pids().items()
            if name != "redis"
        }
    finally:
        stack.stop()
    return {
        "rate_asked_per_s": rate,
        "seconds": seconds,
        "idle_mb": idle,
        "loaded_mb": loaded,
        "supervisor_mb": supervisors,
        "total_rss_mb_idle": idle_total,
        "total_rss_mb_loaded": loaded_total,
        "total_pss_mb_idle": idle_pss,
        "total_pss_mb_loaded": loaded_pss,
        "messages_posted": load["count"],
        "messages_answered": answered_count,
        "post_rate_per_s": round(load["count"] / load["posting_s"], 1),
        "answer_rate_per_s": round(answer_rate, 1),
        "most_unfinished": load["most_unfinished"],
        "flower_events": flower_events,
        "viewer_errors": sampler.viewer_errors,
        "fits_1gb": loaded_total <= FITS_MB,
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rate", type=float, default=50.0, help="messages a second under load")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load lasts")
    parser.add_argument("--without-web", action="store_true", help="a host without the fleet page")
    parser.add_argument("--keep-dir", type=kept_dir, help="keep the stack's logs and data here")
    args = parser.parse_args()
    stop_on_sigterm()
    result = measure(args.rate, args.seconds, not args.without_web, args.keep_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
