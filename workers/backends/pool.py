"""The pool backend: the operator's pool manager (`:9000`), which starts a llama-server per
model on demand, up to `maxServers`, and evicts the least recently used.

Its hazards (operator notes §7), and how each is met here:
- it learns "recently used" only from `/get-server`, so every request asks it, never a
  cached port;
- ports are reused after an eviction and llama-server answers whatever model it has, so the
  server reached is asked what it serves before anything is sent, every time (nothing tells
  a restart on the same port; the check is a loopback call of a millisecond);
- two callers asking for one cold model can each start a server, so a worker process has
  at most one `/get-server` in flight per model, and its other requests wait for it;
- a cold start takes seconds to a minute and a half, so the wait is the pool's own (90 s),
  measured, and reported as the attempt's load time, apart from the generation;
- an eviction ends a server while it answers: the dropped connection is ServerUnavailable,
  a server fault, and the job goes elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from workers.backends.base import (
    Inventory,
    Measures,
    transport_error,
)
from workers.backends.context import ContextFit
from workers.backends.fitted import FittedBackend
from workers.backends.model_server import PROBE_TIMEOUT_S, ModelServer, json_answer
from workers.contract.model_names import model_key, served_model_name
from workers.contract.protocol import ChatOutcome, ChatRequest
from workers.errors import BackendError, GenerationTimeout, ServerError, WrongModel
from workers.settings import per_model
from workers.transport import Links

log = logging.getLogger(__name__)

START_MARGIN_S = 5.0  # past the pool's own wait for a start, before giving up on it
COLD_START_S = 0.5  # a server found in less was running; one that took longer was started
ASKS_PER_REQUEST = 2  # a port that answers another model: ask the pool once more, no more
READY = "ready"  # a running server's status in `/status`; any other is a start in progress
POOL_PORT = 9000  # the node's port for an ssh:// address that names none


@dataclass(frozen=True)
class PoolServer:
    """One of the pool's model servers, as `/status` lists it."""

    model: str
    port: int
    ready: bool
    last_used: float = 0.0  # as the pool counts use: its last `/get-server` for the model


class PoolBackend(FittedBackend):
    """The pool's models, each on its own llama-server: slots are a model's own (`model_slots`,
    as the pool's PARALLEL_SLOTS; 1 by default, or as its running server tells), contexts are
    each server's. The pool and its servers are reached the same way, directly or through
    one SSH tunnel to the pool's node (`ssh://studio`): a port the pool names is that node's
    port (`links`, closed with the backend)."""

    kind: ClassVar[str] = "pool"

    def __init__(
        self,
        pool_url: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 300.0,
        start_timeout_s: float = 90.0,
        model_slots: dict[str, int] | None = None,
        model_context: dict[str, int] | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
        server_id: str = "",
        links: Links | None = None,
    ) -> None:
        self._links = links or Links(connect_wait_s=connect_timeout, server_id=server_id)
        self._link = self._links.open(pool_url, POOL_PORT)
        self.pool_url = self._link.address  # for people; requests go to the link's URL
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.start_timeout_s = start_timeout_s
        self.model_slots = dict(model_slots or {})
        self.model_context = dict(model_context or {})
        self.server_id = server_id
        self._http = self._links.client(transport, max_connections=max_connections)
        self.fit = ContextFit(server_id)
        self.measures = Measures()
        self._lock = threading.Lock()
        self._asking: dict[str, threading.Lock] = {}  # one /get-server at a time per model
        self._asked_at: dict[str, tuple[str, float]] = {}  # in flight: model key → name, since
        self._told: dict[tuple[str, int], tuple[int | None, int | None]] = {}  # slots, n_ctx

    @property
    def address(self) -> str:
        return self.pool_url

    def server_url(self, port: int) -> str:
        """Where the pool's model server on `port` is called: that port of the pool's host."""
        return self._link.url_for(port)

    # Chat ------------------------------------------------------------------------------------

    def send(
        self,
        request: ChatRequest,
        first_token_s: float | None,
        stall_s: float | None,
        max_reply_bytes: int,
        job_id: str,
    ) -> ChatOutcome:
        waited_s = 0.0
        for _ in range(ASKS_PER_REQUEST):
            port, wait_s = self.get_server(request.model, job_id)
            waited_s += wait_s
            server = self._server(port)
            if not server.wait_ready(time.monotonic() + self.start_timeout_s):
                raise GenerationTimeout(f"{server.name}: not ready in {self.start_timeout_s:g}s")
            serves = self.serves(server, request.model)
            if serves is None:
                break
            log.warning(
                "job=%s server=%s pool port %d answers %s, not %s: not sent",
                job_id, self.server_id, port, serves, request.model,
            )  # fmt: skip
        else:
            raise WrongModel(f"{self.pool_url}: port {port} answers {serves}, not {request.model}")
        outcome = server.chat_when_loaded(
            request, first_token_s=first_token_s, stall_s=stall_s, max_reply_bytes=max_reply_bytes
        )
        if waited_s < COLD_START_S:
            return outcome
        timings = outcome.timings.model_copy(
            update={
                "load_ms": outcome.timings.load_ms + waited_s * 1000,
                "wall_ms": outcome.timings.wall_ms + waited_s * 1000,
            }
        )
        return outcome.model_copy(update={"timings": timings})

    def get_server(self, model: str, job_id: str = "") -> tuple[int, float]:
        """The port of `model`'s server, asked of the pool now, and how long that took (a cold
        start's time). One request of this process asks at a time per model; the others wait
        for it, then ask in turn and find the server running."""
        key = model_key(model)
        with self._lock:
            asking = self._asking.setdefault(key, threading.Lock())
        began = time.monotonic()
        allowance = self.start_timeout_s + START_MARGIN_S
        if not asking.acquire(timeout=allowance):
            raise GenerationTimeout(f"{self.pool_url}: {model} not started in {allowance:g}s")
        try:
            asked = time.monotonic()
            with self._lock:
                self._asked_at[key] = (model, asked)
            try:
                answer = self._pool_json("/get-server", {"model": model}, allowance)
            finally:
                with self._lock:
                    del self._asked_at[key]
            took = time.monotonic() - asked
        finally:
            asking.release()
        port = answer.get("port") if isinstance(answer, dict) else None
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ServerError(f"{self.pool_url}/get-server: no port for {model}: {answer!r:.200}")
        if took >= COLD_START_S:
            self.measures.note_load(model, took)
            log.info(
                "job=%s server=%s pool started %s on port %d in %.1fs",
                job_id, self.server_id, model, port, took,
            )  # fmt: skip
        return port, time.monotonic() - began

    def serves(self, server: ModelServer, model: str) -> str | None:
        """None when the server serves `model`; else what it serves instead."""
        key = model_key(model)
        names = server.served_models()
        if any(model_key(name) == key for name in names):
            return None
        path_name = server.model_path_name()  # a server with an alias may still tell its path
        if path_name is not None and model_key(path_name) == key:
            return None
        return ", ".join(names) or path_name or "nothing it names"

    def _server(self, port: int) -> ModelServer:
        return ModelServer(
            self.server_url(port),
            self._http,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            name="" if self._link.base_url == self.pool_url else f"{self.pool_url} port {port}",
        )

    def _pool_json(self, path: str, params: dict[str, str] | None, read_s: float) -> Any:
        timeout = httpx.Timeout(read_s, connect=self._connect_timeout)
        try:
            response = self._http.get(
                f"{self._link.base_url}{path}", params=params, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise transport_error(f"{self.pool_url}{path}", exc) from exc
        return json_answer(response, f"{self.pool_url}{path}")

    # Inventory -------------------------------------------------------------------------------

    def pool_models(self) -> list[str]:
        """The models the pool found (`/models`), by their keys."""
        return sorted(set(_names(self._pool_json("/models", None, PROBE_TIMEOUT_S))))

    def pool_status(self) -> tuple[list[PoolServer], int]:
        """The pool's servers (`/status`) and the most it runs at once (0: not told)."""
        status = self._pool_json("/status", None, PROBE_TIMEOUT_S)
        if not isinstance(status, dict):
            raise ServerError(f"{self.pool_url}/status: not a JSON object")
        servers = []
        for entry in status.get("servers") or []:
            if not isinstance(entry, dict):
                continue
            model, port = entry.get("model"), entry.get("port")
            if isinstance(model, str) and isinstance(port, int):
                ready = entry.get("status", READY) == READY
                used = entry.get("lastUsed")
                last_used = float(used) if isinstance(used, int | float) else 0.0
                servers.append(PoolServer(served_model_name(model), port, ready, last_used))
        most = status.get("maxServers")
        return servers, most if isinstance(most, int) and most > 0 else 0

    def inventory(self) -> Inventory:
        models = self.pool_models()
        servers, max_loaded = self.pool_status()
        # Least recently used first, as the pool would evict them.
        running = sorted((s for s in servers if s.ready), key=lambda s: (s.last_used, s.model))
        loaded = list(dict.fromkeys(server.model for server in running))
        loading = {server.model for server in servers if not server.ready} - set(loaded)
        now = time.monotonic()
        with self._lock:  # starts this worker waits for, which the pool lists only when done
            loading |= {
                name for name, since in self._asked_at.values() if now - since >= COLD_START_S
            }
        slots = {model: per_model(self.model_slots, model) or 1 for model in models}
        context: dict[str, int] = {}
        for model in models:
            size = per_model(self.model_context, model)
            if size is not None:
                context[model] = size
        for server in servers:
            if server.ready:
                told_slots, told_context = self._told_by(server)
                if told_slots:
                    slots[server.model] = told_slots
                if told_context:
                    context[server.model] = told_context
        keys = {model_key(model): model for model in models}
        for asked, n_ctx in self.fit.contexts().items():
            if model_key(asked) in keys:
                context[keys[model_key(asked)]] = n_ctx
        return Inventory(
            models=models,
            loaded=loaded,
            loading=sorted(loading - set(loaded)),
            model_slots=slots,
            max_loaded=max_loaded,
            context=context,
            tokens_per_s=self.measures.tokens_per_s(),
            load_s=self.measures.load_s(),
        )

    def _told_by(self, server: PoolServer) -> tuple[int | None, int | None]:
        """A running server's slots and context, asked once per model and port (a port
        reused by another model is asked again)."""
        where = (server.model, server.port)
        with self._lock:
            told = self._told.get(where)
        if told is not None:
            return told
        try:
            state = self._server(server.port).state()
        except BackendError as exc:  # only what the record could say of it is lost
            log.debug("server=%s pool port %d did not tell: %s", self.server_id, server.port, exc)
            return None, None
        told = (state.slots, state.context)
        if state.ready:
            with self._lock:
                self._told = {
                    known: value for known, value in self._told.items() if known[1] != server.port
                }
                self._told[where] = told
        return told


def _names(answer: Any) -> list[str]:
    """Model names from `/models`: a list, or an object holding one under `models` or `data`;
    each a name, or an object naming it."""
    entries = answer.get("models", answer.get("data")) if isinstance(answer, dict) else answer
    if not isinstance(entries, list):
        return []
    names = []
    for entry in entries:
        name = entry
        if isinstance(entry, dict):
            name = next(
                (entry[field] for field in ("key", "name", "model", "id") if entry.get(field)), None
            )
        if isinstance(name, str) and name.strip():
            names.append(served_model_name(name))
    return names
