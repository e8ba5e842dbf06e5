"""The whole system on one machine, as real processes: an embedded Redis, the local queue,
simulated Ollama servers, one Celery worker per server, the control worker, beat and the bridge.

The demo runs it for people; the end-to-end tests and the benches run it to count.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType

import httpx
import redis

from orchestrator.domain.servers import ServerView
from orchestrator.services import State
from orchestrator.site_queue import SiteQueueClient
from orchestrator.state.ledger import Ledger
from standins import SAMPLE_ENTITIES_DIR
from standins.embedded_redis import EmbeddedRedis, TlsFiles, free_port
from standins.processes import ManagedProcess, ProcessGroup, python_command
from standins.progress import ProgressReport
from standins.simulator import SimServerSpec, format_server_spec
from standins.waiting import wait_for
from workers.contract.keys import DEFAULT_PREFIX, Keys
from workers.contract.settings import ENV_PREFIX


def demo_fleet() -> list[SimServerSpec]:
    """Three Macs of different speeds: what the demo shows."""
    both = ["llama3.2:3b", "qwen2.5:7b"]
    return [
        SimServerSpec(name="mac-studio", models=both, loaded=["llama3.2:3b"], tokens_per_second=120,
                      load_seconds=1.5, parallel=4),
        SimServerSpec(name="mac-mini", models=both, loaded=["qwen2.5:7b"], tokens_per_second=60,
                      load_seconds=2.5, parallel=2),
        SimServerSpec(name="macbook-air", models=["llama3.2:3b"], tokens_per_second=25,
                      load_seconds=3.0, parallel=1),
    ]  # fmt: skip


def spec_argument(spec: SimServerSpec) -> str:
    """A server spec as `ollama-cloud sim --server` takes it."""
    return format_server_spec(spec)


def ready_path(spec: SimServerSpec) -> str:
    """A route the simulated server answers once it serves (a llama-server answers its model
    list while it loads)."""
    return {"ollama": "/api/version", "llamacpp": "/v1/models", "pool": "/health"}[spec.kind]


def worker_backend(spec: SimServerSpec, url: str) -> dict[str, str]:
    """The worker settings (without their prefix) that point it at a simulated server of
    this kind: Ollama, one llama-server, or a pool manager."""
    if spec.kind == "pool":
        slots = ",".join(f"{model}={count}" for model, count in spec.slots.items())
        return {"BACKEND": "pool", "POOL_URL": url, "MODEL_SLOTS": slots}
    if spec.kind == "llamacpp":
        return {"BACKEND": "openai", "MODEL_SERVER_URL": url}
    return {"OLLAMA_URL": url}


def worker_capacity(spec: SimServerSpec) -> int:
    """Jobs at once: a server's slots; for a pool, the slots of as many model servers as it
    runs at once, the largest first."""
    if spec.kind != "pool":
        return spec.parallel
    return sum(sorted(spec.slot_counts(), reverse=True)[: spec.max_servers])


class LocalStack:
    def __init__(
        self,
        servers: list[SimServerSpec] | None = None,
        *,
        entities_dir: Path = SAMPLE_ENTITIES_DIR,
        queue_token: str | None = None,
        extra_env: dict[str, str] | None = None,
        worker_env: dict[str, dict[str, str]] | None = None,
        bridges: int = 1,
        work_dir: Path | None = None,
        redis_password: str | None = None,
        redis_tls: TlsFiles | None = None,
        key_prefix: str = DEFAULT_PREFIX,
        shared_redis: EmbeddedRedis | None = None,
        web: bool = False,
    ) -> None:
        """`shared_redis`: a Redis that another stack (another fleet, under another
        `key_prefix`) uses too; it is started and stopped by its owner, not by this stack.
        `web`: the fleet page too (`ollama-cloud web`), at `web_url`."""
        self.specs = [
            spec.model_copy(update={"port": spec.port or free_port()})
            for spec in (servers or demo_fleet())
        ]
        self.entities_dir = entities_dir
        self.queue_token = queue_token
        self.extra_env = extra_env or {}
        self.worker_env = worker_env or {}
        self.bridge_count = bridges
        self._own_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="ollama-cloud-"))
        self._own_redis = shared_redis is None
        self.redis_server = shared_redis or EmbeddedRedis(
            data_dir=self.work_dir / "redis", password=redis_password, tls=redis_tls
        )
        (self.work_dir / "redis").mkdir(parents=True, exist_ok=True)
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.queue_port = free_port()
        self.web = web
        self.web_port = free_port() if web else 0
        self.processes = ProcessGroup()
        self.key_prefix = key_prefix
        self.keys = Keys(key_prefix)
        self._state: State | None = None

    # Addresses -------------------------------------------------------------------------------

    @property
    def queue_url(self) -> str:
        return f"http://127.0.0.1:{self.queue_port}"

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    @property
    def web_url(self) -> str:
        """The fleet page, when the stack runs it."""
        return f"http://127.0.0.1:{self.web_port}"

    def sim_url(self, server_id: str) -> str:
        spec = next(spec for spec in self.specs if spec.name == server_id)
        return f"http://{spec.host}:{spec.port}"

    @property
    def jobs_per_message(self) -> int:
        """A reply's job, and a score's unless scoring is off."""
        name = f"{ENV_PREFIX}EQ_ENABLED"
        setting = self.extra_env.get(name, os.environ.get(name, "true")).strip().lower()
        return 1 if setting in {"0", "false", "no", "off"} else 2

    @property
    def state(self) -> State:
        """Redis, the ledger and the fleet registry of this stack's fleet."""
        if self._state is None:
            self._state = State.connect(self.redis_url, self.key_prefix)
        return self._state

    @property
    def redis(self) -> redis.Redis:
        return self.state.redis

    @property
    def ledger(self) -> Ledger:
        return self.state.ledger

    def queue_client(self) -> SiteQueueClient:
        return SiteQueueClient(self.queue_url, self.queue_token)

    def env(self, **settings: str) -> dict[str, str]:
        """The environment of a child: ours, less any OLLAMA_CLOUD_ setting, plus the stack's."""
        env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
        env.update(
            {
                f"{ENV_PREFIX}REDIS_URL": self.redis_url,
                f"{ENV_PREFIX}QUEUE_URL": self.queue_url,
                f"{ENV_PREFIX}ENTITIES_DIR": str(self.entities_dir),
                f"{ENV_PREFIX}KEY_PREFIX": self.key_prefix,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.queue_token:
            env[f"{ENV_PREFIX}QUEUE_TOKEN"] = self.queue_token
        env.update(self.extra_env)
        env.update({f"{ENV_PREFIX}{name.upper()}": value for name, value in settings.items()})
        return env

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        log_path = self.work_dir / "logs" / f"{name}.log"
        return self.processes.add(ManagedProcess(name, argv, env, log_path))

    # Parts -----------------------------------------------------------------------------------

    def start(self, *, workers: bool = True) -> LocalStack:
        """Every part; without `workers`, the simulated servers wait for workers started
        otherwise (a mesh) and nothing waits for them to come online."""
        if self._own_redis:
            self.redis_server.start()
        queue_argv = python_command(
            "-m", "orchestrator", "queue", "serve",
            "--port", str(self.queue_port), "--db", str(self.work_dir / "queue.sqlite3"),
        )  # fmt: skip
        self._start("queue", queue_argv, self.env())
        for spec in self.specs:
            self.start_sim(spec.name, wait=False)
        self.wait_http(f"{self.queue_url}/api/admin/stats", auth=True)
        for spec in self.specs:
            self.wait_http(f"{self.sim_url(spec.name)}{ready_path(spec)}")
        for spec in self.specs if workers else []:
            self.start_worker(spec.name, wait=False)
        self.start_control()
        self.start_beat()
        for index in range(self.bridge_count):
            self.start_bridge(index)
        if self.web:
            self.start_web()
        if workers:
            self.wait_online([spec.name for spec in self.specs])
        return self

    def start_sim(self, server_id: str, *, wait: bool = True) -> ManagedProcess:
        """One simulated Ollama per process, as each Mac has its own: stopping it refuses
        connections on its port until it starts again on the same port."""
        spec = next(spec for spec in self.specs if spec.name == server_id)
        argv = python_command("-m", "orchestrator", "sim", "--server", spec_argument(spec))
        process = self._start(f"sim-{server_id}", argv, self.env())
        if wait:
            self.wait_http(f"{self.sim_url(server_id)}{ready_path(spec)}")
        return process

    def start_worker(self, server_id: str, *, wait: bool = True) -> ManagedProcess:
        spec = next(spec for spec in self.specs if spec.name == server_id)
        argv = python_command(
            "-m", "celery", "-A", "workers", "worker", "-Q", server_id,
            "-n", f"{server_id}@%h", "--without-mingle", "--without-gossip", "-l", "info",
        )  # fmt: skip
        env = self.env(
            **worker_backend(spec, self.sim_url(server_id)),
            CAPACITY=str(worker_capacity(spec)),
            CONCURRENCY=str(worker_capacity(spec)),
            LOCATION="this machine",
        )
        env.update(self.worker_env.get(server_id, {}))
        process = self._start(f"worker-{server_id}", argv, env)
        if wait:
            self.wait_online([server_id])
        return process

    def start_mesh(self, args: list[str], **settings: str) -> ManagedProcess:
        """`ollama-cloud mesh ARGS` with the stack's environment and `settings`."""
        argv = python_command("-m", "orchestrator", "mesh", *args)
        return self._start("mesh", argv, self.env(**settings))

    def start_control(self, name: str = "control") -> ManagedProcess:
        argv = python_command(
            "-m", "celery", "-A", "orchestrator", "worker", "-Q", "control",
            "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "-l", "info",
        )  # fmt: skip
        return self._start(name, argv, self.env())

    def start_beat(self, name: str = "beat") -> ManagedProcess:
        argv = python_command(
            "-m", "celery", "-A", "orchestrator", "--quiet", "beat", "-l", "info"
        )  # fmt: skip
        return self._start(name, argv, self.env())

    def start_bridge(self, index: int = 0) -> ManagedProcess:
        name = "bridge" if index == 0 else f"bridge-{index + 1}"
        argv = python_command("-m", "orchestrator", "bridge")
        return self._start(name, argv, self.env(BRIDGE_ID=name, CLAIM_IDLE_S="0.05"))

    def start_web(self) -> ManagedProcess:
        """The fleet page on its own port, answering once it serves."""
        argv = python_command(
            "-m", "orchestrator", "web", "--host", "127.0.0.1", "--port", str(self.web_port)
        )  # fmt: skip
        process = self._start("web", argv, self.env())
        self.wait_http(f"{self.web_url}/healthz")
        return process

    # Waiting ---------------------------------------------------------------------------------

    def wait_http(self, url: str, *, auth: bool = False, timeout: float = 30.0) -> None:
        headers = (
            {"Authorization": f"Bearer {self.queue_token}"} if auth and self.queue_token else {}
        )

        def answers() -> bool:
            self.check_alive()
            try:
                return httpx.get(url, headers=headers, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout, interval=0.05, what=url)

    def fleet(self) -> list[ServerView]:
        return self.state.fleet.read()

    def wait_online(self, server_ids: list[str], timeout: float = 60.0) -> None:
        def online() -> bool:
            self.check_alive()
            up = {server.id for server in self.fleet() if server.online and server.healthy}
            return set(server_ids) <= up

        wait_for(online, timeout, interval=0.05, what=f"servers {server_ids} online")

    def check_alive(self) -> None:
        """Raise, with the end of its log, if any process of the stack exited by itself."""
        crashed = self.processes.crashed()
        if crashed:
            details = "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in crashed)
            raise RuntimeError(f"stack process exited:\n{details}")

    # Stopping --------------------------------------------------------------------------------

    def stop(self) -> None:
        self.processes.stop_all()
        if self._state is not None:
            self._state.close()
            self._state = None
        if self._own_redis:
            self.redis_server.stop(remove_data=False)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_quiet(
    stack: LocalStack, expected: int, timeout: float, progress: ProgressReport | None = None
) -> None:
    """Wait until the jobs of `expected` messages have finished in the ledger (each message's
    reply, and its score when the stack scores messages); `progress` shows how many have."""
    jobs = expected * stack.jobs_per_message

    def finished() -> bool:
        stack.check_alive()
        done = stack.ledger.finished_count()
        if progress is not None:
            progress.update(min(done, jobs), total=jobs)
        return done >= jobs

    wait_for(finished, timeout, interval=0.05, what=f"{jobs} jobs of {expected} messages finished")


def stop_on_sigterm() -> None:
    """Make SIGTERM, and SIGHUP (its terminal closed), end a bench or the demo as Ctrl-C does,
    so the stack is stopped by its pids."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
