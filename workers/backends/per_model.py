"""The models backend: one OpenAI-compatible server per model (a llama-server each), by a map
of model name to the server's address."""

from __future__ import annotations

import logging
from typing import ClassVar

import httpx

from workers.backends.base import Inventory, Measures
from workers.backends.context import ContextFit
from workers.backends.fitted import FittedBackend
from workers.backends.model_server import ModelServer
from workers.backends.openai import LLAMA_SERVER_PORT
from workers.contract.model_names import model_key
from workers.contract.protocol import ChatOutcome, ChatRequest
from workers.errors import BackendError, ModelMissing, ServerUnavailable
from workers.settings import per_model
from workers.transport import Links

log = logging.getLogger(__name__)


class ModelServersBackend(FittedBackend):
    """A server per model. Each model's slots are its own, as its server tells (`/props`),
    else as `model_slots` says, else 1; each has its own context. A model is installed while
    its server answers (loading or not); a server that does not answer leaves its model out.
    A model whose server loads is recorded as loading, and a request for it waits for the
    load, as with the openai backend. Servers on one node over SSH (`ssh://node/:8081`,
    `ssh://node/:8082`) share that node's one SSH connection."""

    kind: ClassVar[str] = "models"

    def __init__(
        self,
        servers: dict[str, str],
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 300.0,
        model_slots: dict[str, int] | None = None,
        model_context: dict[str, int] | None = None,
        max_loaded: int = 0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
        server_id: str = "",
        links: Links | None = None,
    ) -> None:
        self._links = links or Links(connect_wait_s=connect_timeout, server_id=server_id)
        opened = {name: self._links.open(url, LLAMA_SERVER_PORT) for name, url in servers.items()}
        self._http = self._links.client(transport, max_connections=max_connections)
        self.servers = {
            name: ModelServer(
                link.base_url,
                self._http,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                name=link.address,
            )
            for name, link in opened.items()
        }
        self._names = {model_key(name): name for name in servers}
        self.model_slots = dict(model_slots or {})
        self.model_context = dict(model_context or {})
        self.max_loaded = max_loaded or len(servers)  # every server may run at once
        self.server_id = server_id
        self.fit = ContextFit(server_id)
        self.measures = Measures()

    @property
    def address(self) -> str:
        return ",".join(f"{name}={server.name}" for name, server in self.servers.items())

    def send(
        self,
        request: ChatRequest,
        first_token_s: float | None,
        stall_s: float | None,
        max_reply_bytes: int,
        job_id: str,
    ) -> ChatOutcome:
        name = self._names.get(model_key(request.model))
        if name is None:
            raise ModelMissing(f"no server for {request.model} in the model map")
        return self.servers[name].chat_when_loaded(
            request,
            first_token_s=first_token_s,
            stall_s=stall_s,
            max_reply_bytes=max_reply_bytes,
        )

    def inventory(self) -> Inventory:
        models: list[str] = []
        loaded: list[str] = []
        loading: list[str] = []
        slots: dict[str, int] = {}
        context: dict[str, int] = {}
        for name, server in self.servers.items():
            try:
                state = server.state()
            except BackendError as exc:
                log.debug("server=%s model %s not answering: %s", self.server_id, name, exc)
                continue
            models.append(name)
            (loaded if state.ready else loading).append(name)
            slots[name] = state.slots or per_model(self.model_slots, name) or 1
            size = state.context or per_model(self.model_context, name)
            if size is not None:
                context[name] = size
        if not models and self.servers:
            raise ServerUnavailable(f"none of the model servers answers: {self.address}")
        for asked, n_ctx in self.fit.contexts().items():
            mapped = self._names.get(model_key(asked))
            if mapped in models:
                context[mapped] = n_ctx
        return Inventory(
            models=models,
            loaded=loaded,
            loading=loading,
            model_slots=slots,
            max_loaded=self.max_loaded,
            context=context,
            tokens_per_s=self.measures.tokens_per_s(),
            load_s=self.measures.load_s(),
        )
